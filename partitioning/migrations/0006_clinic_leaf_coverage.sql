-- Every clinic gets a leaf in every month, without keeping many empty leaves.
--
-- pg_partman 4.7 makes a new month's clinic leaves from max(clinic_id) -
-- premake to max(clinic_id) + premake, so covering clinics 1..K that way
-- needs premake >= K and leaves about 2K leaves per month, half of them
-- empty, which every query without the clinic key pays for in planning.
-- Instead the clinic premake is 1 (one spare leaf for the next clinic id),
-- and ensure_clinic_leaves() asks partman (create_partition_id) for any
-- clinic leaf a month lacks. It runs after each scheduled maintenance and
-- when clinics are added, so a new clinic's first row has a leaf to land in.
-- depends: 0005_scheduled_jobs

UPDATE partman.part_config_sub SET sub_premake = 1 WHERE sub_parent = 'public.lab_results';
UPDATE partman.part_config SET premake = 1 WHERE parent_table LIKE 'public.lab\_results\_p%' AND control = 'clinic_id';

CREATE FUNCTION ensure_clinic_leaves(p_parent text DEFAULT 'public.lab_results', p_clinic_ids int[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    m record;
    missing bigint[];
    created integer := 0;
    wanted int[] := coalesce(p_clinic_ids, ARRAY(SELECT clinic_id FROM clinics ORDER BY 1));
BEGIN
    FOR m IN
        SELECT n.nspname AS schema, c.relname AS month
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE i.inhparent = p_parent::regclass AND c.relkind = 'p'
    LOOP
        SELECT array_agg(w ORDER BY w) INTO missing
          FROM unnest(wanted) AS w
         WHERE NOT EXISTS (
               SELECT 1
                 FROM pg_inherits li
                 JOIN pg_class l ON l.oid = li.inhrelid
                WHERE li.inhparent = format('%I.%I', m.schema, m.month)::regclass
                  AND pg_get_expr(l.relpartbound, l.oid) <> 'DEFAULT'
                  AND w >= (regexp_match(pg_get_expr(l.relpartbound, l.oid), 'FROM \((-?\d+)\)'))[1]::bigint
                  AND w <  (regexp_match(pg_get_expr(l.relpartbound, l.oid), 'TO \((-?\d+)\)'))[1]::bigint);
        IF missing IS NOT NULL THEN
            PERFORM partman.create_partition_id(format('%s.%s', m.schema, m.month), missing);
            created := created + cardinality(missing);
        END IF;
    END LOOP;
    RETURN created;
END
$$;

CREATE FUNCTION clinics_ensure_leaves() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ensure_clinic_leaves();
    RETURN NULL;
END
$$;

CREATE TRIGGER clinics_ensure_leaves AFTER INSERT ON clinics
    FOR EACH STATEMENT EXECUTE FUNCTION clinics_ensure_leaves();

-- Rows parked in a month's clinic default (a clinic id without a leaf) are
-- moved into a new leaf by partman.partition_data_id. This must run before
-- partman's maintenance: that would otherwise try to attach the missing
-- leaf and fail, because the default already holds its rows.
CREATE FUNCTION move_parked_rows(p_parent text DEFAULT 'public.lab_results') RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    m record;
    has_rows boolean;
    moved bigint := 0;
BEGIN
    FOR m IN
        SELECT n.nspname AS schema, c.relname AS month, d.relname AS default_leaf
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_inherits di ON di.inhparent = c.oid
          JOIN pg_class d ON d.oid = di.inhrelid AND pg_get_expr(d.relpartbound, d.oid) = 'DEFAULT'
         WHERE i.inhparent = p_parent::regclass AND c.relkind = 'p'
    LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM ONLY %I.%I)', m.schema, m.default_leaf) INTO has_rows;
        IF has_rows THEN
            moved := moved + partman.partition_data_id(format('%s.%s', m.schema, m.month), p_batch_count := 1000);
        END IF;
    END LOOP;
    RETURN moved;
END
$$;

-- What the scheduled job calls: parked rows first, then partman's
-- maintenance, then the clinic leaves for any month it just made.
CREATE PROCEDURE run_partition_maintenance()
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM move_parked_rows();
    COMMIT;
    CALL partman.run_maintenance_proc();
    PERFORM ensure_clinic_leaves();
    COMMIT;
END
$$;

DO $$
BEGIN
    PERFORM cron.schedule('careflow-partman-maintenance', '7 * * * *', 'CALL run_partition_maintenance()');
END
$$;
