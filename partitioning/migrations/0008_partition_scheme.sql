-- The partition scheme as an inventory setting (careflow_partition_scheme in
-- inventory/group_vars/all.yml): per-clinic leaves (0003's layout, the lab's
-- few clinics) or months only with a (clinic_id, collected_at) index (a clinic
-- network). Why the line sits where it does: partitioning/DECISION.md, "At
-- network scale".
--
-- `careflow-ha data migrate` passes the setting as the session variable
-- careflow.partition_scheme; this migration installs the functions below and
-- calls lab_results_apply_scheme() with it, and `data migrate` calls it again
-- on every later run, so flipping the setting on a migrated lab takes effect
-- on the next migrate. With the setting per-clinic (or unset: yoyo run by
-- hand) nothing changes.
--
-- Not transactional: the conversion commits one month at a time, so writers
-- on a live cluster never wait longer than one month's copy, and a run that
-- stops half-way (lock timeout, crash, failover) is finished by the next one.
-- Months-only -> per-clinic is not supported: it is refused, by name.
-- transactional: false
-- depends: 0007_import_batches_rerun_safe

-- What lab_results is today: 'per-clinic', 'months-only', or 'converting' (a
-- conversion that stopped between months). Anything the conversion was not
-- written for raises, naming it, before a single row moves.
CREATE OR REPLACE FUNCTION lab_results_layout() RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    parent regclass := to_regclass('public.lab_results');
    found text;
    n_partitioned integer;
    n_plain integer;
BEGIN
    IF parent IS NULL THEN
        RAISE EXCEPTION 'lab_results does not exist; run the migrations from 0001';
    END IF;
    IF pg_get_partkeydef(parent) IS DISTINCT FROM 'RANGE (collected_at)' THEN
        RAISE EXCEPTION 'lab_results is partitioned by %, not RANGE (collected_at): not a layout this migration converts',
            coalesce(pg_get_partkeydef(parent), 'nothing');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM partman.part_config WHERE parent_table = 'public.lab_results') THEN
        RAISE EXCEPTION 'lab_results has no pg_partman config (partman.part_config); restore it before converting';
    END IF;
    SELECT string_agg(c.relname, ', ' ORDER BY c.relname) INTO found
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = parent AND i.inhdetachpending;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'lab_results: % is half-detached (an interrupted archive run); finish it with `careflow-ha archive run` first', found;
    END IF;
    SELECT string_agg(c.relname, ', ' ORDER BY c.relname) INTO found
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = parent AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT';
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'lab_results has a month-level default partition (%); move its rows into months and drop it first', found;
    END IF;
    SELECT string_agg(format('%s (relkind %s)', c.relname, c.relkind), ', ' ORDER BY c.relname) INTO found
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = parent AND c.relkind NOT IN ('r', 'p');
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'lab_results has months that are neither tables nor partitioned tables: %', found;
    END IF;
    SELECT string_agg(c.relname, ', ' ORDER BY c.relname) INTO found
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = parent AND c.relkind = 'p'
       AND (pg_get_partkeydef(c.oid) IS DISTINCT FROM 'RANGE (clinic_id)'
            OR EXISTS (SELECT 1 FROM pg_inherits li JOIN pg_class l ON l.oid = li.inhrelid
                        WHERE li.inhparent = c.oid AND l.relkind <> 'r'));
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'lab_results months % are not split by clinic_id into plain leaves; not a layout this migration converts', found;
    END IF;
    SELECT count(*) FILTER (WHERE c.relkind = 'p'), count(*) FILTER (WHERE c.relkind = 'r')
      INTO n_partitioned, n_plain
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = parent;
    IF EXISTS (SELECT 1 FROM partman.part_config_sub WHERE sub_parent = 'public.lab_results') THEN
        -- The conversion removes this config first, so with it present every month must still be per-clinic.
        IF n_plain > 0 THEN
            RAISE EXCEPTION 'lab_results is configured for clinic leaves (partman.part_config_sub) but % months are plain tables; unexpected: attach them as clinic-partitioned months or remove the config by hand', n_plain;
        END IF;
        RETURN 'per-clinic';
    END IF;
    RETURN CASE WHEN n_partitioned > 0 THEN 'converting' ELSE 'months-only' END;
END
$$;

