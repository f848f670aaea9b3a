"""The restore drills of the failure model, and the reports of ``backup run``, ``backup verify`` and ``restore``.

- ``accidental-delete``: the probe writer runs; at T a ``DELETE`` without ``WHERE`` empties ``lab_results``;
  the cluster is restored to T. Every row acknowledged before T must be back, none sent after T, and
  ``lab_results`` must hold exactly what it held before. The report gives the restore time and the gap
  (acknowledged writes after T that a restore to T gives up by definition).
- ``replica-rebuild``: a replica's data directory is wiped; Patroni rebuilds it from the repository
  (``create_replica_methods``), then again with ``pg_basebackup`` from the leader, timed side by side.
- ``cluster-loss``: every database node's PostgreSQL is killed and its data directory destroyed; the
  cluster is restored with ``--latest``. RTO is fault to first acknowledged write; RPO is the acknowledged
  writes lost and their time span, which ``archive_timeout`` bounds.

Each drill asks for a healthy cluster first and leaves one behind (or fails saying which step did not).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from careflow_ha.backup.lab import PGDATA, BackupRun, LabRepository
from careflow_ha.backup.report import BackupReport, Check, Marks, Step, write_report
from careflow_ha.backup.restore import RestoreResult, restore_cluster
from careflow_ha.backup.target import RestoreTarget, shown
from careflow_ha.cluster.health import wait_healthy
from careflow_ha.cluster.patroni import PatroniApi
from careflow_ha.cluster.probes import ProbeWriter, ensure_probe_table, fetch_seqs
from careflow_ha.errors import CheckFailed, NotReady
from careflow_ha.settings import ROLE_NAMES, Settings

Progress = Callable[[str], None]
#: The EMR table the accidental DELETE hits: the fact table, nothing references it, and it is what a
#: clinic network can least afford to lose.
DELETED_TABLE = "lab_results"
#: The probe writer's rate during the drills (acknowledged writes are what the drills count).
WRITE_RATE_HZ = 20.0
#: Acknowledged writes before the fault, so "every row before T" is a real set.
WARMUP_ACKS = 40
#: Writes kept going after the DELETE: rows that must NOT come back from a restore to T.
AFTER_FAULT_S = 3.0
#: The restored cluster must accept a write within this long after the restore ends.
FIRST_WRITE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class BackupDrill:
    name: str
    title: str
    description: str
    ci: bool


BACKUP_DRILLS: dict[str, BackupDrill] = {
    d.name: d for d in (
        BackupDrill("accidental-delete", "a DELETE without WHERE, undone by point-in-time recovery",
                    f"DELETE FROM {DELETED_TABLE} under probe writes; restore --to just before it", True),
        BackupDrill("replica-rebuild", "a replica's data directory wiped and rebuilt",
                    "Patroni rebuilds it from the repository, then with pg_basebackup; timed side by side", True),
        BackupDrill("cluster-loss", "every database node's data destroyed",
                    "kill PostgreSQL and delete the data directory on all three nodes; restore --latest", False),
    )
}


def _secrets(settings: Settings) -> dict[str, str]:
    return dict(settings.secrets)


def _write(settings: Settings, report: BackupReport, log: Progress) -> Path:
    folder = write_report(report, settings.reports_dir, _secrets(settings))
    log(f"report: {folder.relative_to(settings.project_dir)}/report.md")
    return folder


# --- backup run, verify, restore: their reports -------------------------------------------------------------


def report_backup(settings: Settings, run: BackupRun, started: float) -> Path:
    b = run.backup
    report = BackupReport(
        kind="backup", title=f"pgBackRest {b.type} backup {b.label}", started_at=started, finished_at=time.time(),
        summary=(f"A {b.type} backup of stanza careflow, copied from a standby by the repository host. It holds "
                 f"{b.size / 1e6:.1f} MB of database; it copied {(b.delta or b.size) / 1e6:.1f} MB and added "
                 f"{b.stored / 1e6:.2f} MB to the repository (zstd)."),
        figures={"label": b.label, "type": b.type, "seconds": round(run.seconds, 2), "database_MB": b.size / 1e6,
                 "copied_MB": (b.delta or b.size) / 1e6, "stored_MB": b.stored / 1e6,
                 "MB_per_s": round(run.mb_per_s, 2),
                 "wal_start": b.wal_start, "wal_stop": b.wal_stop, "stop (Asia/Seoul)": shown(b.stop)},
        steps=[Step(f"pgbackrest backup --type={b.type}", started, started + run.seconds)],
    )
    return write_report(report, settings.reports_dir, _secrets(settings))


def verify_repository(settings: Settings, restore_test: bool, log: Progress) -> tuple[dict[str, Any], Path]:
    """``backup verify``: pgbackrest verify, then (optionally) a test restore of the newest backup on a replica."""
    lab = LabRepository(settings)
    started = time.time()
    steps: list[Step] = []
    with _step(steps, "pgbackrest verify", log):
        verdict = lab.verify()
    checks = [Check("every file's checksum and size", "no damaged or missing file", verdict.summary(), verdict.ok)]
    figures: dict[str, Any] = {"verify_status": verdict.status, "bad_files": len(verdict.bad_files)}
    problem = "" if verdict.ok else verdict.summary()
    if restore_test and verdict.ok:
        node = _a_replica(settings) or lab.reachable_node()
        with _step(steps, f"test restore of the newest backup on {node}", log):
            test = lab.restore_test(node, log=log)
        figures.update({"restore_test_node": node, "restore_s": test.restore_s, "start_s": test.start_s,
                        "restored_tables": test.tables, "restored_MB": test.bytes / 1e6})
        checks.append(Check("the newest backup restores and starts", "starts, holds the EMR tables",
                            f"{test.tables} tables, {test.bytes / 1e6:.0f} MB, started in {test.start_s:.1f}s",
                            test.tables > 0))
    report = BackupReport(kind="verify", title="backup verify", started_at=started, finished_at=time.time(),
                          summary="pgbackrest verify read every file in the repository"
                          + (", then the newest backup was restored into a scratch directory and started."
                             if restore_test and verdict.ok else "."),
                          figures=figures, steps=steps, checks=checks)
    folder = write_report(report, settings.reports_dir, _secrets(settings))
    outcome = {"ok": report.passed, "status": verdict.status, "bad_files": len(verdict.bad_files),
               **{k: v for k, v in figures.items() if k.startswith("restore")}, "problem": problem}
    return outcome, folder


def _a_replica(settings: Settings) -> str | None:
    try:
        snap = PatroniApi(settings).cluster(timeout=3)
    except (NotReady, OSError):
        return None
    return next((m.name for m in snap.members if m.is_streaming_replica), None)


@contextlib.contextmanager
def _step(steps: list[Step], name: str, log: Progress) -> Iterator[Step]:
    step = Step(name, time.time())
    steps.append(step)
    log(f"{name} ...")
    yield step
    step.ended = time.time()
    log(f"{name}: {step.seconds:.1f}s")


def restore_figures(result: RestoreResult) -> dict[str, Any]:
    fresh = result.fresh_backup
    return {
        "target": result.target.describe(), "restored_member": result.member, "reached": result.reached(),
        "restore_s": None if result.seconds is None else round(result.seconds, 2),
        "restore_step_s": next((round(s.seconds, 2) for s in result.steps if s.name.startswith("restore ")
                                and s.seconds is not None), None),
        "reclone_s": next((round(s.seconds, 2) for s in result.steps if s.name.startswith("re-clone")
                           and s.seconds is not None), None),
        "fresh_backup": None if fresh is None else fresh.backup.label,
        "fresh_backup_s": None if fresh is None else round(fresh.seconds, 2),
        "range": None if result.span is None else str(result.span),
    }


def report_restore(settings: Settings, result: RestoreResult) -> Path:
    report = BackupReport(
        kind="restore", title=f"restore to {result.target.describe()}", started_at=result.started_at,
        finished_at=result.finished_at or time.time(),
        summary=f"The cluster was restored on {result.member} and its replicas re-cloned: {result.reached()}.",
        figures=restore_figures(result), steps=result.steps,
    )
    return write_report(report, settings.reports_dir, _secrets(settings))


# --- the drills -----------------------------------------------------------------------------------------------


@dataclass
class _Writer:
    """The drill's probe writer through the read-write endpoint, with its run id."""

    settings: Settings
    run_id: str

    @classmethod
    def start(cls, settings: Settings, log: Progress) -> tuple[_Writer, ProbeWriter]:
        ensure_probe_table(settings.dsn("rw", role="admin"), grant_to=ROLE_NAMES["app"])
        me = cls(settings, f"backup-{uuid.uuid4().hex[:12]}")
        writer = ProbeWriter(settings.dsn("rw", role="app"), me.run_id, rate_hz=WRITE_RATE_HZ, max_seconds=1800)
        writer.start()
        deadline = time.monotonic() + 60
        while len(writer.acks) < WARMUP_ACKS and time.monotonic() < deadline:
            time.sleep(0.2)
        if len(writer.acks) < WARMUP_ACKS:
            writer.stop()
            raise NotReady(f"the probe writer got {len(writer.acks)} of {WARMUP_ACKS} writes acknowledged in 60s")
        log(f"probe writer: {len(writer.acks)} writes acknowledged")
        return me, writer

    def restored_seqs(self) -> set[int]:
        # As the role that wrote them (it may read the table whoever created it).
        return set(fetch_seqs(self.settings.dsn("rw", role="app"), self.run_id))


