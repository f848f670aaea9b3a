"""ClusterControl over Patroni's REST API, with HTTP mocked at the boundary (the urlopen callable)."""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
from types import MappingProxyType

import pytest

from careflow_ha.cluster.health import health_problems
from careflow_ha.cluster.model import ClusterSnapshot, Member
from careflow_ha.cluster.patroni import PatroniApi, parse_cluster, parse_history
from careflow_ha.cluster.timing import TIMING_PRESETS, Timing
from careflow_ha.drills.control import PatroniRestControl
from careflow_ha.errors import CommandFailed, NotReady, UsageError
from careflow_ha.settings import PORT_DEFAULTS, SECRET_KEYS, Settings

SECRET = "s3cret-api-pw"


@pytest.fixture
def settings(tmp_path) -> Settings:
    secrets = {k: "x" for k in SECRET_KEYS} | {"CAREFLOW_PATRONI_API_PASSWORD": SECRET}
    return Settings(
        project_dir=tmp_path, ports=MappingProxyType(dict(PORT_DEFAULTS)), secrets=MappingProxyType(secrets)
    )


class Resp:
    def __init__(self, status: int, body) -> None:
        self.status = status
        self._raw = body if isinstance(body, bytes) else json.dumps(body).encode()

    def read(self) -> bytes:
        return self._raw

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FakeHttp:
    """urlopen stand-in: routes (method, port, path) to canned answers; records every request."""

    def __init__(self, routes) -> None:
        self.routes = routes
        self.requests = []

    def __call__(self, req, timeout):
        port = int(req.full_url.split(":")[2].split("/")[0])
        path = "/" + req.full_url.split("/", 3)[3]
        self.requests.append((req.get_method(), port, path, req.data, dict(req.header_items()), timeout))
        answer = self.routes.get((req.get_method(), port, path))
        if callable(answer):
            answer = answer()
        if answer is None or isinstance(answer, OSError):
            raise answer or urllib.error.URLError("connection refused")
        status, body = answer
        if status >= 400:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            raise urllib.error.HTTPError(req.full_url, status, "err", {}, io.BytesIO(raw))
        return Resp(status, body)


def cluster_json(leader="pg1", tl=1, sync=("pg2",), states=None):
    states = states or {}
    members = []
    for name in ("pg1", "pg2", "pg3"):
        role = "leader" if name == leader else ("sync_standby" if name in sync else "replica")
        state = states.get(name, "running" if name == leader else "streaming")
        members.append(
            {"name": name, "role": role, "state": state, "timeline": tl, "lag": 0 if role != "leader" else None}
        )
    return {"members": members, "scope": "careflow"}


# -- health ------------------------------------------------------------------------------------------------------------

H = parse_cluster(cluster_json(), 0.0)


@pytest.mark.parametrize(
    ("case", "snap", "synchronous", "expect"),
    [
        ("healthy sync cluster", H, True, ()),
        ("healthy async cluster", parse_cluster(cluster_json(sync=()), 0.0), False, ()),
        (
            "no leader",
            parse_cluster({"members": [m for m in cluster_json()["members"] if m["name"] != "pg1"]}, 0),
            True,
            ("0 leaders (want 1)",),
        ),
        (
            "sync standby missing yet",
            parse_cluster(cluster_json(sync=()), 0.0),
            True,
            ("0 sync standbys (want 1: synchronous_mode is on)",),
        ),
        (
            "old primary still starting",
            parse_cluster(cluster_json(leader="pg2", sync=("pg3",), states={"pg1": "starting"}), 0.0),
            True,
            ("pg1 is replica/starting (want a streaming replica)",),
        ),
        (
            "replica on an old timeline",
            ClusterSnapshot(
                0,
                (
                    Member("pg1", "leader", "running", 3),
                    Member("pg2", "sync_standby", "streaming", 3),
                    Member("pg3", "replica", "streaming", 2),
                ),
            ),
            True,
            ("pg3 is on timeline 2, leader on 3",),
        ),
        ("member missing", ClusterSnapshot(0, H.members[:2]), True, ("2 members registered (want 3)",)),
    ],
)
def test_health_problems(case, snap, synchronous, expect):
    assert health_problems(snap, synchronous) == expect, case


def test_timing_presets_obey_patronis_rule():
    for timing in TIMING_PRESETS.values():
        assert timing.loop_wait + 2 * timing.retry_timeout <= timing.ttl
    assert TIMING_PRESETS["default"] == Timing(30, 10, 10)
    with pytest.raises(UsageError, match="loop_wait"):
        Timing(ttl=10, loop_wait=5, retry_timeout=5)


