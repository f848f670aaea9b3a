"""The alert rules on the live cluster: a replica stopped for 30 s raises its replica-down alert.

The promtool tests (tests/monitoring/test_alert_rules.py) prove each rule against
series written by hand; this proves the chain a DBA relies on: the exporters'
real metric names, the scrape of a node that went away, the rule, the alert.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from careflow_ha.cluster.health import cluster_status
from careflow_ha.cluster.patroni import PatroniApi
from tests.plugins.timeouts import wait_until

pytestmark = pytest.mark.cluster

#: The rules that say "this replica is gone" (roles/monitoring/files/careflow-alerts.yml).
REPLICA_DOWN_ALERTS = frozenset({"CareflowPatroniMemberDown", "CareflowReplicaNotStreaming", "CareflowReplicationLag"})
#: How long the replica stays stopped, and so the latest the alert may fire. The fastest rule needs its
#: `for: 15s` plus up to one scrape and one evaluation (5 s each): 25 s.
STOP_S = 30.0


def _firing_about(prometheus_url: str, node: str) -> list[str]:
    """The replica-down alerts firing about ``node`` now, from Prometheus' /api/v1/alerts."""
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/alerts", timeout=5) as resp:  # noqa: S310 - loopback
        alerts = json.load(resp)["data"]["alerts"]
    return sorted(a["labels"]["alertname"] for a in alerts
                  if a["state"] == "firing" and a["labels"].get("alertname") in REPLICA_DOWN_ALERTS
                  and node in (a["labels"].get("instance"), a["labels"].get("application_name")))


def test_a_replica_stopped_for_30_s_raises_a_replica_down_alert(cluster, host_of):
    snap = PatroniApi(cluster).cluster()
    # An asynchronous replica: stopping it stalls no commit, so the test breaks nothing but the alert's silence.
    replica = next(m.name for m in snap.members if m.is_streaming_replica and m.role != "sync_standby")
    assert _firing_about(cluster.prometheus_url, replica) == [], "the alert fired before the replica stopped"
    node = host_of(replica)
    stopped = time.monotonic()
    try:
        assert node.run("systemctl stop patroni").rc == 0  # Patroni stops its PostgreSQL with it
        deadline = stopped + STOP_S
        fired: list[str] = []
        for _ in range(int(STOP_S) + 1):  # bounded: one look a second for at most STOP_S
            fired = _firing_about(cluster.prometheus_url, replica)
            if fired or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        took = time.monotonic() - stopped
        assert fired, f"no replica-down alert fired about {replica} within {STOP_S:g} s of stopping it"
        assert took <= STOP_S
    finally:
        node.run("systemctl start patroni")
        wait_until(lambda: cluster_status(cluster).healthy, 120, interval=2, what=f"{replica} back and healthy")
    wait_until(lambda: _firing_about(cluster.prometheus_url, replica) == [], 30, interval=1,
               what=f"the replica-down alert about {replica} to resolve")
