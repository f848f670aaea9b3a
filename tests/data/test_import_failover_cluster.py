"""On the cluster: a CSV import through HAProxy port 5000 while Patroni switches the primary over.

Scenario, with deadlines: the import is in its transaction on the primary
(it has written its batch record) when a planned switchover to the sync
standby starts. Then

- the batch either committed whole or not at all: lab_results holds all of
  its good rows or none, and there is one batch record or none;
- once the cluster is healthy again, a rerun of the same command converges:
  it imports the file, or refuses it naming the batch that committed;
- every good row is then in lab_results exactly once, on the new primary and
  on a replica (5001).

Needs the suite fixture ``cluster`` (the Settings of a healthy, loaded
cluster). The rows this test adds are removed at the end, and the test
leaves the cluster healthy (with another leader).
"""

from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from careflow_ha.cluster.health import wait_healthy
from careflow_ha.cluster.patroni import PatroniApi
from careflow_ha.data.importer import ImportSummary, import_csv, parse_csv
from careflow_ha.drills.faults import pick_switchover
from careflow_ha.errors import CareflowError, EnvironmentProblem, UsageError
from careflow_ha.settings import Settings
from tests.plugins.timeouts import scaled, wait_until

pytestmark = pytest.mark.cluster
SEOUL = ZoneInfo("Asia/Seoul")
GOOD_ROWS = 30_000  # several seconds of import through HAProxy, so that the switchover lands inside it
APP_NAME = "careflow-import-failover-test"


