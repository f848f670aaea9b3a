-- Daily per-clinic, per-test aggregate (refreshed by a scheduled job) and the
-- quarantine for CSV rows that failed validation.
-- depends: 0003_lab_results_partitioned

CREATE TABLE lab_results_daily (
    clinic_id     integer NOT NULL,
    day           date NOT NULL,  -- clinic-local day (Asia/Seoul)
    test_code     text NOT NULL,
    n_results     integer NOT NULL,
    n_abnormal    integer NOT NULL,
    mean_value    double precision NOT NULL,
    refreshed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, day, test_code)
);

-- Recompute [p_from, p_to) from lab_results. Idempotent: a day is replaced as
-- a whole, so late or re-imported rows are picked up on the next run.
CREATE FUNCTION refresh_lab_results_daily(p_from date, p_to date) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    IF p_from IS NULL OR p_to IS NULL OR p_from >= p_to THEN
        RAISE EXCEPTION 'refresh_lab_results_daily: need p_from < p_to, got % and %', p_from, p_to;
    END IF;
    DELETE FROM lab_results_daily WHERE day >= p_from AND day < p_to;
    INSERT INTO lab_results_daily (clinic_id, day, test_code, n_results, n_abnormal, mean_value)
    SELECT clinic_id, (collected_at AT TIME ZONE 'Asia/Seoul')::date, test_code,
           count(*), count(*) FILTER (WHERE flag <> 'N'), avg(value)
      FROM lab_results
     WHERE collected_at >= (p_from::timestamp AT TIME ZONE 'Asia/Seoul')
       AND collected_at <  (p_to::timestamp AT TIME ZONE 'Asia/Seoul')
     GROUP BY 1, 2, 3;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- What the scheduled job runs: the last 3 clinic-local days (late results).
CREATE FUNCTION refresh_lab_results_daily_recent() RETURNS bigint
LANGUAGE sql AS $$
    SELECT refresh_lab_results_daily(((now() AT TIME ZONE 'Asia/Seoul')::date - 2),
                                     ((now() AT TIME ZONE 'Asia/Seoul')::date + 1));
$$;

CREATE TABLE lab_import_batches (
    batch_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    file_name         text NOT NULL,
    imported_at       timestamptz NOT NULL DEFAULT now(),
    rows_total        integer NOT NULL,
    rows_loaded       integer NOT NULL,
    rows_quarantined  integer NOT NULL,
    CHECK (rows_total = rows_loaded + rows_quarantined)
);

CREATE TABLE lab_results_quarantine (
    batch_id        bigint NOT NULL REFERENCES lab_import_batches,
    line_no         integer NOT NULL,  -- 1-based line in the file, header = line 1
    raw             text NOT NULL,     -- the line as read, so it can be fixed and re-imported
    reasons         text[] NOT NULL CHECK (cardinality(reasons) > 0),
    quarantined_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, line_no)
);
