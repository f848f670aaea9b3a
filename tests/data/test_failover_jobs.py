"""Scheduled jobs (pg_cron) do nothing on a standby, and run on it once it is promoted.

The cluster relies on this: partition maintenance and the daily aggregate
must follow the primary after a failover with no manual step. This test
builds its own primary and streaming standby (pg_basebackup -R), because it
stops the primary.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from careflow_ha.data import migrate
from careflow_ha.data.localserver import free_port, start_local_server
from careflow_ha.data.partitions import JOB_NAMES, layout
from tests.plugins.timeouts import wait_until

pytestmark = pytest.mark.localpg


def job_runs(dsn: str) -> dict[str, int]:
    """Succeeded runs per job, from the server's cron.job_run_details."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT j.jobname, count(d.runid) FILTER (WHERE d.status = 'succeeded') "
                            "FROM cron.job j LEFT JOIN cron.job_run_details d USING (jobid) GROUP BY 1").fetchall()
    return dict(rows)


def test_jobs_skip_the_standby_and_run_after_promotion():
    primary = start_local_server()
    standby = None
    try:
        migrate(primary.dsn("app"))
        with psycopg.connect(primary.dsn("superuser"), autocommit=True) as conn:
            for name in JOB_NAMES:  # every minute, so that the test sees runs soon
                conn.execute("SELECT cron.alter_job(jobid, schedule := '* * * * *') FROM cron.job WHERE jobname = %s",
                             (name,))
        standby = primary.standby(Path(tempfile.mkdtemp(prefix="careflow-standby-")), free_port())
        standby.start()
        # The launcher restarts itself (1 s) if it started before the database existed: wait for it.
        def launcher_running() -> list[str] | None:
            kids = primary.child_processes()
            return kids if any("pg_cron launcher" in title for title in kids) else None

        primary_children = wait_until(launcher_running, timeout=30, interval=0.5, what="pg_cron launcher up")
        primary.stop()  # the primary is gone: the standby stays in recovery, alone

        with psycopg.connect(standby.dsn("superuser"), autocommit=True) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        # pg_cron starts its launcher only once recovery has finished: nothing on the standby can run a job.
        assert "postgres: pg_cron launcher" in " ".join(primary_children)
        assert not any("pg_cron" in title for title in standby.child_processes())
        runs_on_standby = job_runs(standby.dsn("superuser"))
        log_mark = len(standby.log_text())
        # Watch the standby across a full minute boundary (every job is due then) plus a margin.
        boundary = (int(time.time()) // 60 + 1) * 60 + 8
        wait_until(lambda: time.time() >= boundary, timeout=75, interval=1, what="a minute boundary on the standby")
        assert job_runs(standby.dsn("superuser")) == runs_on_standby, "no job ran on the standby"
        new_log = standby.log_text()[log_mark:]
        errors = [line for line in new_log.splitlines() if "ERROR" in line]
        assert errors == [], f"jobs must not even try on a standby: {errors}"

        standby.promote()
        wait_until(lambda: any("pg_cron launcher" in t for t in standby.child_processes()), timeout=30,
                   what="pg_cron launcher started on the promoted standby")
        with psycopg.connect(standby.dsn("app"), autocommit=True) as conn:
            assert not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
            promoted_at = conn.execute("SELECT now()").fetchone()[0]
            # Give maintenance real work on the new primary: two more future months.
            conn.execute("UPDATE partman.part_config SET premake = premake + 2 WHERE parent_table = "
                         "'public.lab_results'")
            last_before = max(m.end for m in layout(conn) if m.end)

        def ran_after_promotion() -> bool:
            with psycopg.connect(standby.dsn("superuser"), autocommit=True) as conn:
                done = {r[0] for r in conn.execute(
                    "SELECT j.jobname FROM cron.job j JOIN cron.job_run_details d USING (jobid) "
                    "WHERE d.status = 'succeeded' AND d.start_time > %s", (promoted_at,))}
            return done == set(JOB_NAMES)

        wait_until(ran_after_promotion, timeout=90, interval=1, what="both jobs succeeded on the promoted standby")
        with psycopg.connect(standby.dsn("app"), autocommit=True) as conn:
            last_after = max(m.end for m in layout(conn) if m.end)
            now = conn.execute("SELECT now()").fetchone()[0].astimezone(last_after.tzinfo)
        months_ahead = (last_after.year * 12 + last_after.month) - (now.year * 12 + now.month)
        assert last_after > last_before
        assert months_ahead >= 5 + 1, "the new primary premade 5 future months (partitions end after month +5)"
    finally:
        for server in (standby, primary):
            if server is not None:
                server.stop()
                server.remove()
