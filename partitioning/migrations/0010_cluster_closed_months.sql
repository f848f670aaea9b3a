-- Closed months in clinic order, for the months-only layout.
--
-- With months-only, a month is one table, and a clinic's results for that
-- month are spread over all of it: rows arrive in time order, with every
-- clinic interleaved. At 100M rows (1,000 clinics), reading one clinic-month
-- cold was only 1.1x faster than the plain table. The same month rewritten in
-- (clinic_id, collected_at) order was 8x faster (partitioning/DECISION.md, "At
-- network scale"). A month keeps that order because it is closed: results are
-- collected within 31 days of their visit (emr.RESULT_WINDOW), so a month that
-- ended more than that long ago gets only the odd late row, which is appended.
--
-- cluster_closed_months(p_limit) CLUSTERs at most p_limit of these months,
-- oldest first, skipping any already in clinic order (CLUSTER sets
-- pg_index.indisclustered on the index it used). While CLUSTER rewrites a
-- month it holds ACCESS EXCLUSIVE on it (about 5 s for a 1.8M-row month on the
-- lab box), so readers of that month wait. lock_timeout stops it from queueing
-- behind a long reader, which would make every later query of the month queue
-- too; a month it cannot lock is left for the next run. The rewrite goes
-- through WAL like any write, so the standbys get it.
--
-- Per-clinic months are partitioned tables (relkind 'p') and are never
-- touched: there a leaf is one clinic-month already. The hourly maintenance
-- job does one month per run.
-- depends: 0009_refresh_daily_serialized

CREATE OR REPLACE FUNCTION cluster_closed_months(p_limit integer DEFAULT 1, p_lock_timeout text DEFAULT '5s')
RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    done text[] := '{}';
    saved text := current_setting('lock_timeout');
BEGIN
    FOR r IN
        SELECT c.oid::regclass AS month, ic.relname AS clinic_index
          FROM pg_inherits h
          JOIN pg_class c ON c.oid = h.inhrelid
          JOIN pg_index i ON i.indrelid = c.oid
          JOIN pg_class ic ON ic.oid = i.indexrelid
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
         WHERE h.inhparent = 'public.lab_results'::regclass
           AND NOT h.inhdetachpending
           AND c.relkind = 'r'
           AND a.attname = 'clinic_id'
           AND (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz
               < now() - interval '31 days'
           AND NOT EXISTS (SELECT 1 FROM pg_index x WHERE x.indrelid = c.oid AND x.indisclustered)
         ORDER BY c.relname
         LIMIT greatest(p_limit, 0)
    LOOP
        BEGIN
            PERFORM set_config('lock_timeout', p_lock_timeout, true);
            EXECUTE format('CLUSTER %s USING %I', r.month, r.clinic_index);
            EXECUTE format('ANALYZE %s', r.month);  -- the planner's correlation for the clinic index
            done := done || r.month::text;
        EXCEPTION WHEN lock_not_available THEN
            RAISE NOTICE 'cluster_closed_months: % is in use (no lock within %); left for the next run',
                r.month, p_lock_timeout;
        END;
    END LOOP;
    PERFORM set_config('lock_timeout', saved, true);
    RETURN done;
END
$$;

-- What the scheduled job calls: 0006's steps, then one closed month put in clinic order.
CREATE OR REPLACE PROCEDURE run_partition_maintenance()
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM move_parked_rows();
    COMMIT;
    CALL partman.run_maintenance_proc();
    PERFORM ensure_clinic_leaves();
    COMMIT;
    PERFORM cluster_closed_months(1);
    COMMIT;
END
$$;
