"""The drill runner end to end against a throwaway local PostgreSQL, with a crash-and-restart "fault".

The cluster side (Patroni control, container engine) is replaced by small
fakes; the probes, hold/heal logic, read-back, analysis and report are the
real ones. This is the closest the drill engine gets to a real run without
the cluster.
"""

from __future__ import annotations

import json
import subprocess
import time
from types import MappingProxyType

import psycopg
import pytest

from careflow_ha.cluster.model import ClusterSnapshot, Member
from careflow_ha.drills.faults import Fault, Hold
from careflow_ha.drills.report import write_report
from careflow_ha.drills.runner import DrillOptions, run_drill
from careflow_ha.errors import NotReady
from careflow_ha.settings import SECRET_KEYS, Settings
from tests.plugins.timeouts import scaled

pytestmark = pytest.mark.localpg


class OneNodeControl:
    """ClusterControl for a single local server: healthy means it accepts connections."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.calls: list[tuple[str, object]] = []

    def topology(self) -> ClusterSnapshot:
        return ClusterSnapshot(time.time(), (Member("local", "leader", "running", 1),), "local")

    def history(self):
        return ()

    def timing(self):
        raise AssertionError("not used by the runner")

    def synchronous_mode(self) -> bool:
        return False

    def set_timing_preset(self, name: str):
        self.calls.append(("preset", name))

    def set_synchronous_mode(self, enabled: bool) -> None:
        self.calls.append(("synchronous_mode", enabled))

    def wait_healthy(self, timeout: float) -> ClusterSnapshot:
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.2) + 2):
            try:
                with psycopg.connect(self.dsn, connect_timeout=2):
                    return self.topology()
            except psycopg.Error:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
        raise NotReady(f"local server not accepting connections within {timeout:.0f}s")

    def switchover(self, leader, candidate, timeout):
        raise AssertionError("not used")


class NoEngine:
    """The engine fallback for node sampling answers nothing (the TCP path is used)."""

    def exec(self, node, argv, **kw):
        return subprocess.CompletedProcess(argv, 1, "", "")


@pytest.fixture
def lab_like(restartable_pg, tmp_path):
    """The local server shaped like the lab: database careflow, roles careflow_app / careflow_ro, and
    careflow_admin, which makes the probe tables (CREATE on public, as provisioning grants it)."""
    with psycopg.connect(restartable_pg.dsn, autocommit=True) as conn:
        conn.execute("CREATE ROLE careflow_app LOGIN")
        conn.execute("CREATE ROLE careflow_ro LOGIN")
        conn.execute("CREATE ROLE careflow_admin LOGIN")
        conn.execute("CREATE DATABASE careflow OWNER careflow_app")
    with psycopg.connect(restartable_pg.dsn.rsplit("/", 1)[0] + "/careflow", autocommit=True) as conn:
        conn.execute("GRANT CREATE ON SCHEMA public TO careflow_admin")
    port = restartable_pg.port
    ports = {"CAREFLOW_RW_PORT": port, "CAREFLOW_RO_PORT": port, "CAREFLOW_LOCAL_PG_PORT": port}
    secrets = {key: f"pw-{i}-never-printed" for i, key in enumerate(SECRET_KEYS)}  # trust auth ignores them
    settings = Settings(project_dir=tmp_path, ports=MappingProxyType(ports), secrets=MappingProxyType(secrets))
    return restartable_pg, settings


def test_runner_measures_a_crash_and_restart_and_writes_a_report(lab_like, tmp_path):
    pg, settings = lab_like
    fault = Fault(
        name="local-crash",
        title="crash of the local server",
        description="pg_ctl stop -m immediate, held 3 s, then started again.",
        pick=lambda snap: ("local",),
        inject=lambda ctx, t: pg.stop("immediate") or "pg_ctl stop -m immediate",
        heal=lambda ctx, t: pg.start() or "pg_ctl start",
        hold=Hold(min_s=3.0, max_s=3.0),
        expects_failover=False,
    )
    control = OneNodeControl(pg.dsn)
    lines: list[str] = []
    options = DrillOptions(
        preset="fast",
        synchronous=False,
        healthy_timeout_s=scaled(30),
        recovery_timeout_s=scaled(60),
        tail_s=1.0,
        max_run_s=scaled(120),
    )
    run = run_drill(fault, settings, NoEngine(), control, options, lines.append)

    assert control.calls == [("preset", "fast"), ("synchronous_mode", False)]
    a = run.analysis
    assert a.write_outage.interrupted and a.write_outage.recovered
    assert a.write_outage.seconds >= 3.0  # held down 3 s
    assert a.write_outage.seconds <= 3.0 + scaled(15)
    assert a.read_outage.interrupted and a.read_outage.recovered
    assert a.lost_writes == ()
    assert a.split_brain == ()
    assert a.new_primary is None and a.phases[0].name == "in-place recovery (no leader change)"
    assert run.recovered and run.heal_at is not None and run.heal_at - run.fault_at >= 3.0
    assert any("injecting crash of the local server" in line for line in lines)
    assert any(line.startswith("[local-crash +") and "done: write outage" in line for line in lines)

    out = write_report(run, tmp_path / "reports", settings.secrets)
    data = json.loads((out / "result.json").read_text())
    assert data["acked_writes"] == a.acked_writes > 20
    assert data["lost_acked_writes"] == 0
    # The set check read the real table: nothing invented; the commits cut by the crash are ambiguous.
    counts = data["set_check"]["counts"]
    assert data["set_check"]["anomalies"] == 0 and counts["ok"] == a.acked_writes
    assert counts["ambiguous_present"] + counts["ambiguous_absent"] == data["ambiguous_writes"]
    assert data["split_brain_by_writes"] is None  # per-node writers are off by default
    assert (out / "timeline.png").stat().st_size > 1000
    text = (out / "report.md").read_text() + (out / "result.json").read_text()
    assert not any(v in text for v in settings.secrets.values())


def test_runner_heals_even_when_the_fault_fails_half_way(lab_like):
    """An injector that breaks the server and then raises must not leave the server broken."""
    pg, settings = lab_like

    def half_way(ctx, targets):
        pg.stop("immediate")
        raise RuntimeError("injector fell over after breaking things")

    fault = Fault(
        name="half-way",
        title="a fault that fails half-way",
        description="stops the server, then raises",
        pick=lambda snap: ("local",),
        inject=half_way,
        heal=lambda ctx, t: pg.start() or "pg_ctl start",
        hold=Hold(min_s=0.0, max_s=5.0),
        expects_failover=False,
    )
    options = DrillOptions(synchronous=False, healthy_timeout_s=scaled(30), max_run_s=scaled(60))
    with pytest.raises(RuntimeError, match="fell over"):
        run_drill(fault, settings, NoEngine(), OneNodeControl(pg.dsn), options)
    with psycopg.connect(pg.dsn, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_runner_with_per_node_writers_reports_the_node_observed_and_no_split_brain(lab_like, tmp_path):
    """The wiring of the per-node writers, against a real server: it leads throughout, so its own
    acknowledged writes are never split brain, and the 3 s it was down are missing from its coverage."""
    pg, settings = lab_like
    fault = Fault(
        name="local-crash",
        title="crash of the local server",
        description="pg_ctl stop -m immediate, held 3 s, then started again.",
        pick=lambda snap: ("local",),
        inject=lambda ctx, t: pg.stop("immediate") or "pg_ctl stop -m immediate",
        heal=lambda ctx, t: pg.start() or "pg_ctl start",
        hold=Hold(min_s=3.0, max_s=3.0),
        expects_failover=False,
    )
    options = DrillOptions(
        synchronous=False,
        healthy_timeout_s=scaled(30),
        recovery_timeout_s=scaled(60),
        tail_s=1.0,
        max_run_s=scaled(120),
        node_writers=True,
    )
    run = run_drill(fault, settings, NoEngine(), OneNodeControl(pg.dsn), options)
    node_writes = run.recording.node_writes
    assert {"acked", "unreachable"} <= {w.outcome for w in node_writes}
    judged = run.analysis.write_split_brain
    assert judged is not None and judged.acknowledged == ()
    assert judged.leader_known > 0.5
    window_from, window_until = run.recording.observed_window
    assert run.recording.started_at < window_from < window_until < run.recording.stopped_at
    span = window_until - window_from
    assert 0.2 < judged.coverage["local"] <= 1.0 - 2.5 / span, "down for 3 s: not observed then"
    assert any(v.target.startswith("no write acknowledged on a node") and v.ok for v in run.verdicts)
    data = json.loads((write_report(run, tmp_path / "reports", settings.secrets) / "result.json").read_text())
    assert data["split_brain_by_writes"]["acknowledged_count"] == 0
    assert data["split_brain_by_writes"]["coverage"]["local"] == pytest.approx(judged.coverage["local"])
