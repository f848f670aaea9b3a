"""careflow-ha switchover: preconditions, the pause/switch/route/resume sequence, and that every failure
path resumes every pooler (fakes at the boundaries: Patroni's API and the pooler admin console)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from careflow_ha.cluster.model import ClusterSnapshot, Member
from careflow_ha.cluster.switchover import Interrupted, Limits, check_preconditions, run_switchover
from careflow_ha.errors import CommandFailed, NotReady, UsageError


def snap(leader="pg1", sync="pg2", other="pg3", sync_state="streaming", sync_lag=0, other_lag=0,
         leader_state="running"):
    members = [Member(leader, "leader", leader_state, 1), Member(sync, "sync_standby", sync_state, 1, sync_lag),
               Member(other, "replica", "streaming", 1, other_lag)]
    return ClusterSnapshot(0.0, tuple(sorted(members, key=lambda m: m.name)))


class FakeApi:
    def __init__(self, before, after=None, fail=None):
        self.before, self.after, self.fail = before, after, fail
        self.switched: list[tuple] = []

    def cluster(self, timeout=None):
        return self.after if self.switched and self.after is not None else self.before

    def switchover(self, leader, candidate, timeout=60.0):
        if self.fail:
            raise self.fail
        self.switched.append((leader, candidate))
        return "Successfully switched over"


class FakePooler:
    def __init__(self, name, drains=True, paused=False, log=None):
        self.name, self.drains, self._paused = name, drains, paused
        self.endpoint = "ro" if name.endswith(":6433") else "rw"
        self.log = log if log is not None else []

    def begin_pause(self):
        self._paused = True
        self.log.append(("pause", self.name))

    def pause_done(self, timeout):
        return self.drains

    def resume(self):  # as PgBouncerAdmin: RESUME only where a pause is on
        if self._paused:
            self.log.append(("resume", self.name))
        self._paused = False

    def reconnect(self):
        self.log.append(("reconnect", self.name))

    def paused(self):
        return self._paused


FAST = Limits(max_lag_bytes=100, max_xact_age_s=5, drain_s=1, switchover_s=5, leader_s=1, route_s=1, poll_s=0.01)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s
        time.sleep(0.001)  # a real yield: Patroni's POST runs on its own thread meanwhile


def run(api, poolers, zero=True, to=None, route=lambda endpoint, leader: True, xact=lambda leader: 0.0, limits=FAST):
    clock = Clock()
    return run_switchover(api, poolers, route, xact, to, zero, limits, lambda msg: None, clock, clock.sleep)


def assert_every_paused_pooler_resumed(log, ps):
    paused = sorted(n for k, n in log if k == "pause")
    assert {"lb1:6432", "lb2:6432"} <= set(paused), "the writers' poolers were never paused"
    assert sorted(n for k, n in log if k == "resume") == paused and not any(p.paused() for p in ps)


def poolers(log, **kw):
    return [FakePooler(n, log=log, **kw) for n in ("lb1:6432", "lb1:6433", "lb2:6432", "lb2:6433")]


def test_zero_error_pauses_switches_waits_for_routing_then_reconnects_and_resumes():
    log, routed = [], []
    api = FakeApi(snap(), snap(leader="pg2", sync="pg1"))
    ps = poolers(log)
    report = run(api, ps, route=lambda endpoint, leader: routed.append((endpoint, leader)) or True)
    assert api.switched == [("pg1", "pg2")]
    assert routed == [("rw", "pg2"), ("ro", "pg2")] and report.new_leader == "pg2" and report.old_leader == "pg1"
    # Writers resume first (once writes are routed), readers after (once reads avoid the new leader).
    rw, ro = {"lb1:6432", "lb2:6432"}, {"lb1:6433", "lb2:6433"}
    assert [k for k, _ in log[:4]] == ["pause"] * 4
    assert [(k, n in rw) for k, n in log[4:8]] == [("reconnect", True)] * 2 + [("resume", True)] * 2
    assert [(k, n in ro) for k, n in log[8:]] == [("reconnect", True)] * 2 + [("resume", True)] * 2
    assert not any(p.paused() for p in ps)
    assert set(report.steps) == {"pause", "patroni", "route_rw", "resume_rw", "route_ro", "resume_ro"}
    assert set(report.held_by_endpoint_s) == {"rw", "ro"} and report.held_s == max(report.held_by_endpoint_s.values())


def test_readers_stay_paused_until_haproxy_stops_reading_from_the_new_leader():
    log, asked = [], []
    api = FakeApi(snap(), snap(leader="pg2", sync="pg1"))
    ps = poolers(log)

    def route(endpoint, leader):  # reads still go to the promoted pg2 on the first two polls
        asked.append(endpoint)
        return endpoint == "rw" or asked.count("ro") > 2

    report = run(api, ps, route=route)
    resumed = [n for k, n in log if k == "resume"]
    assert set(resumed[:2]) == {"lb1:6432", "lb2:6432"} and set(resumed[2:]) == {"lb1:6433", "lb2:6433"}
    assert report.steps["route_ro"] > 0 and report.held_by_endpoint_s["ro"] >= report.held_by_endpoint_s["rw"]


def test_plain_switchover_touches_no_pooler():
    log = []
    api = FakeApi(snap(), snap(leader="pg2", sync="pg1"))
    report = run(api, poolers(log), zero=False)
    assert api.switched == [("pg1", "pg2")] and log == [] and report.held_s is None


@pytest.mark.parametrize(
    "to,before,message",
    [
        ("pg9", snap(), "no such cluster member"),
        ("pg1", snap(), "it is the leader already"),
        ("pg2", snap(sync_state="starting"), "not a healthy streaming replica"),
        ("pg2", snap(sync_lag=101), "not a healthy streaming replica"),
        ("pg3", snap(), "synchronous mode promotes only the sync standby"),
    ],
)
def test_a_bad_to_is_refused_with_exit_2_before_anything_is_paused(to, before, message):
    log = []
    api = FakeApi(before)
    with pytest.raises(UsageError, match=message) as err:
        run(api, poolers(log), to=to)
    assert err.value.exit_code == 2 and "\n" not in str(err.value)
    assert log == [] and api.switched == []


@pytest.mark.parametrize(
    "before,message",
    [
        (snap(sync_state="starting"), "no sync standby is streaming"),
        (snap(sync_lag=5000), "no sync standby is streaming"),
        (snap(leader_state="stopped"), "no single running leader"),
    ],
)
def test_an_unready_cluster_is_refused_before_anything_is_paused(before, message):
    log = []
    with pytest.raises(NotReady, match=message):
        run(FakeApi(before), poolers(log))
    assert log == []


def test_a_long_transaction_is_refused_before_anything_is_paused():
    log = []
    api = FakeApi(snap())
    with pytest.raises(NotReady, match="has been open 6.0s"):
        run(api, poolers(log), xact=lambda leader: 6.0)
    assert log == [] and api.switched == []


def test_a_pause_that_does_not_drain_resumes_every_pooler_and_exits_4_without_switching():
    log = []
    ps = poolers(log)
    ps[2].drains = False
    api = FakeApi(snap())
    with pytest.raises(NotReady, match="PAUSE did not drain within 1s on lb2:6432") as err:
        run(api, ps)
    assert err.value.exit_code == 4
    assert api.switched == []
    assert_every_paused_pooler_resumed(log, ps)


@pytest.mark.parametrize(
    "case",
    ["patroni refuses", "no new leader", "routing never follows"],
)
def test_every_failure_after_the_pause_resumes_every_pooler(case):
    log = []
    ps = poolers(log)
    if case == "patroni refuses":
        api, route, exc = FakeApi(snap(), fail=CommandFailed("switchover refused: HTTP 412")), None, CommandFailed
    elif case == "no new leader":
        api, route, exc = FakeApi(snap(), snap()), None, NotReady
    else:
        api, route, exc = FakeApi(snap(), snap(leader="pg2", sync="pg1")), (lambda endpoint, leader: False), NotReady
    with pytest.raises(exc):
        run(api, ps, route=route or (lambda endpoint, leader: True))
    assert_every_paused_pooler_resumed(log, ps)


def test_one_pooler_failing_to_resume_does_not_keep_the_others_paused():
    log = []
    ps = poolers(log)

    def broken():
        raise OSError("unreachable")

    ps[0].resume = broken
    run(FakeApi(snap(), snap(leader="pg2", sync="pg1")), ps)
    assert sorted(n for k, n in log if k == "resume") == ["lb1:6433", "lb2:6432", "lb2:6433"]


def test_a_paused_pooler_left_by_a_killed_run_is_named_and_resume_is_offered():
    log = []
    ps = poolers(log)
    ps[1]._paused = True
    api = FakeApi(snap())
    with pytest.raises(NotReady, match=r"lb1:6433 are PAUSED .*`careflow-ha switchover --resume`"):
        run(api, ps)
    assert api.switched == [] and log == []


def test_an_unreachable_pooler_is_refused_before_anything_is_paused():
    log = []
    ps = poolers(log)
    ps[3].paused = lambda: None
    api = FakeApi(snap())
    with pytest.raises(NotReady, match="lb2:6433 do not answer"):
        run(api, ps)
    assert api.switched == [] and log == []


def test_zero_error_without_poolers_is_bad_input():
    with pytest.raises(UsageError, match="lists no balancer"):
        run(FakeApi(snap()), [])


def test_sigterm_during_the_switchover_resumes_every_pooler():
    log = []
    ps = poolers(log)

    class SlowApi(FakeApi):
        def switchover(self, leader, candidate, timeout=60.0):
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to the main thread: the handler raises
            for _ in range(100):
                threading.Event().wait(0.01)
            raise AssertionError("the signal did not interrupt")

    assert threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match="SIGTERM"):
        run(SlowApi(snap()), ps)
    assert_every_paused_pooler_resumed(log, ps)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_without_to_the_streaming_sync_standby_is_the_candidate():
    assert check_preconditions(snap(), None, 100) == ("pg1", "pg2")


def test_writes_are_routed_once_only_the_new_leader_is_up_in_the_primary_proxy():
    from careflow_ha.cluster.health import Backend
    from careflow_ha.cluster.switchover import routes_writes_only_to

    def rw(*up: str) -> list[Backend]:
        rows = [Backend("primary", n, "UP" if n in up else "DOWN", "L7OK") for n in ("pg1", "pg2", "pg3")]
        return rows + [Backend("replicas", n, "UP", "L7OK") for n in ("pg1", "pg2", "pg3")]

    assert routes_writes_only_to(rw("pg2"), "pg2")
    assert not routes_writes_only_to(rw("pg1"), "pg2")  # still the old primary
    assert not routes_writes_only_to(rw("pg1", "pg2"), "pg2")  # the old one not marked down yet
    assert not routes_writes_only_to(rw(), "pg2")
    # The old primary has failed one check of `fall`: HAProxy still routes to it (seen on the lab).
    going = [Backend("primary", "pg1", "UP 1/2", "L7STS"), Backend("primary", "pg2", "UP", "L7OK")]
    assert not routes_writes_only_to(going, "pg2")
    coming = [Backend("primary", "pg1", "DOWN", "L7STS"), Backend("primary", "pg2", "UP", "L7OK"),
              Backend("primary", "pg3", "DOWN 1/2", "L7OK")]
    assert routes_writes_only_to(coming, "pg2")


def test_reads_avoid_the_new_leader_only_once_haproxy_marked_it_down_there():
    from careflow_ha.cluster.health import Backend
    from careflow_ha.cluster.switchover import reads_avoid

    ro = [Backend("replicas", "pg2", "UP 1/2", "L7STS"), Backend("replicas", "pg3", "UP", "L7OK")]
    assert not reads_avoid(ro, "pg2")
    assert reads_avoid([ro[1], Backend("replicas", "pg2", "DOWN", "L7STS")], "pg2")
    assert reads_avoid([Backend("primary", "pg2", "UP", "L7OK")], "pg2")  # the primary proxy is not read


def test_readers_are_paused_only_once_the_old_primary_steps_down():
    """Pausing the readers from the start would stall them through the whole switchover; they need holding
    only from the old primary's step down (the candidate's promotion comes next) until HAProxy drops it."""
    log = []
    stepping_down = ClusterSnapshot(0.0, (Member("pg1", "replica", "stopped", 1), Member("pg2", "sync_standby",
                                          "streaming", 1, 0), Member("pg3", "replica", "streaming", 1, 0)))

    class SteppingApi(FakeApi):
        def __init__(self):
            super().__init__(snap())
            self.after_post = [snap(), stepping_down, stepping_down, snap(leader="pg2", sync="pg1")]

        def cluster(self, timeout=None):
            if not self.switched:
                return self.before
            return self.after_post.pop(0) if len(self.after_post) > 1 else self.after_post[0]

        def switchover(self, leader, candidate, timeout=60.0):
            log.append(("post", leader))
            return super().switchover(leader, candidate, timeout)

    report = run(SteppingApi(), poolers(log))
    kinds = [(k, n) for k, n in log if k in ("pause", "post")]
    assert [n for k, n in kinds if k == "pause"][:2] == ["lb1:6432", "lb2:6432"]
    post_at = kinds.index(("post", "pg1"))
    assert {n for k, n in kinds[post_at + 1:]} == {"lb1:6433", "lb2:6433"}  # readers: after the POST only
    assert report.held_by_endpoint_s["ro"] < report.held_by_endpoint_s["rw"]