# -- REST client -------------------------------------------------------------------------------------------------------


def test_get_any_falls_back_to_the_next_node_and_remembers_it(settings):
    http = FakeHttp({("GET", 8012, "/cluster"): (200, cluster_json())})
    api = PatroniApi(settings, opener=http)
    snap = api.cluster()
    assert snap.leader == "pg1" and snap.source == "pg2"
    api.cluster()
    assert [r[1] for r in http.requests] == [8011, 8012, 8012]  # second poll starts with the node that answered


def test_no_api_answering_is_not_ready(settings):
    api = PatroniApi(settings, opener=FakeHttp({}))
    with pytest.raises(NotReady, match="no Patroni REST API answered GET /cluster"):
        api.cluster()


def timing_routes(current: dict, leader: str = "pg2", loops=None) -> dict:
    """A cluster led by ``leader`` whose /config holds ``current``; /patroni answers ``loops`` in turn."""
    now = int(time.time())
    seen = iter(loops if loops is not None else [now - 5, now + 1, now + 1, now + 2])
    leader_port = 8010 + int(leader[-1])
    return {
        ("GET", 8011, "/config"): (200, current),
        ("GET", 8011, "/cluster"): (200, cluster_json(leader=leader, sync=("pg3",))),
        ("PATCH", leader_port, "/config"): (200, {}),
        ("GET", leader_port, "/patroni"): lambda: (200, {"state": "running", "dcs_last_seen": next(seen)}),
    }


def test_timing_change_goes_to_the_leader_and_waits_for_two_leader_loops(settings):
    http = FakeHttp(timing_routes({"ttl": 30, "loop_wait": 10, "retry_timeout": 10}))
    clock = FakeClock()
    PatroniRestControl(PatroniApi(settings, opener=http), clock=clock, sleep=clock.sleep).set_timing_preset("fast")
    patches = [r for r in http.requests if r[0] == "PATCH"]
    assert [(r[1], json.loads(r[3])) for r in patches] == [(8012, {"ttl": 20, "loop_wait": 2, "retry_timeout": 5})]
    assert patches[0][4]["Authorization"] == "Basic " + base64.b64encode(f"patroni:{SECRET}".encode()).decode()
    polls = [r for r in http.requests if r[2] == "/patroni"]
    assert len(polls) == 4  # an old loop, then two loops after the change (one seen twice)


def test_timing_already_in_place_is_not_patched(settings):
    http = FakeHttp(timing_routes({"ttl": 20, "loop_wait": 2, "retry_timeout": 5}))
    PatroniRestControl(PatroniApi(settings, opener=http)).set_timing_preset("fast")
    assert [r for r in http.requests if r[0] != "GET"] == []


def test_timing_change_the_leader_never_picks_up_is_not_ready(settings):
    stale = [int(time.time()) - 5] * 1000
    http = FakeHttp(timing_routes({"ttl": 30, "loop_wait": 10, "retry_timeout": 10}, loops=stale))
    clock = FakeClock()
    with pytest.raises(NotReady, match="did not run 2 HA loops"):
        PatroniRestControl(PatroniApi(settings, opener=http), clock=clock, sleep=clock.sleep).set_timing_preset("fast")


def test_get_requests_carry_no_credentials(settings):
    http = FakeHttp({("GET", 8011, "/config"): (200, {"synchronous_mode": True})})
    assert PatroniRestControl(PatroniApi(settings, opener=http)).synchronous_mode() is True
    assert "Authorization" not in http.requests[0][4]


def test_rejected_credentials_name_the_fix_without_the_secret(settings):
    routes = timing_routes({"synchronous_mode": True}, leader="pg1")
    routes[("PATCH", 8011, "/config")] = (401, b"no")
    http = FakeHttp(routes)
    with pytest.raises(CommandFailed, match="CAREFLOW_PATRONI_API_PASSWORD") as err:
        PatroniRestControl(PatroniApi(settings, opener=http)).set_synchronous_mode(False)
    assert SECRET not in str(err.value)


@pytest.mark.parametrize(
    ("current", "wanted", "patched"), [(True, False, True), (False, True, True), (True, True, False)]
)
def test_synchronous_mode_is_patched_only_when_it_changes(settings, current, wanted, patched):
    http = FakeHttp(timing_routes({"synchronous_mode": current}))
    PatroniRestControl(PatroniApi(settings, opener=http)).set_synchronous_mode(wanted)
    patches = [json.loads(r[3]) for r in http.requests if r[0] == "PATCH"]
    assert patches == ([{"synchronous_mode": wanted}] if patched else [])


