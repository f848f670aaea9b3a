"""``restore_cluster``'s order and its refusals, with the lab replaced by recorders (no SSH, no Patroni).

What must hold: nothing is touched before the checks pass (a damaged backup or a time outside the range
stops it); the replicas stop before the leader; the DCS is wiped before the restore; the fresh full backup
comes before the replicas are re-cloned; a failing step is named.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import careflow_ha.backup.restore as restore_mod
from careflow_ha.backup.commands import Pgbackrest, Result
from careflow_ha.backup.lab import BackupRun
from careflow_ha.backup.repository import Backup, RestorableRange
from careflow_ha.backup.restore import RestoreTimeouts, parse_recovery_log, restore_cluster
from careflow_ha.backup.target import RestoreTarget
from careflow_ha.backup.verify import BadFile, VerifyResult
from careflow_ha.cluster.model import ClusterSnapshot, Member
from careflow_ha.errors import CheckFailed, CommandFailed, UsageError

T = datetime(2026, 12, 31, 14, 59, 59, tzinfo=UTC)  # 23:59:59 in Seoul on the year's last day
RECOVERY_LOG = """\
2026-12-31 15:01:02.100 UTC [812] LOG:  starting point-in-time recovery to 2026-12-31 14:59:59+00
2026-12-31 15:01:03.200 UTC [812] LOG:  recovery stopping before commit of transaction 48213, \
time 2026-12-31 15:00:00.004121+00
2026-12-31 15:01:03.201 UTC [812] LOG:  redo done at 0/5A000F10 system usage: CPU: user: 0.01 s
2026-12-31 15:01:03.201 UTC [812] LOG:  last completed transaction was at log time 2026-12-31 14:59:59.951042+00
2026-12-31 15:01:03.400 UTC [810] LOG:  database system is ready to accept connections
"""


class Recorder:
    """Every command every fake host ran, in order, as (host, argv)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.fail_on: str | None = None

    def runner(self, host: str):
        def run(argv, timeout=600, check=True, on_line=None):
            self.calls.append((host, tuple(argv)))
            text = " ".join(argv)
            if self.fail_on and self.fail_on in text:
                raise CommandFailed(f"{argv[0]} failed (1): boom")
            out = RECOVERY_LOG if "pg_ctl" in text else ""
            return Result(tuple(argv), 1 if "kill -0" in text else 0, out, "")
        return run

    def texts(self) -> list[str]:
        return [f"{h}: {' '.join(a)}" for h, a in self.calls]


class FakeLab:
    def __init__(self, rec: Recorder, verify_ok: bool = True, span: RestorableRange | None = None) -> None:
        self.rec, self.verify_ok, self.span = rec, verify_ok, span
        self.pgbr = Pgbackrest("careflow")
        self.backups: list[tuple[str, bool | None]] = []

    def node(self, name, user="postgres"):
        return self.rec.runner(name)

    def archive_check(self, timeout=120):
        self.rec.calls.append(("backup1", ("pgbackrest", "check")))
        return 0.5

    def check_target(self, target):
        if self.span is not None:
            self.span.check(target)
        return self.span

    def verify(self):
        if self.verify_ok:
            return VerifyResult(0, "ok", (), (), None)
        return VerifyResult(0, "error", (BadFile("invalid checksum", "20261231-010000F/pg_data/base/5/1255.zst"),),
                            ("20261231-010000F",), None)

    def backup(self, type_="incr", from_standby=None, log=None, timeout=3600):
        self.backups.append((type_, from_standby))
        self.rec.calls.append(("backup1", ("pgbackrest", "backup", f"--type={type_}")))
        b = Backup("20261231-150500F", "full", T, T, "000000020000000000000060", "000000020000000000000060",
                   30_000_000, 4_000_000, False, None)
        return BackupRun(b, 3.0)


class FakeApi:
    def __init__(self, leader: str | None, first_state: str | None = None) -> None:
        self.leader, self.first_state = leader, first_state
        self.polls = 0

    def cluster(self, timeout=None):
        self.polls += 1
        if self.leader is None and self.first_state is None and self.polls == 1:
            raise OSError("connection refused")  # the first look: Patroni is down everywhere
        leader = self.leader or "pg1"
        running = self.first_state if self.polls == 1 and self.first_state else "running"
        return ClusterSnapshot(0.0, tuple(
            Member(n, "leader" if n == leader else "replica", running if n == leader else "streaming", 3, 0)
            for n in ("pg1", "pg2", "pg3")))


@pytest.fixture
def lab(monkeypatch):
    rec = Recorder()
    state = {"lab": FakeLab(rec), "api": FakeApi("pg2")}
    monkeypatch.setattr(restore_mod, "LabRepository", lambda settings: state["lab"])
    monkeypatch.setattr(restore_mod, "PatroniApi", lambda settings, nodes: state["api"])
    monkeypatch.setattr(restore_mod.time, "sleep", lambda s: None)
    monkeypatch.setattr(restore_mod, "wait_healthy", lambda settings, log, timeout: type(
        "Status", (), {"snapshot": state["api"].cluster()})())
    return rec, state


