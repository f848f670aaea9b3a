-- One refresh of lab_results_daily at a time.
--
-- 0004's refresh deletes a range of days and inserts them again. Two refreshes
-- of overlapping days (the */10 scheduled job and an import or a load that
-- refreshes the days it touched) raced under READ COMMITTED: the second one's
-- DELETE did not see the first one's uncommitted rows, and its INSERT then
-- failed on the primary key when the first committed ("duplicate key value
-- violates unique constraint lab_results_daily_pkey"), so a CSV import or the
-- scheduled job failed on a healthy cluster.
--
-- The refresh now takes SHARE ROW EXCLUSIVE on the aggregate first: that mode
-- conflicts with itself (a second refresh waits for the first to commit, and
-- its DELETE then sees the first one's rows) and with row writes, but not with
-- readers, so dashboards keep reading the old day until the new one commits.
-- depends: 0008_partition_scheme

CREATE OR REPLACE FUNCTION refresh_lab_results_daily(p_from date, p_to date) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    IF p_from IS NULL OR p_to IS NULL OR p_from >= p_to THEN
        RAISE EXCEPTION 'refresh_lab_results_daily: need p_from < p_to, got % and %', p_from, p_to;
    END IF;
    LOCK TABLE lab_results_daily IN SHARE ROW EXCLUSIVE MODE;
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
