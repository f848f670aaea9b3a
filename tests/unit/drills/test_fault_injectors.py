"""Fault injectors: the exact commands each fault runs, with subprocess mocked at the boundary.

The fake below stands in for the container engine and the host's nsenter /
iptables: it keeps just enough state (container states, inserted rules) to
check that heal really undoes inject.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

import pytest

import careflow_ha.lab.engine as engine_mod
from careflow_ha.cluster.model import ClusterSnapshot, Member
from careflow_ha.drills.faults import FAULTS, FaultContext, get_fault
from careflow_ha.errors import CommandFailed, NotReady, UsageError
from careflow_ha.lab.engine import Engine

HEALTHY = ClusterSnapshot(
    0.0,
    (
        Member("pg1", "leader", "running", 1),
        Member("pg2", "sync_standby", "streaming", 1, 0),
        Member("pg3", "replica", "streaming", 1, 0),
    ),
)


@dataclass
class FakeHost:
    """subprocess.run for podman and nsenter/iptables, with container states and iptables rules."""

    states: dict[str, str] = field(default_factory=lambda: {f"careflow-pg{i}": "running" for i in (1, 2, 3)})
    rules: list[tuple[str, ...]] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)
    postmaster_pid: str = "4242"

    def __call__(self, argv, **kw):
        argv = list(argv)
        self.calls.append(argv)
        out, rc = "", 0
        if argv[0] == "podman":
            verb, name = argv[1], argv[-1]
            if verb == "inspect":
                out = "31337" if "{{.State.Pid}}" in argv else self.states[name]
            elif verb == "kill":
                self.states[name] = "exited"
            elif verb == "start":
                self.states[name] = "running"
            elif verb == "pause":
                self.states[name] = "paused"
            elif verb == "unpause":
                self.states[name] = "running"
            elif verb == "exec":
                inner = argv[3:]
                if inner[0] == "head":
                    out = self.postmaster_pid + "\n"
                elif inner[:2] == ["systemctl", "show"]:
                    out = "777\n"
        elif argv[0] == "nsenter":
            action, rule = argv[7], tuple(argv[8:])
            if action == "-I":
                self.rules.append(rule)
            elif action == "-D":
                self.rules.remove(rule)
            elif action == "-C":
                rc = 0 if rule in self.rules else 1
        return subprocess.CompletedProcess(argv, rc, out, "")

    def execs(self) -> list[list[str]]:
        return [c[3:] for c in self.calls if c[:2] == ["podman", "exec"]]

    def verbs(self) -> list[tuple[str, str]]:
        return [(c[1], c[-1]) for c in self.calls if c[0] == "podman" and c[1] != "exec" and "{{.State.Pid}}" not in c]


class FakeControl:
    def __init__(self) -> None:
        self.switchovers: list[tuple[str, str | None]] = []

    def switchover(self, leader, candidate, timeout):
        self.switchovers.append((leader, candidate))


@pytest.fixture
def host(monkeypatch) -> FakeHost:
    fake = FakeHost()
    monkeypatch.setattr(engine_mod.subprocess, "run", fake)
    return fake


@pytest.fixture
def ctx(host) -> FaultContext:
    return FaultContext(engine=Engine("podman", ("podman",), ("podman-compose",)), control=FakeControl())


def test_catalogue_covers_the_failure_model():
    assert list(FAULTS) == [
        "switchover",
        "postgres-crash",
        "patroni-crash",
        "primary-node-loss",
        "primary-node-freeze",
        "primary-partition",
        "replica-loss",
        "sync-standby-loss",
        "etcd-member-loss",
        "etcd-quorum-loss",
        "cert-rotation",
        "ca-rotation",
        "etcd-leader-loss",
        "primary-inbound-partition",
        "primary-outbound-partition",
        "dcs-partition",
        "primary-packet-loss",
        "primary-io-stall",
        "balancer-loss",
        "balancer-partition",
    ]
    assert {f.name for f in FAULTS.values() if f.ci} == {
        "switchover", "primary-node-loss", "primary-partition", "cert-rotation", "ca-rotation", "balancer-loss"
    }
    # Maintenance, not a failure: planned (pages nobody), and never drawn by a soak's nemesis.
    assert {f.name for f in FAULTS.values() if f.planned and not f.nemesis} == {"cert-rotation", "ca-rotation"}
    for fault in FAULTS.values():
        assert fault.description and fault.title
        assert fault.hold.max_s >= fault.hold.min_s >= 0


def test_unknown_drill_lists_the_valid_names():
    with pytest.raises(UsageError, match="valid drills: switchover, postgres-crash"):
        get_fault("primary-meltdown")


@pytest.mark.parametrize(
    ("name", "targets"),
    [
        ("switchover", ("pg1", "pg2")),
        ("postgres-crash", ("pg1",)),
        ("patroni-crash", ("pg1",)),
        ("primary-node-loss", ("pg1",)),
        ("primary-node-freeze", ("pg1",)),
        ("primary-partition", ("pg1",)),
        ("replica-loss", ("pg3",)),
        ("sync-standby-loss", ("pg2",)),
        ("etcd-member-loss", ("pg1",)),
        ("etcd-quorum-loss", ("pg2", "pg3")),
    ],
)
def test_targets_are_picked_from_the_topology(name, targets):
    assert FAULTS[name].pick(HEALTHY) == targets


@pytest.mark.parametrize("name", ["switchover", "primary-node-loss", "etcd-quorum-loss"])
def test_no_leader_means_not_ready(name):
    leaderless = ClusterSnapshot(0.0, tuple(m for m in HEALTHY.members if m.name != "pg1"))
    with pytest.raises(NotReady):
        FAULTS[name].pick(leaderless)


def test_sync_standby_loss_needs_synchronous_mode():
    async_cluster = ClusterSnapshot(
        0.0, tuple(Member(m.name, m.role.replace("sync_standby", "replica"), m.state, 1) for m in HEALTHY.members)
    )
    with pytest.raises(NotReady, match="synchronous_mode"):
        FAULTS["sync-standby-loss"].pick(async_cluster)
    assert FAULTS["replica-loss"].pick(async_cluster) == ("pg2",)


def test_switchover_goes_through_the_control_api(ctx, host):
    note = FAULTS["switchover"].inject(ctx, ("pg1", "pg2"))
    assert ctx.control.switchovers == [("pg1", "pg2")]
    assert "pg1 -> pg2" in note
    assert host.calls == []  # no engine command for a planned switchover


def test_postgres_crash_kills_the_postmaster_from_its_pid_file(ctx, host):
    FAULTS["postgres-crash"].inject(ctx, ("pg1",))
    assert host.execs() == [["head", "-n", "1", "/var/lib/postgresql/15/main/postmaster.pid"], ["kill", "-9", "4242"]]
    assert all(c[2] == "careflow-pg1" for c in host.calls)


def test_postgres_crash_refuses_a_garbage_pid(ctx, host):
    host.postmaster_pid = ""
    with pytest.raises(CommandFailed, match="postmaster PID on pg1"):
        FAULTS["postgres-crash"].inject(ctx, ("pg1",))
    assert ["kill", "-9", ""] not in host.execs()


def test_patroni_crash_uses_systemds_main_pid_and_heal_starts_the_unit(ctx, host):
    fault = FAULTS["patroni-crash"]
    fault.inject(ctx, ("pg1",))
    fault.heal(ctx, ("pg1",))
    assert host.execs() == [
        ["systemctl", "show", "--property", "MainPID", "--value", "patroni.service"],
        ["kill", "-9", "777"],
        ["systemctl", "start", "patroni.service"],
    ]


@pytest.mark.parametrize(
    ("name", "target", "inject_verbs", "state_after", "heal_verbs"),
    [
        ("primary-node-loss", "pg1", [("kill", "careflow-pg1")], "exited", [("start", "careflow-pg1")]),
        ("replica-loss", "pg3", [("kill", "careflow-pg3")], "exited", [("start", "careflow-pg3")]),
        ("sync-standby-loss", "pg2", [("kill", "careflow-pg2")], "exited", [("start", "careflow-pg2")]),
        ("primary-node-freeze", "pg1", [("pause", "careflow-pg1")], "paused", [("unpause", "careflow-pg1")]),
    ],
)
def test_container_faults_and_their_heal(ctx, host, name, target, inject_verbs, state_after, heal_verbs):
    fault = FAULTS[name]
    fault.inject(ctx, (target,))
    assert host.verbs() == inject_verbs
    assert host.states[f"careflow-{target}"] == state_after
    host.calls.clear()
    fault.heal(ctx, (target,))
    assert [v for v in host.verbs() if v[0] != "inspect"] == heal_verbs
    assert host.states[f"careflow-{target}"] == "running"


def test_heal_does_not_restart_a_node_that_is_already_running(ctx, host):
    FAULTS["primary-node-loss"].heal(ctx, ("pg1",))
    assert [v for v in host.verbs() if v[0] != "inspect"] == []


def test_partition_drops_all_but_loopback_in_the_nodes_netns_and_heal_removes_it(ctx, host):
    fault = FAULTS["primary-partition"]
    fault.inject(ctx, ("pg1",))
    inserted = [c for c in host.calls if c[0] == "nsenter"]
    assert [c[:7] for c in inserted] == [["nsenter", "-t", "31337", "-n", "iptables", "-w", "5"]] * 2
    assert host.rules == [("INPUT", "!", "-i", "lo", "-j", "DROP"), ("OUTPUT", "!", "-o", "lo", "-j", "DROP")]
    fault.inject(ctx, ("pg1",))  # a doubled injection must still heal completely
    fault.heal(ctx, ("pg1",))
    assert host.rules == []


def test_partition_heal_is_a_no_op_when_nothing_was_inserted(ctx, host):
    FAULTS["primary-partition"].heal(ctx, ("pg1",))
    assert [c[7] for c in host.calls if c[0] == "nsenter"] == ["-C", "-C"]


@pytest.mark.parametrize(("name", "targets"), [("etcd-member-loss", ("pg1",)), ("etcd-quorum-loss", ("pg2", "pg3"))])
def test_etcd_faults_stop_and_start_the_unit_in_each_target(ctx, host, name, targets):
    fault = FAULTS[name]
    fault.inject(ctx, targets)
    fault.heal(ctx, targets)
    nodes = [c[2] for c in host.calls]
    assert host.execs() == [["systemctl", "stop", "etcd.service"]] * len(targets) + [
        ["systemctl", "start", "etcd.service"]
    ] * len(targets)
    assert nodes == [f"careflow-{n}" for n in targets] * 2


def test_a_failing_engine_command_surfaces_as_command_failed(ctx, monkeypatch):
    def failing(argv, **kw):
        return subprocess.CompletedProcess(argv, 125, "", "Error: no container with name careflow-pg1")

    monkeypatch.setattr(engine_mod.subprocess, "run", failing)
    with pytest.raises(CommandFailed, match="no container"):
        FAULTS["primary-node-loss"].inject(ctx, ("pg1",))


def test_switchover_through_the_poolers_is_the_zero_error_one_and_reports_its_hold(host):
    from careflow_ha.cluster.switchover import SwitchoverReport
    from careflow_ha.drills.faults import PooledSwitchover

    asked: list[str | None] = []

    def switch(candidate):
        asked.append(candidate)
        return SwitchoverReport("pg1", "pg2", zero_error=True, steps={"pause": 0.01, "patroni": 1.2}, held_s=1.75,
                                held_by_endpoint_s={"rw": 1.5, "ro": 1.75})

    pooled = PooledSwitchover(switch)
    ctx = FaultContext(engine=Engine("podman", ("podman",), ("podman-compose",)), control=FakeControl(),
                       pooled_switchover=pooled)
    note = FAULTS["switchover"].inject(ctx, ("pg1", "pg2"))
    assert asked == ["pg2"] and ctx.control.switchovers == []  # the pooled path, not Patroni's alone
    assert "zero-error switchover pg1 -> pg2" in note and "held 1.75 s" in note
    seen = FAULTS["switchover"].observe(ctx, ("pg1", "pg2"), 0.0, None, lambda line: None)
    assert seen.figures == {"pooler_held_s": 1.75, "pooler_held_rw_s": 1.5, "pooler_held_ro_s": 1.75,
                            "pooler_step_pause_s": 0.01, "pooler_step_patroni_s": 1.2}


def test_a_plain_switchover_has_no_pooler_figures(ctx, host):
    FAULTS["switchover"].inject(ctx, ("pg1", "pg2"))
    assert FAULTS["switchover"].observe(ctx, ("pg1", "pg2"), 0.0, None, lambda line: None).figures == {}