FAST = RestoreTimeouts(stop_s=5, restore_s=5, leader_s=3, healthy_s=4)


def _index(texts: list[str], needle: str) -> int:
    return next(i for i, t in enumerate(texts) if needle in t)


def test_the_order_spares_the_leader_and_re_clones_from_a_fresh_backup(lab):
    rec, state = lab
    asked = []
    result = restore_cluster(object(), RestoreTarget("time", time=T), asked.append, lambda m: None, FAST)
    t = rec.texts()
    assert result.member == "pg2" and asked and "pg1, pg2, pg3" in asked[0]
    # Checks first: archive the primary's segment, then the question, then the first change.
    assert _index(t, "pgbackrest check") < _index(t, "systemctl stop patroni")
    stops = [h for h, a in rec.calls if a[:3] == ("systemctl", "stop", "patroni")]
    assert set(stops[:2]) == {"pg1", "pg3"} and stops[2:] == ["pg2"]  # replicas first (together), the leader last
    assert _index(t, "patroni.yml remove careflow") < _index(t, "pgbackrest --stanza=careflow restore")
    restore_line = t[_index(t, "restore --delta")]
    assert restore_line.startswith("pg2:") and "--type=time" in restore_line
    assert "--target-action=promote" in restore_line
    assert _index(t, "pg2: systemctl start patroni") < _index(t, "backup --type=full") < _index(t, "pg1: sh -c find")
    assert state["lab"].backups == [("full", False)]  # no standby runs yet: from the primary
    assert result.stopped_at == "transaction 48213 (2026-12-31 15:00:00.004121+00)"
    assert result.last_transaction == "2026-12-31 14:59:59.951042+00"
    assert [s.name.split(" ")[0] for s in result.steps] == ["stop", "remove", "restore", "start", "take", "re-clone"]


def test_a_damaged_backup_stops_the_restore_before_any_host_changes(lab):
    rec, state = lab
    state["lab"] = FakeLab(rec, verify_ok=False)
    with pytest.raises(CheckFailed, match=r"invalid checksum 20261231-010000F/pg_data/base/5/1255.zst"):
        restore_cluster(object(), RestoreTarget("latest"), lambda q: None, lambda m: None, FAST)
    assert not any("systemctl" in t or "remove" in t for t in rec.texts())


def test_a_time_outside_the_range_is_refused_with_the_range_before_anything_changes(lab):
    rec, state = lab
    span = RestorableRange(datetime(2026, 12, 31, 16, 0, tzinfo=UTC), datetime(2026, 12, 31, 16, 30, tzinfo=UTC),
                           "a", "b")
    state["lab"] = FakeLab(rec, span=span)
    with pytest.raises(UsageError, match=r"before the oldest backup's end; the restorable range is 2027-01-01 01:00"):
        restore_cluster(object(), RestoreTarget("time", time=T), lambda q: None, lambda m: None, FAST)
    assert not any("systemctl" in t for t in rec.texts())


def test_with_every_node_down_it_restores_the_first_node_without_archiving_first(lab):
    rec, state = lab
    state["api"] = FakeApi(None)
    result = restore_cluster(object(), RestoreTarget("latest"), lambda q: None, lambda m: None, FAST)
    assert result.member == "pg1"
    assert not any("pgbackrest check" in t for t in rec.texts())  # no primary to switch WAL on
    assert "--type=default" in rec.texts()[_index(rec.texts(), "restore --delta")]


def test_a_leader_key_without_a_running_primary_is_not_a_primary(lab):
    rec, state = lab
    state["api"] = FakeApi("pg3", first_state="stopped")  # a killed primary's key lives until its TTL
    result = restore_cluster(object(), RestoreTarget("latest"), lambda q: None, lambda m: None, FAST)
    assert result.member == "pg3" and not any("pgbackrest check" in t for t in rec.texts())


def test_a_failing_step_is_named(lab):
    rec, _ = lab
    rec.fail_on = "remove careflow"
    with pytest.raises(CommandFailed, match=r"restore failed at 'remove the cluster from the DCS': .*boom"):
        restore_cluster(object(), RestoreTarget("latest"), lambda q: None, lambda m: None, FAST)


def test_the_recovery_log_says_where_a_latest_restore_ended():
    stopped, last = parse_recovery_log("LOG:  last completed transaction was at log time 2027-01-01 00:00:00.5+09\n")
    assert stopped is None and last == "2027-01-01 00:00:00.5+09"
    assert parse_recovery_log("nothing useful") == (None, None)
