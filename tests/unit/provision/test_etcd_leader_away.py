"""The etcd role's leader-away script, run here as rendered for pg1 against a stand-in etcdctl.

The stand-in answers as etcd 3.4's etcdctl does (bookworm's etcd-client; JSON of `endpoint status`,
`member list`, `get --print-value-only`), from a scenario: which member leads etcd, which member holds
Patroni's leader key, and which members answer. It records every `move-leader`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from careflow_ha.provision import LAB_INVENTORY
from careflow_ha.provision.inventory import load_inventory
from tests.unit.provision.test_inventory import SECRETS

IDS = {"pg1": 10276657743932975437, "pg2": 9372538179322589801, "pg3": 3245932946373021239}
URLS = {name: f"https://192.168.56.1{i}:2379" for i, name in enumerate(IDS, start=1)}

FAKE_ETCDCTL = r"""#!{python}
import json, os, sys
s = json.load(open(os.environ["FAKE_ETCD_SCENARIO"]))
ids, urls = s["ids"], s["urls"]
by_url = {{u: n for n, u in urls.items()}}
args = [a for a in sys.argv[1:] if not a.startswith("--") or a == "--print-value-only"]
if "--endpoints" in " ".join(sys.argv):
    sys.exit("Error: conflicting environment variable ETCDCTL_ENDPOINTS is shadowed by a flag")
endpoints = os.environ["ETCDCTL_ENDPOINTS"].split(",")
if args[:2] == ["endpoint", "status"]:
    out, failed = [], False
    for url in endpoints:
        name = by_url[url]
        if name not in s["answering"]:
            print(f"Failed to get the status of endpoint {{url}} (context deadline exceeded)", file=sys.stderr)
            failed = True
            continue
        out.append({{"Endpoint": url, "Status": {{"header": {{"cluster_id": 1, "member_id": ids[name],
                    "revision": 7, "raft_term": 3}}, "version": "3.4.23", "dbSize": 20480,
                    "leader": ids[s["etcd_leader"]], "raftIndex": 99, "raftTerm": 3}}}})
    print(json.dumps(out))
    sys.exit(1 if failed else 0)
if args[0] == "get":
    print(s["patroni_leader"])
elif args[:2] == ["member", "list"]:
    print(json.dumps({{"header": {{"cluster_id": 1, "member_id": ids["pg1"]}}, "members": [
        {{"ID": ids[n], "name": n, "peerURLs": [u.replace("2379", "2380")], "clientURLs": [u]}}
        for n, u in urls.items()]}}))
elif args[0] == "move-leader":
    with open(s["moves"], "a") as f:
        f.write(args[1] + "\n")
    print(f"Leadership transferred from {{ids[s['etcd_leader']]:x}} to {{args[1]}}")
"""


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("leader-away")
    text = load_inventory(LAB_INVENTORY, SECRETS).render_template("etcd", "careflow-etcd-leader-away.py.j2", "pg1")
    path = out / "careflow-etcd-leader-away"
    path.write_text(text)
    (out / "etcdctl").write_text(FAKE_ETCDCTL.format(python=sys.executable))
    for p in (path, out / "etcdctl"):
        p.chmod(0o755)
    return path


def run(script: Path, tmp_path: Path, *, etcd_leader: str, patroni_leader: str,
        answering=("pg1", "pg2", "pg3")) -> tuple[subprocess.CompletedProcess, list[str]]:
    moves = tmp_path / "moves"
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"ids": IDS, "urls": URLS, "etcd_leader": etcd_leader,
                                    "patroni_leader": patroni_leader, "answering": list(answering),
                                    "moves": str(moves)}))
    env = {**os.environ, "PATH": f"{script.parent}:{os.environ['PATH']}", "FAKE_ETCD_SCENARIO": str(scenario),
           "ETCDCTL_ENDPOINTS": ",".join(URLS.values())}  # as /etc/profile.d/careflow-etcdctl.sh sets it
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=30)
    return proc, moves.read_text().split() if moves.exists() else []


def test_rendered_for_the_member_its_endpoint_and_patronis_leader_key(script):
    text = script.read_text()
    assert 'MEMBER = "pg1"' in text
    assert 'LOCAL_ENDPOINT = "https://192.168.56.11:2379"' in text
    assert 'LEADER_KEY = "/service/careflow/leader"' in text


def test_the_etcd_leader_on_the_primarys_node_hands_leadership_to_another_member(script, tmp_path):
    proc, moves = run(script, tmp_path, etcd_leader="pg1", patroni_leader="pg1")
    assert proc.returncode == 0, proc.stderr
    assert moves == [format(IDS["pg2"], "x")]  # the first answering member by name
    assert proc.stdout.strip() == (
        "careflow-etcd-leader-away: moved etcd leadership from pg1 to pg2: pg1 hosts the Patroni primary")


def test_a_member_that_does_not_answer_is_not_chosen(script, tmp_path):
    proc, moves = run(script, tmp_path, etcd_leader="pg1", patroni_leader="pg1", answering=("pg1", "pg3"))
    assert proc.returncode == 0, proc.stderr
    assert moves == [format(IDS["pg3"], "x")]


@pytest.mark.parametrize(("etcd_leader", "patroni_leader"), [("pg1", "pg2"), ("pg2", "pg1"), ("pg3", "pg3")])
def test_nothing_moves_unless_this_member_leads_etcd_and_hosts_the_primary(script, tmp_path, etcd_leader,
                                                                           patroni_leader):
    proc, moves = run(script, tmp_path, etcd_leader=etcd_leader, patroni_leader=patroni_leader)
    assert (proc.returncode, moves, proc.stdout, proc.stderr) == (0, [], "", "")


def test_no_other_member_answering_fails_in_one_line_and_moves_nothing(script, tmp_path):
    proc, moves = run(script, tmp_path, etcd_leader="pg1", patroni_leader="pg1", answering=("pg1",))
    assert proc.returncode == 1 and moves == []
    assert proc.stderr.strip() == ("careflow-etcd-leader-away: pg1 leads etcd and hosts the primary, "
                                   "but no other voting member answers")


def test_etcd_down_fails_in_one_line_without_a_traceback(script, tmp_path):
    proc, moves = run(script, tmp_path, etcd_leader="pg1", patroni_leader="pg1", answering=())
    assert proc.returncode == 1 and moves == []
    assert proc.stderr.startswith("careflow-etcd-leader-away: etcd did not answer: Failed to get the status")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