-- One per-clinic month -> one plain table, in the caller's transaction.
-- Writes into lab_results wait (EXCLUSIVE lock; reads go on) while the
-- month's rows are copied and indexed into a new table beside it; then the
-- old month is detached and dropped and the new one attached in its place,
-- under a brief ACCESS EXCLUSIVE lock on lab_results that the caller bounds
-- with lock_timeout. The CHECK makes the attach skip its validation scan.
--
-- Why the parent is locked first, and against every writer, not only the
-- month: an INSERT holds ROW EXCLUSIVE on lab_results while it waits for the
-- month's leaf; had we locked only the month, our later ACCESS EXCLUSIVE on
-- lab_results would wait for that INSERT while it waits for us: a deadlock
-- that PostgreSQL resolves by failing the write (measured: 2 of 4,351 writes
-- failed that way before this order). Parent first, then month, then the
-- upgrade: a writer either finished before us or waits without holding
-- anything we need.
CREATE OR REPLACE FUNCTION lab_results_month_to_plain(p_month regclass) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    schema_name text;
    month_name text;
    bound text;
    lo text;
    hi text;
    template text;
    staged text;
    cols text;
    copied bigint;
BEGIN
    SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid)
      INTO schema_name, month_name, bound
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = 'public.lab_results'::regclass
     WHERE c.oid = p_month AND c.relkind = 'p';
    IF NOT FOUND THEN
        RAISE EXCEPTION '% is not a clinic-partitioned month of lab_results', p_month;
    END IF;
    SELECT m[1], m[2] INTO lo, hi
      FROM regexp_match(bound, '^FOR VALUES FROM \(''([^'']+)''\) TO \(''([^'']+)''\)$') AS m;
    IF lo IS NULL THEN
        RAISE EXCEPTION 'month % has the bound %, not FROM (timestamp) TO (timestamp)', month_name, bound;
    END IF;
    staged := left(month_name, 50) || '_months_only';
    IF to_regclass(format('%I.%I', schema_name, staged)) IS NOT NULL THEN
        RAISE EXCEPTION 'table %.% is in the way (not made by this migration: its runs roll back whole); rename or drop it', schema_name, staged;
    END IF;
    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO cols
      FROM pg_attribute WHERE attrelid = 'public.lab_results'::regclass AND attnum > 0 AND NOT attisdropped;

    LOCK TABLE ONLY public.lab_results IN EXCLUSIVE MODE;  -- ONLY: not its thousands of leaves
    EXECUTE format('LOCK TABLE %I.%I IN EXCLUSIVE MODE', schema_name, month_name);
    EXECUTE format('CREATE TABLE %I.%I (LIKE public.lab_results INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                   'INCLUDING STORAGE, CONSTRAINT %I CHECK (collected_at >= %L AND collected_at < %L))',
                   schema_name, staged, staged || '_bounds', lo, hi);
    EXECUTE format('INSERT INTO %I.%I (%s) SELECT %s FROM %I.%I', schema_name, staged, cols, cols,
                   schema_name, month_name);
    GET DIAGNOSTICS copied = ROW_COUNT;
    -- Built before the swap, so the ACCESS EXCLUSIVE part is catalog work only.
    EXECUTE format('CREATE INDEX %I ON %I.%I (pet_id, collected_at)', staged || '_pet', schema_name, staged);
    EXECUTE format('CREATE INDEX %I ON %I.%I (clinic_id, collected_at)', staged || '_clinic', schema_name, staged);
    EXECUTE format('ANALYZE %I.%I', schema_name, staged);

    EXECUTE format('ALTER TABLE public.lab_results DETACH PARTITION %I.%I', schema_name, month_name);
    SELECT template_table INTO template FROM partman.part_config
     WHERE parent_table = format('%s.%s', schema_name, month_name);
    DELETE FROM partman.part_config WHERE parent_table = format('%s.%s', schema_name, month_name);
    EXECUTE format('DROP TABLE %I.%I', schema_name, month_name);
    -- partman gives sub-parents the top parent's template table: drop a template only if nothing uses it now.
    IF template IS NOT NULL AND NOT EXISTS (SELECT 1 FROM partman.part_config WHERE template_table = template) THEN
        EXECUTE format('DROP TABLE IF EXISTS %s', template);
    END IF;
    EXECUTE format('ALTER TABLE %I.%I RENAME TO %I', schema_name, staged, month_name);
    EXECUTE format('ALTER INDEX %I.%I RENAME TO %I', schema_name, staged || '_pet',
                   month_name || '_pet_id_collected_at_idx');
    EXECUTE format('ALTER INDEX %I.%I RENAME TO %I', schema_name, staged || '_clinic',
                   month_name || '_clinic_id_collected_at_idx');
    EXECUTE format('ALTER TABLE public.lab_results ATTACH PARTITION %I.%I %s', schema_name, month_name, bound);
    EXECUTE format('ALTER TABLE %I.%I DROP CONSTRAINT %I', schema_name, month_name, staged || '_bounds');
    RETURN copied;