def first_write_after(settings: Settings, since: float, timeout_s: float = FIRST_WRITE_TIMEOUT_S) -> float:
    """Seconds from ``since`` to the first write the cluster acknowledges (a fresh connection per try)."""
    deadline = time.monotonic() + timeout_s
    last = "no try yet"
    for _ in range(int(timeout_s / 0.2) + 2):
        try:
            # The admin role: never through a pooler, so the temporary table and the insert share one session.
            with psycopg.connect(settings.dsn("rw", role="admin"), connect_timeout=2, autocommit=True) as conn:
                conn.execute("CREATE TEMP TABLE careflow_first_write (t timestamptz)")
                conn.execute("INSERT INTO careflow_first_write VALUES (now())")
                return time.time() - since
        except psycopg.Error as exc:
            last = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    raise NotReady(f"no write was acknowledged within {timeout_s:.0f}s of the restore ({last})")


def _table_fingerprint(conn: psycopg.Connection, table: str) -> tuple[int, int]:
    row = conn.execute(f"SELECT count(*), coalesce(sum(hashtext(t::text)), 0) FROM {table} t").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def accidental_delete(settings: Settings, log: Progress) -> tuple[BackupReport, Path]:
    lab = LabRepository(settings)
    started = time.time()
    steps: list[Step] = []
    wait_healthy(settings, log)
    with _step(steps, "incremental backup before the fault", log):
        base = lab.backup("incr", log=log)
    probe, writer = _Writer.start(settings, log)
    try:
        # The application's accident, made as the application role (it owns the EMR tables; the admin role may
        # not read them).
        with psycopg.connect(settings.dsn("rw", role="app"), autocommit=True) as conn:
            before = _table_fingerprint(conn, DELETED_TABLE)
            row = conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()
            assert row is not None
            t_fault = float(row[0])
            with _step(steps, f"DELETE FROM {DELETED_TABLE} (no WHERE)", log), conn.transaction():
                xid = conn.execute("SELECT txid_current()").fetchone()[0]  # type: ignore[index]
                deleted = conn.execute(f"DELETE FROM {DELETED_TABLE}").rowcount
        log(f"deleted {deleted} rows in transaction {xid} at {shown(datetime.fromtimestamp(t_fault, UTC))}")
        time.sleep(AFTER_FAULT_S)
    finally:
        writer.stop()
    acks = writer.acks
    target = RestoreTarget("time", time=datetime.fromtimestamp(t_fault, UTC))
    result = restore_cluster(settings, target, lambda _q: None, log)
    rto = first_write_after(settings, result.finished_at or time.time())
    steps.extend(result.steps)
    restored = probe.restored_seqs()
    with psycopg.connect(settings.dsn("rw", role="app"), autocommit=True) as conn:
        after = _table_fingerprint(conn, DELETED_TABLE)
    acked_before = {a.seq for a in acks if a.acked_at < t_fault}
    sent_after = {a.seq for a in acks if a.sent_at > t_fault} | {e.seq for e in writer.errors if e.at > t_fault}
    first_after = min(sent_after, default=None)
    lost = acked_before - restored
    resurrected = {s for s in restored if first_after is not None and s >= first_after}
    gap = sorted(a.acked_at for a in acks if a.acked_at > t_fault)
    checks = [
        Check("rows acknowledged before T are back", "0 lost", f"{len(lost)} lost of {len(acked_before)}",
              not lost),
        Check("rows sent after T are absent", "0 resurrected", f"{len(resurrected)} present", not resurrected),
        Check(f"{DELETED_TABLE} as before the DELETE", f"{before[0]} rows, same contents",
              f"{after[0]} rows, {'same' if after == before else 'DIFFERENT'} contents", after == before),
    ]
    report = BackupReport(
        kind="accidental-delete", title="drill accidental-delete: DELETE without WHERE, point-in-time recovery",
        started_at=started, finished_at=time.time(),
        summary=(f"{deleted} rows of {DELETED_TABLE} were deleted in transaction {xid} while the probe wrote "
                 f"{WRITE_RATE_HZ:.0f}/s. The cluster was restored to T = {shown(target.time)} "  # type: ignore[arg-type]
                 f"({result.reached()}). A restore to T gives up, by definition, the "
                 f"{len(gap)} writes acknowledged after T (the gap)."),
        figures={"deleted_rows": deleted, "delete_xid": xid, "T": shown(target.time),  # type: ignore[arg-type]
                 "acked_before_T": len(acked_before), "lost": len(lost), "resurrected": len(resurrected),
                 "gap_writes": len(gap), "gap_s": round(gap[-1] - t_fault, 2) if gap else 0.0,
                 "base_backup": base.backup.label, "base_backup_s": round(base.seconds, 2),
                 **restore_figures(result), "first_write_after_restore_s": round(rto, 2)},
        steps=steps, checks=checks,
        marks=Marks(acks=[a.acked_at for a in acks], moments={"T (DELETE)": t_fault,
                                                               "restored": result.finished_at or time.time()}),
    )
    return report, _write(settings, report, log)


