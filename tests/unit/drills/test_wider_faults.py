"""The wider fault catalogue (issue 18): one-way, DCS-only and lossy partitions, the etcd leader's loss and an
I/O stall, each with the exact commands it runs and a heal that undoes it (the fake host of
test_fault_injectors stands in for podman and nsenter/iptables)."""

from __future__ import annotations

import json
import subprocess

import pytest

import careflow_ha.lab.engine as engine_mod
from careflow_ha.drills.analysis import Analysis
from careflow_ha.drills.faults import FAULTS, FaultContext, leader_from_etcdctl
from careflow_ha.drills.targets import failover_verdict
from careflow_ha.errors import CommandFailed, NotReady
from careflow_ha.lab.engine import Engine
from tests.unit.drills.test_fault_injectors import HEALTHY, FakeHost

MEMBERS = {"header": {"member_id": 11}, "members": [
    {"ID": 11, "name": "pg1"}, {"ID": 16075987794986071137, "name": "pg2"}, {"ID": 33, "name": "pg3"}]}


def status(leader: int, *members: int) -> list[dict]:
    return [{"Endpoint": f"https://10.0.0.{m % 250}:2379", "Status": {"header": {"member_id": m}, "leader": leader}}
            for m in members]


def etcdctl_output(leader: int) -> str:
    # What `etcdctl member list -w json && etcdctl endpoint status -w json` prints, one document a line.
    return json.dumps(MEMBERS) + "\n" + json.dumps(status(leader, 11, 16075987794986071137, 33))


class Host(FakeHost):
    """The fake host, plus bash scripts run in a node: etcdctl answers per node, and the postmaster's tree."""

    def __init__(self) -> None:
        super().__init__()
        self.etcdctl: dict[str, tuple[int, str]] = {}
        self.signalled: list[tuple[str, str]] = []

    def __call__(self, argv, **kw):
        argv = list(argv)
        if argv[:2] == ["podman", "exec"] and argv[3] == "bash":
            self.calls.append(argv)
            node, script = argv[2].removeprefix("careflow-"), argv[-1]
            if "etcdctl" in script:
                rc, out = self.etcdctl.get(node, (1, ""))
                return subprocess.CompletedProcess(argv, rc, out, "Error: context deadline exceeded")
            sig = "STOP" if "kill -STOP" in script else "CONT"
            self.signalled.append((node, sig))
            return subprocess.CompletedProcess(argv, 0, "4242 4250 4251 4252\n", "")
        return super().__call__(argv, **kw)


class Control:
    def topology(self):
        return HEALTHY


@pytest.fixture
def host(monkeypatch) -> Host:
    fake = Host()
    monkeypatch.setattr(engine_mod.subprocess, "run", fake)
    return fake


@pytest.fixture
def ctx(host) -> FaultContext:
    return FaultContext(engine=Engine("podman", ("podman",), ("podman-compose",)), control=Control())


@pytest.mark.parametrize(("name", "rules"), [
    ("primary-inbound-partition", [("INPUT", "!", "-i", "lo", "-j", "DROP")]),
    ("primary-outbound-partition", [("OUTPUT", "!", "-o", "lo", "-j", "DROP")]),
    ("primary-packet-loss", [
        ("INPUT", "!", "-i", "lo", "-m", "statistic", "--mode", "random", "--probability", "0.2", "-j", "DROP"),
        ("OUTPUT", "!", "-o", "lo", "-m", "statistic", "--mode", "random", "--probability", "0.2", "-j", "DROP")]),
])
def test_network_faults_insert_exactly_their_rules_in_the_primarys_netns_and_heal_removes_them(ctx, host, name,
                                                                                                rules):
    fault = FAULTS[name]
    assert fault.pick(HEALTHY) == ("pg1",)
    fault.inject(ctx, ("pg1",))
    assert host.rules == rules  # the fake appends; each rule once
    fault.inject(ctx, ("pg1",))  # a doubled injection still heals completely
    fault.heal(ctx, ("pg1",))
    assert host.rules == []
    assert fault.expects_failover is (name != "primary-packet-loss")


def test_dcs_partition_cuts_only_the_inventorys_etcd_ports_not_replication_or_rest(host):
    ctx = FaultContext(engine=Engine("podman", ("podman",), ("podman-compose",)), control=Control(),
                       etcd_ports=(12379, 12380))
    fault = FAULTS["dcs-partition"]
    fault.inject(ctx, fault.pick(HEALTHY))
    assert sorted(host.rules) == [
        ("INPUT", "!", "-i", "lo", "-p", "tcp", "-m", "multiport", "--dports", "12379,12380", "-j", "DROP"),
        ("OUTPUT", "!", "-o", "lo", "-p", "tcp", "-m", "multiport", "--dports", "12379,12380", "-j", "DROP"),
    ]
    assert not any("5432" in " ".join(r) or "8008" in " ".join(r) for r in host.rules)
    fault.heal(ctx, ("pg1",))
    assert host.rules == []


