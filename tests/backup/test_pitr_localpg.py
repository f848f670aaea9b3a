"""Point-in-time recovery with a real pgBackRest against a loopback PostgreSQL 15 (posix repository in tmp).

The scenario is the accidental-delete drill in miniature: a full backup, rows acknowledged one commit at a
time, the time T noted on the server's clock, more rows after T, then a DELETE without WHERE. A restore to T
into a scratch directory, started on another port, must hold every row acknowledged before T and nothing
after it; a restore to just before the DELETE's xid must hold both batches. Then a damaged and a missing
file in a copy of the repository make verify fail naming both. Tiny data: seconds, since CI runs it.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import timedelta

import psycopg
import pytest

from careflow_ha.backup import operations
from careflow_ha.backup.commands import Pgbackrest
from careflow_ha.backup.local import LocalRepository, start_local_repository
from careflow_ha.backup.target import RestoreTarget, parse_target, shown
from careflow_ha.errors import CheckFailed, UsageError
from tests.plugins.timeouts import scaled

pytestmark = pytest.mark.localpg


def _wal(rig):
    """Read archived WAL the way the CLI does on the lab, but here: archive-get into the rig's directory."""
    return operations.local_wal_reader(rig.run, rig.pgbr, rig.base)


class Story:
    """What happened on the original, as the client saw it."""

    before: set[int]  # ids acknowledged before T
    after: set[int]  # ids acknowledged after T, before the DELETE
    t = None
    delete_xid: int


@pytest.fixture(scope="module")
def rig():
    repo = start_local_repository()
    try:
        yield repo
    finally:
        repo.close()


def _insert_acknowledged(conn: psycopg.Connection, ids: range) -> set[int]:
    acked = set()
    for i in ids:  # one commit per row: each id is acknowledged on its own
        with conn.transaction():
            conn.execute("INSERT INTO visit_notes (id, note) VALUES (%s, %s)", (i, f"note {i}"))
        acked.add(i)
    return acked


def _wait_for_server_clock_after(conn: psycopg.Connection, instant, timeout: float) -> None:
    """Poll (bounded) until the server's clock passes ``instant``: T must lie inside the restorable range."""
    deadline = time.monotonic() + timeout
    while conn.execute("SELECT clock_timestamp() <= %s", (instant,)).fetchone()[0]:
        assert time.monotonic() < deadline, f"the server clock did not pass {instant} in {timeout:.0f}s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def story(rig: LocalRepository) -> Story:
    rig.run(rig.pgbr.backup("full"), timeout=scaled(180))
    s = Story()
    with rig.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE visit_notes (id int PRIMARY KEY, note text NOT NULL)")
        # pgBackRest restores to a time only from a backup whose whole-second stop time is before it.
        earliest = operations.restorable_range(operations.read_stanza(rig.run, rig.pgbr)).earliest
        _wait_for_server_clock_after(conn, earliest, scaled(5))
        s.before = _insert_acknowledged(conn, range(1, 41))
        s.t = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # the server's clock, not the host's
        s.after = _insert_acknowledged(conn, range(41, 51))
        with conn.transaction():
            s.delete_xid = int(conn.execute("SELECT txid_current()").fetchone()[0])
            conn.execute("DELETE FROM visit_notes")  # the accident: no WHERE
        assert conn.execute("SELECT count(*) FROM visit_notes").fetchone()[0] == 0
    rig.run(rig.pgbr.check(), timeout=scaled(120))  # switches WAL and waits until the segment is in the repository
    return s


def _restore(rig: LocalRepository, name: str, target: RestoreTarget) -> set[int]:
    restored = rig.restored_server(name)
    try:
        rig.run(rig.pgbr.restore(target, pg_path=restored.data_dir), timeout=scaled(300))
        rig.start_restored(restored, timeout=scaled(120))
        with psycopg.connect(restored.dsn("superuser", "postgres")) as conn:
            return {r[0] for r in conn.execute("SELECT id FROM visit_notes")}
    finally:
        restored.stop()
        restored.remove()


def test_the_restorable_range_holds_t_and_ends_at_the_delete(rig, story, tmp_path_factory):
    span = operations.repository_range(rig.run, rig.pgbr, _wal(rig))
    assert span.earliest <= story.t <= span.latest
    assert span.latest >= story.t  # the newest archived commit (the DELETE) is after T
    assert span.latest - story.t < timedelta(minutes=5)


def test_a_restore_to_t_brings_back_every_row_acknowledged_before_t_and_nothing_after(rig, story):
    target = parse_target(to=story.t.isoformat())
    operations.check_target(rig.run, rig.pgbr, target, _wal(rig))  # inside the range: no refusal
    rows = _restore(rig, "at-t", target)
    assert story.before - rows == set(), "acknowledged before T but lost"
    assert rows & story.after == set(), "written after T but resurrected"
    assert rows == story.before


def test_a_restore_to_just_before_the_delete_xid_keeps_both_batches(rig, story):
    rows = _restore(rig, "before-xid", parse_target(before_xid=str(story.delete_xid)))
    assert rows == story.before | story.after


def test_a_time_outside_the_range_is_refused_naming_it(rig, story):
    span = operations.repository_range(rig.run, rig.pgbr, _wal(rig))
    for outside in (span.earliest - timedelta(seconds=1), span.latest + timedelta(hours=1)):
        with pytest.raises(UsageError) as err:
            operations.check_target(rig.run, rig.pgbr, RestoreTarget("time", time=outside), _wal(rig))
        assert err.value.exit_code == 2 and f"{shown(span.earliest)} .. {shown(span.latest)}" in str(err.value)


def test_verify_passes_then_names_a_damaged_and_a_missing_file(rig, story):
    assert operations.verify(rig.run, rig.pgbr).ok
    # Damage a copy (beside the repository, where postgres may read), so the repository stays good.
    copy = rig.base / "damaged-repo"
    shutil.copytree(rig.repo_path, copy)
    for path in [copy, *copy.rglob("*")] if os.geteuid() == 0 else []:
        shutil.chown(path, "postgres", "postgres")
    pgbr = Pgbackrest(rig.pgbr.stanza, rig.pgbr.config, extra=(f"--repo1-path={copy}",))
    label = operations.read_stanza(rig.run, pgbr).backups[-1].label
    files = sorted((copy / "backup" / pgbr.stanza / label / "pg_data" / "base").rglob("*.zst"),
                   key=lambda p: p.stat().st_size)
    damaged, missing = files[-1], files[-2]
    with damaged.open("r+b") as fh:
        fh.seek(damaged.stat().st_size // 2)
        fh.write(b"\x00garbage\x00")
    missing.unlink()
    result = operations.verify(rig.run, pgbr)
    rel = copy / "backup" / pgbr.stanza
    assert {(f.kind, f.path) for f in result.bad_files} == {
        ("invalid checksum", str(damaged.relative_to(rel))), ("file missing", str(missing.relative_to(rel)))}
    with pytest.raises(CheckFailed) as err:
        result.require_ok()
    assert str(damaged.relative_to(rel)) in str(err.value) and err.value.exit_code == 5