def replica_rebuild(settings: Settings, log: Progress) -> tuple[BackupReport, Path]:
    lab = LabRepository(settings)
    api = PatroniApi(settings)
    started = time.time()
    steps: list[Step] = []
    snap = wait_healthy(settings, log).snapshot  # ClusterStatus
    sync = set(snap.sync_standbys)
    replicas = [m.name for m in snap.members if m.is_streaming_replica]
    node = next((n for n in replicas if n not in sync), replicas[0])  # spare the sync standby: no commit waits
    root = lab.node(node, "root")
    probe, writer = _Writer.start(settings, log)
    timings: dict[str, float] = {}
    try:
        with _step(steps, f"wipe {node} and let Patroni rebuild it (create_replica_methods: pgbackrest)", log):
            t0 = time.time()
            root(["systemctl", "stop", "patroni"], timeout=120)
            root(["sh", "-c", f"find {PGDATA} -mindepth 1 -delete"], timeout=300)
            root(["systemctl", "start", "patroni"], timeout=60)
            _wait_streaming(api, node, 900)
            timings["pgbackrest"] = time.time() - t0
        with _step(steps, f"rebuild {node} with pg_basebackup from the leader (patronictl reinit --from-leader)", log):
            t0 = time.time()
            root(["sh", "-c", "patronictl -c /etc/patroni/patroni.yml reinit careflow "
                              f"{node} --force --from-leader --wait"], timeout=900)
            _wait_streaming(api, node, 900)
            timings["basebackup"] = time.time() - t0
    finally:
        writer.stop()
    wait_healthy(settings, log)  # the rebuilt member is the sync standby's alternate: let Patroni settle
    methods = _replica_methods(root, started)
    restored = probe.restored_seqs()
    lost = {a.seq for a in writer.acks} - restored
    ratio = timings["basebackup"] / timings["pgbackrest"]
    checks = [
        Check("rebuilt from the repository", "Patroni used pgbackrest, then basebackup",
              " then ".join(methods) or "not in the journal", methods[-2:] == ["pgbackrest", "basebackup"]),
        Check("acknowledged writes during the rebuilds", "0 lost", f"{len(lost)} lost of {len(writer.acks)}",
              not lost),
        Check("failed writes during the rebuilds", "0 (a replica is not in the write path)",
              str(len(writer.errors)), not writer.errors),
    ]
    report = BackupReport(
        kind="replica-rebuild", title=f"drill replica-rebuild: {node} rebuilt from the repository and from the leader",
        started_at=started, finished_at=time.time(),
        summary=(f"{node}'s data directory was emptied and Patroni rebuilt it from the pgBackRest repository in "
                 f"{timings['pgbackrest']:.1f}s; the same rebuild with pg_basebackup from the leader took "
                 f"{timings['basebackup']:.1f}s ({ratio:.2f}x the repository's time). Each is timed from the data "
                 "being gone to the member streaming again."),
        figures={"node": node, "pgbackrest_rebuild_s": round(timings["pgbackrest"], 2),
                 "basebackup_rebuild_s": round(timings["basebackup"], 2), "basebackup_over_pgbackrest": round(ratio, 2),
                 "writes_acked": len(writer.acks), "failed_writes": len(writer.errors), "lost": len(lost)},
        steps=steps, checks=checks, marks=Marks(acks=[a.acked_at for a in writer.acks]),
        notes=["Patroni's basebackup method runs pg_basebackup with its defaults, which wait for a spread "
               "checkpoint on the leader before copying; on a small database that wait is most of its time. "
               "pgBackRest restores from the repository and touches the leader only for streaming."],
    )
    return report, _write(settings, report, log)


