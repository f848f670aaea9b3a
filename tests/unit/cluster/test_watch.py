"""The /cluster poller: bounded, tolerant of unreachable APIs, and describing role changes."""

from __future__ import annotations

from careflow_ha.cluster.model import ClusterSnapshot, Member
from careflow_ha.cluster.watch import ClusterPoller, describe_changes, role_change_events
from careflow_ha.errors import NotReady

HEALTHY = ClusterSnapshot(
    1.0,
    (
        Member("pg1", "leader", "running", 1),
        Member("pg2", "sync_standby", "streaming", 1),
        Member("pg3", "replica", "streaming", 1),
    ),
)
AFTER = ClusterSnapshot(2.0, (Member("pg2", "leader", "running", 2), Member("pg3", "sync_standby", "streaming", 2)))


def test_describe_changes_names_leader_and_member_changes():
    assert describe_changes(HEALTHY, AFTER) == (
        "leader: pg1 -> pg2",
        "pg1: leader/running -> absent",
        "pg2: sync_standby/streaming -> leader/running",
        "pg3: replica/streaming -> sync_standby/streaming",
    )


def test_no_change_no_lines():
    assert describe_changes(HEALTHY, HEALTHY) == ()
    assert role_change_events([HEALTHY, HEALTHY]) == ()


def test_role_change_events_are_stamped_with_the_later_snapshot():
    events = role_change_events([AFTER, HEALTHY])  # order of arrival does not matter
    assert {e.at for e in events} == {2.0} and all(e.kind == "role" for e in events)


def test_poller_is_bounded_counts_misses_and_reports_changes():
    answers = iter([HEALTHY, NotReady("all down"), AFTER, *[AFTER] * 100])
    lines: list[str] = []

    def fetch() -> ClusterSnapshot:
        item = next(answers)
        if isinstance(item, Exception):
            raise item
        return item

    poller = ClusterPoller(fetch, interval_s=0.01, max_seconds=0.3, on_change=lines.append)
    poller.start()
    poller.join(5)
    assert not poller.is_alive(), "the poller must stop by itself at its time bound"
    assert poller.failure is None
    assert poller.missed == 1
    assert poller.snapshots[0] == HEALTHY and poller.latest() == AFTER
    assert lines[0] == "leader: pg1 -> pg2"
    assert len(poller.snapshots) <= 31