def test_unknown_preset_is_a_usage_error(settings):
    with pytest.raises(UsageError, match="use one of: default, fast"):
        PatroniRestControl(PatroniApi(settings, opener=FakeHttp({}))).set_timing_preset("turbo")


def test_switchover_posts_leader_and_candidate_to_the_leader(settings):
    http = FakeHttp({("POST", 8011, "/switchover"): (200, b'Successfully switched over to "pg2"')})
    PatroniRestControl(PatroniApi(settings, opener=http)).switchover("pg1", "pg2", timeout=60)
    assert json.loads(http.requests[0][3]) == {"leader": "pg1", "candidate": "pg2"}
    assert http.requests[0][5] == 60


def test_refused_switchover_is_command_failed(settings):
    http = FakeHttp({("POST", 8011, "/switchover"): (412, b"candidate name does not match with sync_standby")})
    with pytest.raises(CommandFailed, match="HTTP 412"):
        PatroniRestControl(PatroniApi(settings, opener=http)).switchover("pg1", "pg3", timeout=60)


# -- waiting -----------------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_wait_healthy_polls_until_the_sync_standby_appears(settings):
    answers = iter([(200, cluster_json(sync=()))] * 3 + [(200, cluster_json())])
    http = FakeHttp(
        {("GET", 8011, "/config"): (200, {"synchronous_mode": True}), ("GET", 8011, "/cluster"): lambda: next(answers)}
    )
    clock = FakeClock()
    ctl = PatroniRestControl(PatroniApi(settings, opener=http), clock=clock, sleep=clock.sleep)
    assert ctl.wait_healthy(timeout=30).sync_standbys == ("pg2",)
    assert clock.now == pytest.approx(1.5)


def test_wait_healthy_reports_what_is_missing_at_the_deadline(settings):
    http = FakeHttp(
        {
            ("GET", 8011, "/config"): (200, {"synchronous_mode": True}),
            ("GET", 8011, "/cluster"): (200, cluster_json(sync=())),
        }
    )
    clock = FakeClock()
    ctl = PatroniRestControl(PatroniApi(settings, opener=http), clock=clock, sleep=clock.sleep)
    with pytest.raises(NotReady, match="not healthy within 10s: 0 sync standbys"):
        ctl.wait_healthy(timeout=10)
    assert clock.now == pytest.approx(10.0)


# -- parsing -----------------------------------------------------------------------------------------------------------


def test_parse_history_accepts_short_and_full_lines():
    lines = [
        [1, 25623960, "no recovery target specified", "2026-11-27T12:00:00.500000+00:00", "pg2"],
        [2, 33554592, "no recovery target specified"],
        ["bad"],
    ]
    hist = parse_history(lines)
    assert [h.timeline for h in hist] == [1, 2]
    assert hist[0].new_leader == "pg2" and hist[0].at == pytest.approx(1795780800.5)
    assert hist[1].at is None and hist[1].new_leader is None


def test_parse_cluster_treats_unknown_lag_as_none():
    data = cluster_json()
    data["members"][2]["lag"] = "unknown"
    snap = parse_cluster(data, 1.0, "pg1")
    assert snap.member("pg3").lag is None and snap.member("pg2").lag == 0 and snap.leader == "pg1"


@pytest.mark.parametrize(
    ("status", "body", "accepted"),
    [
        (200, b'Successfully switched over to "pg2"', True),
        (503, b"Switchover status unknown", True),  # Patroni stopped waiting; the switchover is under way
        (503, b"Switchover failed", False),
    ],
)
def test_switchover_answers(settings, status, body, accepted):
    http = FakeHttp({("POST", 8011, "/switchover"): (status, body)})
    ctl = PatroniRestControl(PatroniApi(settings, opener=http))
    if accepted:
        ctl.switchover("pg1", "pg2", timeout=60)
    else:
        with pytest.raises(CommandFailed, match="Switchover failed"):
            ctl.switchover("pg1", "pg2", timeout=60)


def test_preset_also_applies_haproxys_half_when_provisioning_provides_it(settings):
    http = FakeHttp(timing_routes({"ttl": 20, "loop_wait": 2, "retry_timeout": 5}))
    applied: list[str] = []
    clock = FakeClock()
    ctl = PatroniRestControl(
        PatroniApi(settings, opener=http), clock=clock, sleep=clock.sleep, haproxy_preset=applied.append
    )
    ctl.set_timing_preset("default")
    assert applied == ["default"]
    assert json.loads(next(r for r in http.requests if r[0] == "PATCH")[3]) == {
        "ttl": 30,
        "loop_wait": 10,
        "retry_timeout": 10,
    }