def _replica_methods(root, since: float) -> list[str]:  # noqa: ANN001 - an SshRunner as root
    """Which method Patroni logged for each replica it created since ``since`` ("replica has been created using X")."""
    stamp = datetime.fromtimestamp(since - 1, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    got = root(["journalctl", "-u", "patroni", "--since", stamp, "--no-pager", "-o", "cat"], timeout=30, check=False)
    return [line.rsplit(" ", 1)[-1] for line in got.stdout.splitlines() if "replica has been created using" in line]


def _wait_streaming(api: PatroniApi, node: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.5) + 2):
        with contextlib.suppress(NotReady, OSError):
            member = api.cluster(timeout=3).member(node)
            if member is not None and member.is_streaming_replica:
                return
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    raise NotReady(f"{node} was not streaming within {timeout_s:.0f}s; look at 'journalctl -u patroni' on {node}")


def cluster_loss(settings: Settings, log: Progress) -> tuple[BackupReport, Path]:
    lab = LabRepository(settings)
    started = time.time()
    steps: list[Step] = []
    wait_healthy(settings, log)
    bound = archive_timeout_s(settings)
    probe, writer = _Writer.start(settings, log)
    nodes = ("pg1", "pg2", "pg3")
    try:
        # Write for longer than archive_timeout, so the loss must stop at the bound and older writes survive.
        log(f"writing for {bound + 10:.0f}s (archive_timeout {bound:.0f}s + 10s) before the loss")
        time.sleep(bound + 10)
        with _step(steps, "kill PostgreSQL and destroy the data directory on every node", log):
            t_fault = time.time()
            for n in nodes:
                # SIGKILL, then stop: systemd would otherwise restart Patroni on the empty directory.
                lab.node(n, "root")(["sh", "-c", "systemctl kill -s KILL patroni; systemctl stop patroni; "
                                                 "pkill -KILL -u postgres -x postgres; sleep 0.5; "
                                                 f"find {PGDATA} -mindepth 1 -delete"], timeout=120, check=False)
        time.sleep(2)
    finally:
        writer.stop()
    acks = writer.acks
    result = restore_cluster(settings, RestoreTarget("latest"), lambda _q: None, log)
    rto = first_write_after(settings, t_fault)
    steps.extend(result.steps)
    restored = probe.restored_seqs()
    acked = {a.seq: a.acked_at for a in acks}
    lost = sorted(s for s in acked if s not in restored)
    lost_span = (max(acked[s] for s in lost) - min(acked[s] for s in lost)) if lost else 0.0
    # archive_timeout forces a segment switch at least that often, and the async push ships it within seconds:
    # a write acknowledged longer ago than that (plus 5 s for the push) was archived and must come back.
    old_enough = {s for s, at in acked.items() if at < t_fault - bound - 5}
    invented = restored - set(acked) - {e.seq for e in writer.errors} - set(writer.in_flight)
    checks = [
        Check("acknowledged writes lost", f"their span within archive_timeout ({bound:.0f}s) + 5s",
              f"{len(lost)} lost over {lost_span:.1f}s", lost_span <= bound + 5),
        Check("writes older than archive_timeout + 5s survive", "0 of them lost",
              f"{len(old_enough - restored)} of {len(old_enough)} lost", bool(old_enough) and old_enough <= restored),
        Check("nothing invented", "every restored row was acknowledged or in flight",
              f"{len(invented)} restored rows never acknowledged", not invented),
    ]
    report = BackupReport(
        kind="cluster-loss", title="drill cluster-loss: every database node's data destroyed, restore --latest",
        started_at=started, finished_at=time.time(),
        summary=(f"PostgreSQL was killed and its data directory deleted on {', '.join(nodes)}; the cluster was "
                 f"restored from the repository with --latest ({result.reached()}). RTO {rto:.1f}s (fault to the "
                 f"first acknowledged write); RPO {len(lost)} acknowledged writes over {lost_span:.1f}s, which "
                 f"archive_timeout={bound:.0f}s bounds (the WAL segment open at the loss was never archived)."),
        figures={"rto_s": round(rto, 2), "rpo_writes": len(lost), "rpo_span_s": round(lost_span, 2),
                 "archive_timeout_s": bound, "acked_writes": len(acked), **restore_figures(result)},
        steps=steps, checks=checks,
        marks=Marks(acks=[a.acked_at for a in acks], moments={"fault": t_fault}),
    )
    return report, _write(settings, report, log)


def archive_timeout_s(settings: Settings) -> float:
    """archive_timeout as the running primary has it (Patroni applied it from group_vars)."""
    with psycopg.connect(settings.dsn("rw", role="admin"), autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT setting::float FROM pg_settings WHERE name = 'archive_timeout'").fetchone()
    assert row is not None
    return float(row[0])


RUNNERS: dict[str, Callable[[Settings, Progress], tuple[BackupReport, Path]]] = {
    "accidental-delete": accidental_delete, "replica-rebuild": replica_rebuild, "cluster-loss": cluster_loss,
}


def run_backup_drill(name: str, settings: Settings, log: Progress) -> tuple[BackupReport, Path]:
    if name not in RUNNERS:
        raise CheckFailed(f"no backup drill {name!r}")  # the CLI checks names first; this is a bug
    return RUNNERS[name](settings, log)