def test_the_etcd_leader_is_read_from_etcdctls_json_even_when_a_member_is_down():
    assert leader_from_etcdctl(etcdctl_output(16075987794986071137), "pg1") == "pg2"
    one_down = json.dumps(MEMBERS) + "\n" + json.dumps(status(33, 11, 33))  # pg2's status missing
    assert leader_from_etcdctl(one_down, "pg1") == "pg3"


@pytest.mark.parametrize("output", [
    "",
    "Error: context deadline exceeded",
    json.dumps(MEMBERS),  # no status document
    json.dumps(MEMBERS) + json.dumps(status(0, 11, 33)),  # no leader (an election under way)
    json.dumps(MEMBERS) + json.dumps(status(11, 11) + status(33, 33)),  # members disagree
])
def test_no_leader_in_etcdctls_answer_is_a_command_failure(output):
    with pytest.raises(CommandFailed, match="no etcd leader"):
        leader_from_etcdctl(output, "pg1")


def test_etcd_leader_loss_aims_at_the_leader_asking_the_next_member_when_one_cannot_answer(ctx, host):
    host.etcdctl = {"pg1": (1, "garbage"), "pg2": (1, etcdctl_output(33))}  # rc 1: a member is down, still valid
    fault = FAULTS["etcd-leader-loss"]
    assert fault.pick_live is not None and fault.pick(HEALTHY) == ()
    assert fault.pick_live(ctx) == ("pg3",)
    fault.inject(ctx, ("pg3",))
    fault.heal(ctx, ("pg3",))
    assert host.execs()[-2:] == [["systemctl", "stop", "etcd.service"], ["systemctl", "start", "etcd.service"]]
    assert [c[2] for c in host.calls][-2:] == ["careflow-pg3", "careflow-pg3"]
    assert fault.expects_failover is False


def test_etcd_leader_loss_is_not_ready_when_no_member_names_a_leader(ctx, host):
    with pytest.raises(NotReady, match="no etcd member named its leader"):
        FAULTS["etcd-leader-loss"].pick_live(ctx)


def test_etcd_election_observer_reports_the_leader_before_and_after(ctx, host):
    host.etcdctl = {"pg1": (0, etcdctl_output(11))}
    obs = FAULTS["etcd-leader-loss"].observe(ctx, ("pg3",), 0.0, 1.0, lambda line: None)
    assert obs.figures == {"etcd_leader_before": "pg3", "etcd_leader_after": "pg1", "primary_on_etcd_leader_node": "no"}


def test_io_stall_stops_the_postmaster_before_its_children_and_heal_continues_them(ctx, host):
    fault = FAULTS["primary-io-stall"]
    assert fault.pick(HEALTHY) == ("pg1",) and fault.expects_failover is True
    note = fault.inject(ctx, ("pg1",))
    assert "pid 4242" in note and "its 3 processes" in note
    script = host.calls[-1][-1]
    # The postmaster first (it then forks nothing new), then what it started; never Patroni's or etcd's PIDs.
    assert script.index('kill -STOP "$pm"') < script.index("kill -STOP $kids")
    assert "pgrep -d \" \" -P \"$pm\"" in script and "postmaster.pid" in script
    fault.heal(ctx, ("pg1",))
    assert host.signalled == [("pg1", "STOP"), ("pg1", "CONT")]
    assert "kill -CONT" in host.calls[-1][-1]


def test_new_faults_join_the_soaks_nemeses_but_not_ci():
    kinds = {n: FAULTS[n].nemesis for n in ["etcd-leader-loss", "primary-inbound-partition",
                                             "primary-outbound-partition", "dcs-partition", "primary-packet-loss",
                                             "primary-io-stall"]}
    assert kinds == {"etcd-leader-loss": "kill", "primary-inbound-partition": "partition",
                     "primary-outbound-partition": "partition", "dcs-partition": "partition",
                     "primary-packet-loss": "partition", "primary-io-stall": "pause"}
    assert not any(FAULTS[n].ci for n in kinds)


class A:
    def __init__(self, old: str, new: str | None) -> None:
        self.old_primary, self.new_primary = old, new

    failed_over = Analysis.failed_over  # the real property, over these two fields


@pytest.mark.parametrize(("expected", "new", "ok"), [
    (True, "pg2", True), (True, None, False), (False, None, True), (False, "pg2", False), (True, "pg1", False)])
def test_the_expected_failover_is_a_verdict(expected, new, ok):
    (verdict,) = failover_verdict(expected, A("pg1", new))
    assert verdict.ok is ok
    assert verdict.detail == f"leader pg1 -> {new or 'pg1'}"


def test_either_outcome_adds_no_verdict():
    assert failover_verdict(None, A("pg1", "pg2")) == ()
