-- Re-import safety for `careflow-ha data import` (partitioning/README.md, "Re-importing").
--
-- 1. A batch records its file's SHA-256. The unique index lets one ordinary
--    import hold each content; a second is refused, naming the first, unless
--    --force (a forced batch is recorded with forced = true). The batch row
--    commits in the same transaction as its rows: it exists with all of them
--    or not at all, so a rerun after an ambiguous commit either finds it
--    (refused) or starts from nothing.
-- 2. Every imported result claims its natural key (pet_id, test_code,
--    collected_at) here, in the same transaction. A row whose key is claimed
--    is skipped and counted, so not even --force loads a result twice.
--    The key lives in its own table, not as a unique index on lab_results:
--    such an index costs every bulk COPY about 40% of its throughput
--    (measured side by side, partitioning/README.md "Re-importing"), and
--    nothing in the generator or in Locust's writes promises the key.
-- depends: 0006_clinic_leaf_coverage

ALTER TABLE lab_import_batches
    ADD COLUMN sha256 text CHECK (sha256 ~ '^[0-9a-f]{64}$'),  -- NULL for batches imported before 0007
    ADD COLUMN forced boolean NOT NULL DEFAULT false,
    ADD COLUMN rows_duplicate integer NOT NULL DEFAULT 0;  -- good rows whose result was already imported

ALTER TABLE lab_import_batches DROP CONSTRAINT lab_import_batches_check;
ALTER TABLE lab_import_batches
    ADD CONSTRAINT lab_import_batches_rows_add_up
    CHECK (rows_total = rows_loaded + rows_duplicate + rows_quarantined);

CREATE UNIQUE INDEX lab_import_batches_sha256_once ON lab_import_batches (sha256) WHERE NOT forced;

CREATE TABLE lab_import_keys (
    pet_id        bigint NOT NULL,
    test_code     text NOT NULL,
    collected_at  timestamptz NOT NULL,
    batch_id      bigint NOT NULL REFERENCES lab_import_batches,
    line_no       integer NOT NULL,  -- the line of the batch's file that loaded this result
    PRIMARY KEY (pet_id, test_code, collected_at)
);
CREATE INDEX lab_import_keys_batch_idx ON lab_import_keys (batch_id);

-- `data load --replace` truncates lab_results: the keys of the rows it removed
-- must go too, or a re-import of those results would be skipped as present.
-- (Batch records stay, as history: re-importing the same file then needs --force.)
CREATE FUNCTION lab_results_truncate_import_keys() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE lab_import_keys;
    RETURN NULL;
END
$$;

CREATE TRIGGER lab_results_truncate_import_keys AFTER TRUNCATE ON lab_results
    FOR EACH STATEMENT EXECUTE FUNCTION lab_results_truncate_import_keys();
