"""Failover drills against the real lab cluster, read as scenarios with deadlines.

Each test breaks the healthy cluster on purpose through the same runner the
CLI uses, writes its report under ``reports/drills/``, and asserts what a DBA
is asked after an incident: were writes back within the deadline, was any
acknowledged write lost, were there ever two writable primaries, and did the
old primary come back as a replica by itself.

Needs the suite fixtures ``cluster`` (yields the Settings of a healthy
cluster) and ``engine`` (the container engine).

- CI subset (switchover, the zero-error switchover through PgBouncer, primary
  node loss, primary partition, loss of the balancer holding the VIP, named
  ``test_ci_*``): what ``careflow-ha test`` runs by default;
- longer suite: ``CAREFLOW_DRILL_SUITE=long careflow-ha test -m drill`` (all
  of them; the repeated test runs CAREFLOW_DRILL_REPEATS drills, 30 by default).

Deadlines here are generous safety bounds, scaled for slow machines; the
issue's performance targets (e.g. node loss <= 22 s) are measured and judged
in the drill reports and by ``careflow-ha drill compare``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import psycopg
import pytest

from careflow_ha.cli.common import haproxy_preset_switcher
from careflow_ha.cluster.patroni import PatroniApi
from careflow_ha.cluster.pooler import lab_poolers
from careflow_ha.cluster.switchover import paused_poolers
from careflow_ha.drills.balancer import BACK_IN_VRRP_TARGET_S
from careflow_ha.drills.control import PatroniRestControl
from careflow_ha.drills.faults import FAULTS, get_fault
from careflow_ha.drills.report import write_report
from careflow_ha.drills.runner import DrillOptions, DrillRun, run_drill
from careflow_ha.drills.targets import (
    FAILSAFE_WRITE_STALL_S,
    POOLED_SWITCHOVER_STALL_S,
    POOLED_WAY,
    ROTATION_STALL_S,
    WRITE_OUTAGE_TARGETS_S,
)
from careflow_ha.lab.vip import vip_holders
from careflow_ha.load.background import drill_background
from careflow_ha.provision.base import LAB_INVENTORY
from careflow_ha.provision.certificates import tls_dir
from careflow_ha.provision.inventory import load_inventory
from careflow_ha.provision.listeners import file_fingerprint, read_served, tls_listeners
from careflow_ha.settings import LB_NODES, Settings
from tests.plugins.timeouts import scaled, wait_until

pytestmark = pytest.mark.drill

REJOIN_DEADLINE_S = 60.0  # old primary streaming again after healing (issue target)
LOAD_USERS = 8  # Locust's EMR users behind the rotation drills (--under-load)


@pytest.fixture(scope="module")
def control(cluster: Settings) -> PatroniRestControl:
    # Both halves of a preset: Patroni's timing (REST) and HAProxy's checks (re-rendered once).
    return PatroniRestControl(PatroniApi(cluster), haproxy_preset=haproxy_preset_switcher(cluster))


@pytest.fixture
def drill(cluster: Settings, engine, control) -> Callable[..., DrillRun]:
    """Run one drill through the real runner, print its progress, and keep its report."""

    def run(name: str, preset: str = "fast", synchronous: bool = True, via: str | None = None,
            under_load: bool = False, node_writers: bool = False, failsafe: bool | None = None) -> DrillRun:
        options = DrillOptions(
            preset=preset,
            synchronous=synchronous,
            node_writers=node_writers,
            failsafe_mode=failsafe,
            healthy_timeout_s=scaled(180),
            recovery_timeout_s=scaled(180),
            background=drill_background(cluster, users=LOAD_USERS, progress=print) if under_load else None,
        )
        result = run_drill(get_fault(name), cluster.with_via(via), engine, control, options, print)
        folder = write_report(result, cluster.reports_dir, cluster.secrets)
        print("report:", folder)
        run.folders.append(str(folder))
        return result

    run.folders = []  # type: ignore[attr-defined]  # each run's report folder, in run order (series reports)
    return run


def assert_no_invented_writes(run: DrillRun) -> None:
    """Whatever the replication mode: no row the writer never sent, none twice, none it was told failed."""
    check = run.analysis.set_check
    assert check is not None, "the probe rows could not be read back after healing"
    assert check.unexpected == (), f"rows never attempted: {check.unexpected[:20]}"
    assert check.duplicated == (), f"rows present twice: {check.duplicated[:20]}"
    assert check.refused_present == (), f"rows the server refused, present anyway: {check.refused_present[:20]}"


def assert_safe(run: DrillRun) -> None:
    """The two things a failover must never do, and the cluster healing itself."""
    a = run.analysis
    assert a.lost_writes == (), f"acknowledged writes lost: {a.lost_writes}"
    assert_no_invented_writes(run)
    assert a.split_brain == (), f"two writable primaries: {a.split_brain}"
    assert run.recovered, f"cluster not healthy again: {run.recovery_problem}"
    assert a.acked_writes > 0


def assert_writes_back_within(run: DrillRun, seconds: float) -> None:
    out = run.analysis.write_outage
    assert out.recovered, "writes through 5000 never resumed"
    assert out.seconds <= scaled(seconds), f"write outage {out.seconds:.1f}s > {scaled(seconds):.0f}s"


def assert_failed_over_and_rejoined(run: DrillRun, cluster: Settings) -> None:
    """A new primary took over, and the old one streams from it again, as PostgreSQL itself says."""
    a = run.analysis
    assert a.new_primary is not None and a.new_primary != a.old_primary, "no failover happened"
    assert a.rejoin_seconds is not None, "old primary never streamed again while observed"
    assert a.rejoin_seconds <= scaled(REJOIN_DEADLINE_S), f"old primary rejoined after {a.rejoin_seconds:.0f}s"

    def old_primary_in_recovery() -> bool:
        with psycopg.connect(cluster.node_dsn(a.old_primary), connect_timeout=3) as conn:
            row = conn.execute("SELECT pg_is_in_recovery(), status FROM pg_stat_wal_receiver").fetchone()
            return bool(row and row[0] and row[1] == "streaming")

    wait_until(old_primary_in_recovery, 30, what=f"{a.old_primary} in recovery and streaming")


#: How late a rule can see a condition (go pending) after it starts: the next scrape, its timeout, and the
#: next evaluation (roles/prometheus: scrape and evaluation every 5 s, scrape timeout 4 s).
ALERT_DETECTION_S = 5.0 + 4.0 + 5.0


def assert_server_view(run: DrillRun, raises: str | None = None) -> None:
    """Prometheus answered for the run, every panel has samples (the exporters' metric names are real), and
    the rule ``raises`` went pending about a target within its detection time x 1.5 of the fault."""
    view = run.server
    assert view is not None and view.available, f"no server view: {view.note if view else 'not collected'}"
    empty = [p.key for p, result in view.panels if not result.series]
    assert empty == [], f"panels without samples: {empty}"
    if raises is not None:
        span = view.raised(raises, run.targets)
        assert span is not None, f"{raises} was never pending or firing about {run.targets}"
        first = span.pending_at if span.pending_at is not None else span.firing_at
        took = (first or 0.0) - run.fault_at
        assert took <= scaled(ALERT_DETECTION_S * 1.5), f"{raises} raised {took:.0f} s after the fault"


def assert_same_primary(run: DrillRun) -> None:
    assert run.analysis.new_primary is None, f"unexpected failover to {run.analysis.new_primary}"


def test_ci_baseline_exactly_one_node_accepts_writes(cluster, control):
    """Baseline for the split-brain probe: exactly one node is writable when healthy."""
    snap = control.wait_healthy(scaled(120))
    writable = []
    for m in snap.members:
        with psycopg.connect(cluster.node_dsn(m.name), connect_timeout=3) as conn:
            if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                writable.append(m.name)
    assert writable == [snap.leader]


# -- CI subset ---------------------------------------------------------------------------------------------------------


def test_ci_switchover_moves_the_primary_without_losing_a_write(drill, cluster):
    run = drill("switchover")
    assert_safe(run)
    # The published target x 1.5: 1.53-1.72 s on this box once HAProxy retried every 250 ms (2026-12-02).
    assert_writes_back_within(run, WRITE_OUTAGE_TARGETS_S["switchover"] * 1.5)
    assert_failed_over_and_rejoined(run, cluster)
    assert run.analysis.new_primary == run.targets[1], "the sync standby was the candidate"
    assert_server_view(run)
    paging = [f"{a.alertname} on {a.target}" for a in run.server.firing("critical")]
    assert paging == [], f"a planned switchover paged: {paging}"


def test_ci_zero_error_switchover_through_the_pooler_fails_no_transaction(drill, cluster):
    """Issue 13: through 6432/6433 a planned switchover is a delay, never an error, and the poolers resume."""
    run = drill("switchover", via=POOLED_WAY)
    assert_safe(run)
    a = run.analysis
    assert (a.failed_writes, a.failed_reads) == (0, 0), f"{a.failed_writes} write(s), {a.failed_reads} read(s) failed"
    for what, out in (("writer", a.write_outage), ("reader", a.read_outage)):
        assert out.recovered and out.seconds <= POOLED_SWITCHOVER_STALL_S * 1.5, f"{what} stalled {out.seconds}s"
    assert run.figures.get("pooler_held_s") is not None, "the switchover did not go through the poolers"
    assert_failed_over_and_rejoined(run, cluster)
    assert paused_poolers(lab_poolers(cluster)) == [], "a pooler was left paused"


def test_ci_primary_node_loss_promotes_a_replica_and_the_old_primary_rejoins(drill, cluster):
    run = drill("primary-node-loss")
    assert_safe(run)
    # The published target x 1.5 (issue 18): measured 21.8-26.9 s on this box (bench routing, 2026-12-01).
    assert_writes_back_within(run, WRITE_OUTAGE_TARGETS_S["primary-node-loss"] * 1.5)
    assert_failed_over_and_rejoined(run, cluster)
    assert run.analysis.haproxy_switch_at is not None, "no write was ever acknowledged by the new primary via 5000"
    # Pending +9 s (lab) and +11 s (CI rehearsal) after the kill; it fired +24 s once, and stayed pending when
    # the node came back within its `for: 15s` (2026-12-03).
    assert_server_view(run, raises="CareflowPatroniMemberDown")


def test_ci_primary_partition_never_leaves_two_writable_primaries(drill, cluster):
    run = drill("primary-partition")
    assert_safe(run)
    # The published target x 1.5 (issue 18), in place of the 60 s bound a Patroni-default run also met.
    assert_writes_back_within(run, WRITE_OUTAGE_TARGETS_S["primary-partition"] * 1.5)
    assert_failed_over_and_rejoined(run, cluster)
    isolated = run.targets[0]
    samples = [s for s in run.recording.node_samples if s.node == isolated and s.at > run.fault_at]
    assert any(s.via == "exec" for s in samples), "the isolated node was not sampled through its unix socket"


def assert_vip_moved_and_lost_balancer_is_backup(run: DrillRun, engine) -> None:
    """The VIP went to the other balancer, the lost one came back in VRRP, and one balancer holds the VIP now."""
    lost, f = run.targets[0], run.figures
    assert f["vip_takeover_by"] not in (None, lost), f"the VIP never moved off {lost}: {f}"
    assert f["lost_balancer_back_s"] is not None, f"{lost} never came back in VRRP"
    assert f["lost_balancer_back_s"] <= scaled(BACK_IN_VRRP_TARGET_S)
    now = vip_holders(engine, LB_NODES, f["vip"])
    assert len(now) == 1, f"VIP held by {now or 'nobody'} after the drill"
    if f["lost_balancer_back_state"] == "BACKUP":
        assert now == (f["vip_takeover_by"],), f"the VIP left {f['vip_takeover_by']} again: now on {now}"


def test_ci_balancer_loss_moves_the_vip_within_the_target_and_loses_no_write(drill, engine):
    """Killing the balancer that holds the VIP: same address, writes back within the target x 1.5, none lost."""
    run = drill("balancer-loss")
    assert_safe(run)
    assert_same_primary(run)  # a balancer fault must never cause a database failover
    target = WRITE_OUTAGE_TARGETS_S["balancer-loss"]
    out = run.analysis.write_outage
    assert out.recovered and out.seconds <= target * 1.5, f"write outage {out.seconds}s > {target * 1.5:g}s"
    assert run.analysis.read_outage.recovered, "reads through the VIP's 5001 never resumed"
    assert_vip_moved_and_lost_balancer_is_backup(run, engine)
    # nopreempt: the killed balancer comes back as BACKUP and leaves the VIP where it is.
    assert run.figures["lost_balancer_back_state"] == "BACKUP"


def assert_rotation_failed_nothing(run: DrillRun) -> None:
    """Issue 15's rotation target, under Locust load: 0 failed transactions (probes and load), no stall over the
    target, no failover, nobody paged, and every TLS listener serving its host's new certificate."""
    assert_safe(run)
    assert_same_primary(run)
    a, f = run.analysis, run.figures
    assert (a.failed_writes, a.failed_reads) == (0, 0), f"{a.failed_writes} write(s), {a.failed_reads} read(s) failed"
    assert f.get("load_requests", 0) > 0, f"the background load ran no request: {f}"
    assert f["load_failures"] == 0, f"{f['load_failures']} load request(s) failed; see {f['load_report']}"
    for what, out in (("writer", a.write_outage), ("reader", a.read_outage)):
        assert out.recovered and out.seconds <= ROTATION_STALL_S * 1.5, f"{what} stalled {out.seconds}s"
    assert_server_view(run)
    paging = [f"{x.alertname} on {x.target}" for x in run.server.firing("critical")]
    assert paging == [], f"a certificate rotation paged: {paging}"


def assert_every_listener_serves_the_new_certificates(before: dict[str, str]) -> None:
    """Asked again here, not trusted from the rotation's own check: every listener serves the host's file, and
    every file is new."""
    inv = load_inventory(LAB_INVENTORY, {})
    directory = tls_dir(inv)
    now = {host: file_fingerprint(directory / f"{host}.crt") for host in inv.hosts}
    assert all(now[h] != before[h] for h in now), "a host kept its certificate"
    served = read_served(tls_listeners(inv), directory)
    wrong = [f"{s.listener.where}: {s.error or s.serial}" for s in served if s.fingerprint != now[s.listener.host]]
    assert wrong == [] and len(served) >= 20, wrong


def _host_certificates() -> dict[str, str]:
    inv = load_inventory(LAB_INVENTORY, {})
    return {host: file_fingerprint(tls_dir(inv) / f"{host}.crt") for host in inv.hosts}


def test_ci_certificate_rotation_under_load_fails_no_transaction(drill):
    before = _host_certificates()
    run = drill("cert-rotation", under_load=True)
    assert_rotation_failed_nothing(run)
    assert_every_listener_serves_the_new_certificates(before)


def test_ci_ca_rotation_under_load_trusts_both_then_only_the_new_ca_and_fails_nothing(drill):
    inv = load_inventory(LAB_INVENTORY, {})
    old_ca = file_fingerprint(tls_dir(inv) / "ca.crt")
    before = _host_certificates()
    run = drill("ca-rotation", under_load=True)
    assert_rotation_failed_nothing(run)
    assert [k for k in run.figures if k.startswith("rotation_pass_")] == [f"rotation_pass_{i}_s" for i in (1, 2, 3)]
    assert file_fingerprint(tls_dir(inv) / "ca.crt") != old_ca
    assert_every_listener_serves_the_new_certificates(before)


#: The CI soak (issue 18): 5 minutes, seed 2 draws eight faults of both layers (a balancer kill, a switchover,
#: etcd quorum loss, a primary freeze, a partition, Patroni and postgres crashes, a balancer partition).
CI_SOAK_MINUTES, CI_SOAK_SEED = 5.0, 2
#: The faults the CI soak draws from, so that its seed keeps drawing the same eight: the catalogue's newer faults
#: (one-way and DCS-only partitions, packet loss, the etcd leader, an I/O stall) run in the long soak first.
CI_SOAK_DRAWS = frozenset({
    "switchover", "postgres-crash", "patroni-crash", "primary-node-loss", "primary-node-freeze", "primary-partition",
    "replica-loss", "sync-standby-loss", "etcd-member-loss", "etcd-quorum-loss", "balancer-loss", "balancer-partition",
})


def test_ci_short_soak_loses_no_acknowledged_write_and_never_splits_the_brain(cluster, engine, control):
    from careflow_ha.drills.nemesis import plan_soak
    from careflow_ha.drills.soak import run_soak
    from careflow_ha.drills.soak_report import write_soak_report

    draws = {name: fault for name, fault in FAULTS.items() if name in CI_SOAK_DRAWS}
    schedule = plan_soak(CI_SOAK_SEED, CI_SOAK_MINUTES, "mixed", draws)
    options = DrillOptions(preset="fast", synchronous=True, node_writers=True, healthy_timeout_s=scaled(180),
                           recovery_timeout_s=scaled(180))
    run = run_soak(schedule, cluster, engine, control, options, print)
    print("report:", write_soak_report(run, cluster.reports_dir, cluster.secrets))
    assert run.anomalies == dict.fromkeys(run.anomalies, 0), run.anomalies
    assert {"lost", "acked_under_foreign_leader"} <= set(run.anomalies)  # both measures were taken
    injected = [f.planned.fault for f in run.injected]
    # A fault is skipped only when its target cannot be picked yet (the cluster still recovering); most must run.
    assert len(injected) >= len(schedule.faults) - 2, [(f.planned.fault, f.problem) for f in run.faults]
    assert all(f.writes_resumed for f in run.injected), [(f.planned.fault, f.write_outage_s) for f in run.injected]
    assert run.analysis.acked_writes > 1000


# -- longer suite ------------------------------------------------------------------------------------------------------


def test_thirty_minute_soak_under_load_loses_nothing(cluster, engine, control):
    """`test --long`'s soak (issue 18): 30 minutes of every kind of fault under Locust, judged like the CI one."""
    from careflow_ha.drills.nemesis import plan_soak
    from careflow_ha.drills.soak import run_soak
    from careflow_ha.drills.soak_report import write_soak_report

    schedule = plan_soak(int(os.environ.get("CAREFLOW_SOAK_SEED", "1")), 30.0, "mixed", FAULTS)
    options = DrillOptions(preset="fast", synchronous=True, node_writers=True, healthy_timeout_s=scaled(180),
                           recovery_timeout_s=scaled(180),
                           background=drill_background(cluster, users=LOAD_USERS, max_seconds=2400, progress=print))
    run = run_soak(schedule, cluster, engine, control, options, print)
    print("report:", write_soak_report(run, cluster.reports_dir, cluster.secrets))
    assert run.anomalies == dict.fromkeys(run.anomalies, 0), run.anomalies
    assert len(run.injected) >= 0.8 * len(schedule.faults), [(f.planned.fault, f.problem) for f in run.faults]


def test_postgres_crash_on_the_primary_recovers_writes(drill, cluster):
    run = drill("postgres-crash")
    assert_safe(run)
    assert_writes_back_within(run, 30)
    if run.analysis.new_primary is not None:  # either outcome is correct; a failover must be complete
        assert_failed_over_and_rejoined(run, cluster)


def test_patroni_crash_on_the_primary_keeps_the_leader(drill):
    run = drill("patroni-crash")
    assert_safe(run)
    assert_same_primary(run)
    assert_writes_back_within(run, 10)


def test_replica_loss_does_not_stop_writes_and_reads_move_on(drill):
    run = drill("replica-loss")
    assert_safe(run)
    assert_same_primary(run)
    assert_writes_back_within(run, 3)
    assert run.analysis.read_outage.recovered, "reads through 5001 never resumed"


def test_sync_standby_loss_hands_the_sync_role_to_the_other_replica(drill, control):
    run = drill("sync-standby-loss")
    assert_safe(run)
    assert_same_primary(run)
    assert_writes_back_within(run, 60)
    lost = run.targets[0]
    during = [s for s in run.recording.snapshots if run.fault_at < s.at < (run.heal_at or s.at)]
    assert any(s.sync_standbys and lost not in s.sync_standbys for s in during), "no other sync standby was named"


def test_one_etcd_member_loss_keeps_the_leader(drill):
    run = drill("etcd-member-loss")
    assert_safe(run)
    assert_same_primary(run)
    assert_writes_back_within(run, 10)


def test_primary_freeze_fails_over_and_the_thawed_node_never_accepts_writes(drill, cluster):
    run = drill("primary-node-freeze")
    assert_safe(run)
    assert_writes_back_within(run, 60)
    assert_failed_over_and_rejoined(run, cluster)


def test_balancer_partition_moves_the_vip_and_never_loses_a_write(drill, engine):
    run = drill("balancer-partition")
    assert_safe(run)
    assert_same_primary(run)
    assert run.analysis.write_outage.recovered and run.analysis.read_outage.recovered
    assert_vip_moved_and_lost_balancer_is_backup(run, engine)


def test_etcd_quorum_loss_never_makes_two_primaries_and_recovers(drill):
    run = drill("etcd-quorum-loss")
    assert_safe(run)
    assert run.analysis.write_outage.recovered


def test_async_failover_reports_lost_writes_and_restores_synchronous_mode(drill, control):
    run = drill("primary-node-loss", synchronous=False)
    assert run.analysis.lost_writes is not None, "lost writes could not be counted"
    assert_no_invented_writes(run)  # async may lose acknowledged writes, never invent one
    assert run.analysis.split_brain == ()
    assert run.recovered
    assert control.synchronous_mode() is True, "synchronous_mode was not restored after the async drill"


def test_repeated_failovers_never_lose_an_acknowledged_write(drill, cluster):
    """The issue's safety target: many drills in synchronous mode, zero lost writes and zero split brain; the
    series report gives each drill's p50/p95 against its target."""
    from careflow_ha.drills.series import render_lines, summarize, write_series_report

    repeats = int(os.environ.get("CAREFLOW_DRILL_REPEATS", "30"))
    names = ["switchover", "primary-node-loss", "primary-partition"]
    runs = [drill(names[i % len(names)]) for i in range(repeats)]
    print("\n".join(render_lines(summarize(runs))))
    print("series report:", write_series_report(runs, drill.folders, cluster.reports_dir,
                                                cluster.secrets))
    assert sum(len(r.analysis.lost_writes or ()) for r in runs) == 0
    assert all(r.analysis.lost_writes is not None for r in runs)
    assert sum(r.analysis.set_check.anomalies for r in runs) == 0, "unexpected, duplicated or refused-yet-present"
    assert sum(len(r.analysis.split_brain) for r in runs) == 0
    assert all(r.recovered for r in runs)


# -- the wider catalogue (issue 18) ------------------------------------------------------------------------------------


def assert_no_write_on_a_deposed_primary(run: DrillRun) -> None:
    """The per-node writers' measure: nothing acknowledged on a node while another held the leader key."""
    by_writes = run.analysis.write_split_brain
    assert by_writes is not None, "the per-node writers did not run"
    assert by_writes.acknowledged == (), f"acknowledged on a deposed primary: {by_writes.acknowledged[:10]}"


def test_etcd_leader_loss_keeps_the_primary_and_etcd_elects_another_leader(drill):
    run = drill("etcd-leader-loss")
    assert_safe(run)
    assert_same_primary(run)
    assert_writes_back_within(run, 10)  # as for any etcd member's loss
    assert run.figures["etcd_leader_after"] not in (None, run.targets[0]), run.figures


@pytest.mark.parametrize("name", ["primary-inbound-partition", "primary-outbound-partition", "dcs-partition"])
def test_a_primary_cut_off_one_way_or_from_the_dcs_only_is_replaced_and_never_acknowledges_a_write(
        drill, cluster, name):
    run = drill(name, node_writers=True)
    assert_safe(run)
    assert_no_write_on_a_deposed_primary(run)
    assert_failed_over_and_rejoined(run, cluster)
    assert_writes_back_within(run, 1.5 * WRITE_OUTAGE_TARGETS_S[name])


#: A thawed postmaster is still a primary until its Patroni's next HA loop demotes it (fast: loop_wait 2 s); role
#: sampling may see it there once (measured: a single answer, 0.5 s after the thaw), with a margin of 1.5x.
THAWED_PRIMARY_WINDOW_S = 1.5 * (2.0 + 1.0)


def test_an_io_stalled_primary_is_replaced_and_once_thawed_acknowledges_nothing(drill, cluster):
    run = drill("primary-io-stall", node_writers=True)
    a = run.analysis
    assert a.lost_writes == (), f"acknowledged writes lost: {a.lost_writes}"
    assert_no_invented_writes(run)
    assert_no_write_on_a_deposed_primary(run)  # what matters: synchronous replication held its commits
    assert run.recovered, run.recovery_problem
    assert_failed_over_and_rejoined(run, cluster)
    assert_writes_back_within(run, 1.5 * WRITE_OUTAGE_TARGETS_S["primary-io-stall"])
    # Role sampling may see the thawed old primary claim the role once, between the thaw and its demotion; never
    # before the thaw (it was frozen) and never later than one HA loop after it.
    assert run.heal_at is not None
    outside = [iv for iv in a.split_brain
               if iv.start < run.heal_at or iv.end > run.heal_at + scaled(THAWED_PRIMARY_WINDOW_S)]
    assert outside == [], f"two primaries outside the thaw window: {outside}"


def test_packet_loss_on_the_primary_slows_writes_but_neither_fails_over_nor_loses_one(drill):
    run = drill("primary-packet-loss", node_writers=True)
    assert_safe(run)
    assert_no_write_on_a_deposed_primary(run)
    assert_same_primary(run)
    assert_writes_back_within(run, 1.5 * WRITE_OUTAGE_TARGETS_S["primary-packet-loss"])


@pytest.mark.parametrize("name", ["dcs-partition", "etcd-quorum-loss"])
def test_failsafe_mode_keeps_a_primary_that_lost_only_the_dcs_and_its_writes_go_on(drill, control, name):
    """Patroni's failsafe_mode off and on, in one run: off, the primary demotes itself (and for a DCS-only
    partition a replica promotes); on, it reaches every member over REST and keeps serving."""
    off = drill(name, failsafe=False, node_writers=True)
    on = drill(name, failsafe=True, node_writers=True)
    for run in (off, on):
        assert_safe(run)
        assert_no_write_on_a_deposed_primary(run)
    assert control.failsafe_mode() is False, "failsafe_mode was not restored"
    assert_same_primary(on)
    assert_writes_back_within(on, 1.5 * FAILSAFE_WRITE_STALL_S)
    if name == "dcs-partition":
        assert off.analysis.new_primary not in (None, off.analysis.old_primary), "no failover without failsafe"
    else:  # nobody may promote without a DCS; the primary stops taking writes instead
        assert_same_primary(off)
    assert off.analysis.write_outage.seconds > 3 * on.analysis.write_outage.seconds, (
        off.analysis.write_outage.seconds, on.analysis.write_outage.seconds)