END
$$;

-- Bring lab_results to the scheme the inventory names. Idempotent: a no-op
-- when the layout already matches; resumes a conversion that stopped.
CREATE OR REPLACE PROCEDURE lab_results_apply_scheme(p_scheme text, p_lock_timeout text DEFAULT '10s')
LANGUAGE plpgsql AS $$
DECLARE
    layout_now text;
    months regclass[];
    m regclass;
    month_name text;
    moved bigint;
    done integer := 0;
BEGIN
    IF p_scheme IS NULL OR p_scheme = '' THEN
        RAISE NOTICE 'careflow.partition_scheme is not set: lab_results left as it is (%)', lab_results_layout();
        RETURN;
    END IF;
    IF p_scheme NOT IN ('per-clinic', 'months-only') THEN
        RAISE EXCEPTION 'careflow_partition_scheme=% is not one of per-clinic, months-only; set one in inventory/group_vars/all.yml', quote_literal(p_scheme)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Per-clinic with its partman config in place: nothing to do, and nothing to judge (the checks below
    -- guard a conversion; a lab that stays per-clinic is `partitions check`'s business).
    IF p_scheme = 'per-clinic'
       AND EXISTS (SELECT 1 FROM partman.part_config_sub WHERE sub_parent = 'public.lab_results') THEN
        RETURN;
    END IF;
    layout_now := lab_results_layout();
    IF layout_now = p_scheme THEN
        RETURN;
    END IF;
    IF p_scheme = 'per-clinic' THEN
        RAISE EXCEPTION 'lab_results is % and the setting says per-clinic: going back to per-clinic leaves is not supported; set careflow_partition_scheme: months-only',
            CASE layout_now WHEN 'converting' THEN 'half-way to months-only' ELSE layout_now END
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- pg_partman's maintenance skips its run while this is held (it only tries the same lock), so
    -- the scheduled job never works on a month that is being swapped.
    PERFORM pg_advisory_xact_lock(hashtext('pg_partman run_maintenance'));
    -- From here on partman makes plain months (a maintenance run during the conversion included).
    DELETE FROM partman.part_config_sub WHERE sub_parent = 'public.lab_results';
    COMMIT;

    SELECT array_agg(c.oid::regclass ORDER BY c.relname) INTO months
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'public.lab_results'::regclass AND c.relkind = 'p';
    FOREACH m IN ARRAY coalesce(months, '{}') LOOP
        -- A long query on lab_results must not make every other query queue behind the swap's lock.
        PERFORM set_config('lock_timeout', p_lock_timeout, true);
        PERFORM pg_advisory_xact_lock(hashtext('pg_partman run_maintenance'));
        month_name := m::text;  -- before the swap: m names the old table, which goes
        moved := lab_results_month_to_plain(m);
        done := done + 1;
        RAISE NOTICE 'lab_results: % is months-only (% rows, % of %)', month_name, moved, done, cardinality(months);
        COMMIT;
    END LOOP;

    -- Every month now has a (clinic_id, collected_at) index: this only links them (and builds it for
    -- months partman made during the conversion), and future months get it from the parent.
    PERFORM set_config('lock_timeout', p_lock_timeout, true);
    CREATE INDEX IF NOT EXISTS lab_results_clinic_time_idx ON public.lab_results (clinic_id, collected_at);
    COMMIT;
    IF lab_results_layout() <> 'months-only' THEN
        RAISE EXCEPTION 'lab_results is % after the conversion: a month was added meanwhile; run `careflow-ha data migrate` again', lab_results_layout();
    END IF;
END
$$;

CALL lab_results_apply_scheme(current_setting('careflow.partition_scheme', true));
