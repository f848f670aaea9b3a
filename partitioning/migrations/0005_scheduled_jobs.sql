-- Scheduled jobs in pg_cron: partition maintenance and the daily aggregate.
-- pg_cron runs jobs only where the server is not in recovery, so after a
-- failover they run on the new primary with no change (tests/data/test_failover_jobs.py).
-- cron.schedule with an existing job name updates it: re-running is harmless.
-- depends: 0004_daily_aggregate_and_quarantine

DO $$
BEGIN
    PERFORM cron.schedule('careflow-partman-maintenance', '7 * * * *', 'CALL partman.run_maintenance_proc()');
    PERFORM cron.schedule('careflow-lab-results-daily', '*/10 * * * *', 'SELECT refresh_lab_results_daily_recent()');
END
$$;
