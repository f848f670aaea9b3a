-- The fact table: lab results, partitioned by month (collected_at) and, inside
-- each month, by clinic. pg_partman creates and maintains every partition; the
-- reasons for this layout are in partitioning/DECISION.md.
-- depends: 0002_lab_test_catalog

CREATE SEQUENCE lab_results_result_id_seq AS bigint CACHE 1000;

-- No foreign keys here on purpose: a per-row RI check would cap COPY far below
-- the 100k rows/s target. Integrity comes from the generator (ids by
-- construction) and the CSV importer (every pet and test code is validated).
CREATE TABLE lab_results (
    result_id     bigint NOT NULL DEFAULT nextval('lab_results_result_id_seq'),
    clinic_id     integer NOT NULL,
    collected_at  timestamptz NOT NULL,
    pet_id        bigint NOT NULL,
    visit_id      bigint,  -- NULL for results imported without a visit
    test_code     text NOT NULL,
    value         double precision NOT NULL,
    flag          "char" NOT NULL CHECK (flag IN ('L', 'N', 'H'))  -- against the species' reference range
) PARTITION BY RANGE (collected_at);
ALTER SEQUENCE lab_results_result_id_seq OWNED BY lab_results.result_id;

-- One pet's history (query (b) of the benchmark) needs this; clinic+month
-- queries are answered by pruning alone (EXPLAIN evidence in DECISION.md).
CREATE INDEX lab_results_pet_idx ON lab_results (pet_id, collected_at);

-- Months: a window of 12 past months plus 3 premade future ones. Older months
-- are added on demand with partman.create_partition_time (see
-- careflow_ha.data.partitions.extend_window).
-- PERFORM inside DO: yoyo would print a bare SELECT's result.
DO $$ BEGIN PERFORM partman.create_parent(
    p_parent_table := 'public.lab_results',
    p_control := 'collected_at',
    p_type := 'native',
    p_interval := 'monthly',
    p_premake := 3,
    p_start_partition := to_char(date_trunc('month', now()) - interval '12 months', 'YYYY-MM-DD HH24:MI:SS'),
    p_jobmon := false
); END $$;

-- Keep making future months from the clock, not from the newest row; and let
-- retention detach (never drop) months older than 36 months, so archiving can
-- pick the tables up. Nothing accepted is lost.
UPDATE partman.part_config
   SET infinite_time_partitions = true,
       retention = '36 months',
       retention_keep_table = true,
       retention_keep_index = true
 WHERE parent_table = 'public.lab_results';

-- Clinics inside each month: one leaf per clinic id. (0006 lowers the clinic
-- premake to 1 and adds ensure_clinic_leaves(); see the reasons there.)
DO $$ BEGIN PERFORM partman.create_sub_parent(
    p_top_parent := 'public.lab_results',
    p_control := 'clinic_id',
    p_type := 'native',
    p_interval := '1',
    p_native_check := 'yes',
    p_premake := 1,
    p_jobmon := false
); END $$;

-- No default partition at the month level: it would block
-- DETACH PARTITION ... CONCURRENTLY for archiving, and a row outside every
-- month must be rejected loudly, not parked. (Each month keeps partman's
-- clinic-level default; `careflow-ha partitions check` reports any row in it.)
DROP TABLE public.lab_results_default;
