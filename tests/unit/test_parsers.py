"""Pure parsing: Ansible's recap, HAProxy's stats, apt sources, routing checks."""

from __future__ import annotations

import pytest

from careflow_ha.cluster.health import Backend, parse_haproxy_csv, routing_problems
from careflow_ha.cluster.model import ClusterSnapshot, Member
from careflow_ha.errors import EnvironmentProblem
from careflow_ha.lab.image import apt_mirror
from careflow_ha.provision.ansible import parse_recap

RECAP = """
TASK [haproxy : Ensure HAProxy listens] ****
ok: [lb1]

PLAY RECAP *********************************************************************
lb1                        : ok=19   changed=2    unreachable=0    failed=0    skipped=1    rescued=0    ignored=0
localhost                  : ok=11   changed=0    unreachable=0    failed=0    skipped=0    rescued=0    ignored=0
pg1                        : ok=40   changed=0    unreachable=1    failed=1    skipped=3    rescued=0    ignored=0
""".splitlines()


def test_parse_recap_reads_every_host():
    recap = parse_recap(RECAP)
    assert recap["lb1"]["changed"] == 2
    assert recap["localhost"] == {"ok": 11, "changed": 0, "unreachable": 0, "failed": 0}
    assert recap["pg1"]["failed"] == 1 and recap["pg1"]["unreachable"] == 1


def test_parse_recap_without_a_recap_is_empty():
    assert parse_recap(["TASK [x]", "ok: [pg1]"]) == {}


HAPROXY_CSV = """# pxname,svname,qcur,status,check_status,
stats,FRONTEND,,OPEN,,
primary,FRONTEND,,OPEN,,
primary,pg1,0,UP,L7OK,
primary,pg2,0,DOWN,L7STS,
primary,BACKEND,0,UP,,
replicas,pg1,0,DOWN,L7STS,
replicas,pg2,0,UP,L7OK,
"""


def test_parse_haproxy_csv_keeps_server_rows_of_our_proxies():
    assert parse_haproxy_csv(HAPROXY_CSV) == (
        Backend("primary", "pg1", "UP", "L7OK"),
        Backend("primary", "pg2", "DOWN", "L7STS"),
        Backend("replicas", "pg1", "DOWN", "L7STS"),
        Backend("replicas", "pg2", "UP", "L7OK"),
    )


def _snap(*members: tuple[str, str, str]) -> ClusterSnapshot:
    return ClusterSnapshot(0.0, tuple(Member(n, r, s, 1, 0) for n, r, s in members))


SNAP = _snap(("pg1", "leader", "running"), ("pg2", "sync_standby", "streaming"), ("pg3", "replica", "streaming"))


@pytest.mark.parametrize(
    "ups,expected",
    [
        ({("primary", "pg1"), ("replicas", "pg2"), ("replicas", "pg3")}, ()),
        ({("primary", "pg1"), ("primary", "pg2"), ("replicas", "pg3")}, ("5000 routes to ['pg1', 'pg2']", "5001")),
        ({("replicas", "pg2"), ("replicas", "pg3")}, ("5000 routes to nothing",)),
        ({("primary", "pg1"), ("replicas", "pg1"), ("replicas", "pg2"), ("replicas", "pg3")}, ("5001 routes to",)),
    ],
)
def test_routing_problems(ups, expected):
    backends = tuple(
        Backend(proxy, server, "UP" if (proxy, server) in ups else "DOWN", "")
        for proxy in ("primary", "replicas")
        for server in ("pg1", "pg2", "pg3")
    )
    problems = routing_problems(SNAP, backends)
    assert len(problems) == len(expected)
    for problem, fragment in zip(problems, expected, strict=True):
        assert fragment in problem


def test_apt_mirror_from_deb822_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n"
    )
    assert apt_mirror(tmp_path) == "http://mirror.example/debian"


def test_apt_mirror_from_one_line_sources_list(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://ftp.example/debian/ bookworm main\n")
    assert apt_mirror(tmp_path) == "http://ftp.example/debian"


def test_no_bookworm_mirror_is_a_clear_error(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    with pytest.raises(EnvironmentProblem, match="no Debian bookworm mirror"):
        apt_mirror(tmp_path)