def write_file(settings: Settings, path) -> list[tuple[int, str]]:
    """GOOD_ROWS good ALT results for demo pets at instants no earlier run used, plus 3 bad rows."""
    with psycopg.connect(settings.dsn("rw", "app")) as conn:
        pets = [r[0] for r in conn.execute("SELECT pet_id FROM pets WHERE birth_date < now() - interval '2 years' "
                                           "ORDER BY pet_id LIMIT 500")]
    assert pets, "the demo data set should be loaded on the cluster"
    start = datetime.now(SEOUL).replace(microsecond=0) - timedelta(days=20, seconds=random.randrange(86_400 * 5))
    good = [(pets[i % len(pets)], (start + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S"))
            for i in range(GOOD_ROWS)]
    lines = ["pet_id,test_code,collected_at,value"] + [f"{p},ALT,{w},42" for p, w in good]
    lines += [f"{pets[0]},ALT,2026-02-30 09:00,42", f"{pets[0]},NOPE,{good[0][1]},1", f"{pets[0]},ALT"]
    path.write_text("\n".join(lines) + "\n")
    return good


def copies(dsn: str, good: list[tuple[int, str]]) -> list[int]:
    """How many times each good row is in lab_results, as the server at ``dsn`` sees it."""
    first = min(w for _, w in good)
    with psycopg.connect(dsn) as conn:
        found = dict(conn.execute(
            "SELECT pet_id::text || ' ' || to_char(collected_at AT TIME ZONE 'Asia/Seoul', 'YYYY-MM-DD HH24:MI:SS'), "
            "count(*) FROM lab_results WHERE test_code = 'ALT' AND pet_id = ANY(%s) AND collected_at >= "
            "%s::timestamp AT TIME ZONE 'Asia/Seoul' GROUP BY 1", (sorted({p for p, _ in good}), first)).fetchall())
    return [found.get(f"{p} {w}", 0) for p, w in good]


def batches(dsn: str, sha256: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT batch_id, forced, rows_loaded, rows_duplicate, rows_quarantined FROM "
                            "lab_import_batches WHERE sha256 = %s ORDER BY batch_id", (sha256,)).fetchall()


def import_in_transaction(admin_dsn: str) -> bool:
    """The import's backend on the primary has an open transaction that wrote (its batch record, at least;
    the admin role's pg_monitor shows another role's backend_xid)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        return conn.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
                            "AND backend_xid IS NOT NULL)", (APP_NAME,)).fetchone()[0]


def remove_rows(dsn: str, sha256: str) -> None:
    """Take this test's batches, keys, quarantine rows and results out of the shared cluster."""
    with psycopg.connect(dsn) as conn:
        ids = [r[0] for r in conn.execute("SELECT batch_id FROM lab_import_batches WHERE sha256 = %s", (sha256,))]
        conn.execute("DELETE FROM lab_results r USING lab_import_keys k WHERE k.batch_id = ANY(%s) AND "
                     "r.pet_id = k.pet_id AND r.test_code = k.test_code AND r.collected_at = k.collected_at", (ids,))
        for table in ("lab_import_keys", "lab_results_quarantine", "lab_import_batches"):
            conn.execute(f"DELETE FROM {table} WHERE batch_id = ANY(%s)", (ids,))  # noqa: S608 - fixed names


def test_an_import_during_a_switchover_commits_whole_or_not_and_a_rerun_leaves_each_row_once(cluster, tmp_path):
    rw, rw_admin, ro = cluster.dsn("rw", "app"), cluster.dsn("rw", "admin"), cluster.dsn("ro", "ro")
    wait_healthy(cluster, print, scaled(180))
    path = tmp_path / "lab_export.csv"
    good = write_file(cluster, path)
    sha = parse_csv(path.read_bytes(), path.name).sha256
    outcome: dict[str, object] = {}

    def first_import() -> None:
        try:
            outcome["summary"] = import_csv(make_conninfo(rw, application_name=APP_NAME), path, batch_size=2_000)
        except CareflowError as exc:  # anything else is a bug and fails the test below
            outcome["error"] = exc

    runner = threading.Thread(target=first_import, daemon=True)
    try:
        runner.start()
        wait_until(lambda: import_in_transaction(rw_admin) or "summary" in outcome or "error" in outcome,
                   timeout=120, interval=0.1, what="the import to be inside its transaction on the primary")
        assert "summary" not in outcome and "error" not in outcome, f"the import ended too soon: {outcome}"
        leader, candidate = pick_switchover(PatroniApi(cluster).cluster())
        PatroniApi(cluster).switchover(leader, candidate, timeout=scaled(60))
        runner.join(timeout=scaled(300))
        assert not runner.is_alive(), "the import neither finished nor failed within its deadline"
        assert "summary" in outcome or isinstance(outcome.get("error"), EnvironmentProblem), outcome
        if "error" in outcome:
            assert "Run the same command again" in str(outcome["error"])
        wait_healthy(cluster, print, scaled(180))

        # Whole or nothing, as the new primary sees it.
        after_first = copies(rw, good)
        committed = batches(rw, sha)
        assert set(after_first) in ({0}, {1}), "a batch is never half committed"
        assert len(committed) == (1 if after_first[0] else 0)

        def rerun() -> tuple[str, object]:  # EnvironmentProblem (5000 not routed yet) counts as "not yet"
            try:
                return "imported", import_csv(rw, path)
            except UsageError as exc:
                return "refused", exc

        how, result = wait_until(rerun, timeout=120, interval=2, what="a rerun of the import through 5000")
        if committed:
            assert how == "refused" and f"as batch {committed[0][0]}," in str(result), result
        else:
            assert how == "imported" and isinstance(result, ImportSummary)
            assert (result.loaded, result.duplicates, result.quarantined) == (GOOD_ROWS, 0, 3)

        assert copies(rw, good) == [1] * GOOD_ROWS, "every good row exactly once on the primary"
        ((_, forced, loaded, duplicate, quarantined),) = batches(rw, sha)
        assert (forced, loaded, duplicate, quarantined) == (False, GOOD_ROWS, 0, 3)
        wait_until(lambda: copies(ro, good) == [1] * GOOD_ROWS, timeout=60,
                   what="the imported rows, once each, on a replica through 5001")
    finally:
        runner.join(timeout=scaled(300))
        wait_healthy(cluster, print, scaled(180))
        wait_until(lambda: remove_rows(rw, sha) is None, timeout=60, what="this test's rows removed")
