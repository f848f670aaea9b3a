"""Balancer faults: aimed at the VIP holder, the generic container/iptables faults, VRRP read from the journal.

The engine is faked at its boundary (exec inside a node); the journal lines
are keepalived 2.2's own wording as ``journalctl -o short-unix`` prints it.
"""

from __future__ import annotations

import subprocess

import pytest

from careflow_ha.drills.balancer import (
    VrrpChange,
    back_in_vrrp,
    observe_vrrp,
    parse_vrrp_journal,
    pick_vip_holder,
    takeover,
)
from careflow_ha.drills.faults import FAULTS, FaultContext
from careflow_ha.errors import NotReady, UsageError

VIP = "192.168.56.100"
JOURNAL_LB2 = """\
1764617000.100000 lb2 Keepalived_vrrp[412]: (careflow_vip) Entering BACKUP STATE (init)
1764617000.200000 lb2 Keepalived_vrrp[412]: Script `careflow_haproxy` now returning 0
1764617010.500000 lb2 Keepalived_vrrp[412]: (careflow_vip) Entering MASTER STATE
"""


def test_parse_vrrp_journal_keeps_only_state_changes():
    assert parse_vrrp_journal("lb2", JOURNAL_LB2) == (
        VrrpChange(1764617000.1, "lb2", "BACKUP"),
        VrrpChange(1764617010.5, "lb2", "MASTER"),
    )
    assert parse_vrrp_journal("lb2", "") == ()


def _c(at: float, node: str, state: str) -> VrrpChange:
    return VrrpChange(at, node, state)


@pytest.mark.parametrize(
    "changes,expected",
    [
        ([], None),  # silent: not back yet
        ([_c(11, "lb1", "BACKUP")], 11),
        ([_c(11, "lb1", "BACKUP"), _c(12, "lb1", "FAULT")], None),  # still faulty
        ([_c(11, "lb1", "FAULT"), _c(13, "lb1", "BACKUP")], 13),  # HAProxy came up after keepalived
        ([_c(11, "lb1", "BACKUP"), _c(12, "lb1", "FAULT"), _c(14, "lb1", "BACKUP"), _c(15, "lb1", "MASTER")], 14),
        ([_c(9, "lb1", "BACKUP")], None),  # before healing does not count
        ([_c(11, "lb2", "MASTER")], None),  # another balancer's takeover says nothing about lb1
        # Partitioned lb1 stayed MASTER throughout: back when lb2 hears it after healing and yields.
        ([_c(5, "lb2", "MASTER"), _c(11, "lb2", "BACKUP")], 11),
    ],
)
def test_back_in_vrrp_is_the_change_that_stuck(changes, expected):
    back = back_in_vrrp(changes, "lb1", since=10)
    assert (None if back is None else back.at) == expected


def test_a_balancer_that_kept_the_vip_is_back_as_master():
    back = back_in_vrrp([_c(5, "lb2", "MASTER"), _c(11, "lb2", "BACKUP")], "lb1", since=10)
    assert back == VrrpChange(11, "lb1", "MASTER")


@pytest.mark.parametrize(
    "changes,expected",
    [
        ([_c(5, "lb2", "MASTER")], "lb2"),
        ([_c(5, "lb1", "MASTER")], None),  # the lost one itself is no takeover
        ([_c(-1, "lb2", "MASTER")], None),  # before the fault
        ([], None),
    ],
)
def test_takeover_is_another_balancer_becoming_master(changes, expected):
    moved = takeover(changes, "lb1", after=0)
    assert (None if moved is None else moved.node) == expected


class FakeLab:
    """exec inside lb1/lb2: ``ip addr`` shows the VIP on its holders; journalctl prints a given journal."""

    def __init__(self, holders: set[str], journals: dict[str, str] | None = None) -> None:
        self.holders = holders
        self.journals = journals or {}
        self.calls: list[tuple[str, list[str]]] = []

    def exec(self, node, argv, **kw):
        self.calls.append((node, list(argv)))
        if argv[0] == "ip":
            vip = f"2: eth0    inet {VIP}/24 scope global secondary eth0\n" if node in self.holders else ""
            return subprocess.CompletedProcess(argv, 0, f"2: eth0    inet 192.168.56.9/24 eth0\n{vip}", "")
        if argv[0] == "journalctl":
            return subprocess.CompletedProcess(argv, 0, self.journals.get(node, ""), "")
        raise AssertionError(argv)


def _ctx(lab: FakeLab, vip: str | None = VIP) -> FaultContext:
    return FaultContext(engine=lab, control=None, vip=vip)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["balancer-loss", "balancer-partition"])
def test_balancer_faults_aim_at_the_vip_holder(name):
    assert FAULTS[name].pick_live(_ctx(FakeLab({"lb2"}))) == ("lb2",)
    assert FAULTS[name].expects_failover is False  # a balancer fault never moves the primary


def test_no_vip_configured_is_a_usage_error():
    with pytest.raises(UsageError, match="set careflow_vip"):
        pick_vip_holder(_ctx(FakeLab({"lb1"}), vip=None))


def test_two_holders_is_not_a_start_for_a_drill(monkeypatch):
    monkeypatch.setattr("careflow_ha.lab.vip.time.sleep", lambda _s: None)
    with pytest.raises(NotReady, match="held by lb1, lb2"):
        pick_vip_holder(_ctx(FakeLab({"lb1", "lb2"})))


def test_observe_reports_takeover_and_the_lost_balancer_back_as_backup():
    journals = {
        "lb1": "1000.0 lb1 Keepalived_vrrp[9]: (careflow_vip) Entering BACKUP STATE (init)\n",
        "lb2": "993.4 lb2 Keepalived_vrrp[7]: (careflow_vip) Entering MASTER STATE\n",
    }
    lines: list[str] = []
    obs = observe_vrrp(_ctx(FakeLab({"lb2"}, journals)), ("lb1",), 990.0, 995.0, lines.append, timeout_s=5)
    assert obs.figures["vip_takeover_by"] == "lb2" and obs.figures["vip_takeover_s"] == pytest.approx(3.4)
    assert obs.figures["lost_balancer_back_state"] == "BACKUP" and obs.figures["lost_balancer_back_s"] == 5.0
    assert obs.figures["vip_holder_after"] == "lb2"
    assert all(v.ok for v in obs.verdicts)
    assert [e.detail for e in obs.events] == ["lb2 MASTER", "lb1 BACKUP"]


def test_observe_fails_its_verdicts_when_the_balancer_never_returns(monkeypatch):
    monkeypatch.setattr("careflow_ha.drills.balancer.time.sleep", lambda _s: None)
    obs = observe_vrrp(_ctx(FakeLab(set())), ("lb1",), 990.0, 995.0, lambda _l: None, timeout_s=0)
    assert [v.ok for v in obs.verdicts] == [False, False]
    assert obs.figures["vip_holder_after"] is None
