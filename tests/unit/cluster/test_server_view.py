"""The server view: panels and alert spans from Prometheus' answers, and what a report makes of them.

Prometheus is faked at the HTTP boundary (the client's opener) with answers shaped like a real
``query_range`` answer; the panel queries themselves are checked by promtool, which parses PromQL.
"""

from __future__ import annotations

import io
import json
import math
import urllib.error
import urllib.parse
from dataclasses import replace

import matplotlib.pyplot as plt
import pytest

from careflow_ha.cluster import server_view
from careflow_ha.cluster.prometheus import UNAVAILABLE, PrometheusClient, Series
from careflow_ha.cluster.server_view import PANELS, ServerView, alert_spans, collect, human, step_for
from careflow_ha.drills.targets import alert_verdicts
from careflow_ha.monitoring.rules import promtool

T0 = 1_796_083_200.0  # 2026-12-01 00:00 UTC (09:00 in Seoul)


def matrix(*series: tuple[dict[str, str], list[tuple[float, float]]]) -> bytes:
    return json.dumps({"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": labels, "values": [[t, "NaN" if math.isnan(v) else str(v)] for t, v in points]}
        for labels, points in series]}}).encode()


def alert(name: str, state: str, severity: str, start: float, end: float, **labels: str):
    return ({"alertname": name, "alertstate": state, "severity": severity, **labels},
            [(T0 + t, 1.0) for t in range(int(start), int(end) + 1)])


#: A node-loss run: pg1 gone at +0 s; Patroni's rule pending from +5 s, firing from +20 s; a disk alert that was
#: already firing when the window opened (-10 s) and is not this run's doing.
ALERTS = matrix(
    alert("CareflowPatroniMemberDown", "pending", "warning", 5, 19, instance="pg1", job="patroni"),
    alert("CareflowPatroniMemberDown", "firing", "warning", 20, 34, instance="pg1", job="patroni"),
    alert("CareflowDiskAlmostFull", "firing", "warning", -10, 40, instance="backup1", mountpoint="/var"),
    alert("CareflowHAProxyBackendDown", "pending", "critical", 2, 8, instance="lb1", proxy="primary"),
)


class FakeOpener:
    """Answers by query: ALERTS, then each panel (its own lines), or an error for the queries in ``fail``."""

    def __init__(self, fail: frozenset[str] = frozenset(), refuse: bool = False) -> None:
        self.asked: list[str] = []
        self.fail, self.refuse = fail, refuse

    def __call__(self, url: str, timeout: float) -> io.BytesIO:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["query"]
        self.asked.append(query)
        if self.refuse:
            raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
        if query in self.fail:
            raise urllib.error.HTTPError(url, 503, "unavailable", {}, io.BytesIO(b'{"error":"shutting down"}'))
        if query == "ALERTS":
            return io.BytesIO(ALERTS)
        panel = next(p for p in PANELS if p.query == query)
        return io.BytesIO(matrix(
            ({panel.legend: "pg1"}, [(T0 - 10 + t, float(t * 1024)) for t in range(10)] + [(T0, math.nan)]),
            ({panel.legend: "pg2"}, [(T0 - 10 + t, float(t)) for t in range(50)]),
        ))


def client(opener: FakeOpener) -> PrometheusClient:
    return PrometheusClient("http://127.0.0.1:1", timeout_s=1.0, opener=opener)


def view(**kwargs) -> ServerView:
    return collect(client(FakeOpener(**kwargs)), T0 - 10, T0 + 40)


def test_collect_asks_for_the_alerts_and_every_panel_over_the_window():
    opener = FakeOpener()
    v = collect(client(opener), T0 - 10, T0 + 40)
    assert v.available and v.note == ""
    assert opener.asked == ["ALERTS", *[p.query for p in PANELS]]
    assert [p.key for p, _ in v.panels] == ["tps", "lag", "connections", "wal", "lock_waits"]
    assert all(len(r.series) == 2 for _, r in v.panels)


def test_alert_spans_fold_pending_and_firing_and_mark_what_was_already_active():
    v = view()
    by = {(a.alertname, a.target): a for a in v.alerts}
    down = by["CareflowPatroniMemberDown", "pg1"]
    assert (down.pending_at, down.firing_at, down.last_seen) == (T0 + 5, T0 + 20, T0 + 34)
    assert not down.since_start
    assert by["CareflowDiskAlmostFull", "backup1//var"].since_start
    backend = by["CareflowHAProxyBackendDown", "lb1/primary"]
    assert backend.firing_at is None and backend.severity == "critical"
    # fired(): caused in the window, firing, about the node asked for
    assert v.fired("CareflowPatroniMemberDown", ("pg1",)) == down
    assert v.fired("CareflowPatroniMemberDown", ("pg2",)) is None
    assert v.fired("CareflowDiskAlmostFull") is None  # already firing before the run: not its doing
    assert v.fired("CareflowHAProxyBackendDown") is None  # pending only
    assert v.raised("CareflowHAProxyBackendDown", ("lb1",)) == backend and v.raised("CareflowDiskAlmostFull") is None
    assert v.firing() == (down,) and v.firing("critical") == ()
    assert down.about(("pg1",)) and backend.about(("lb1",)) and not backend.about(("lb",))


def test_a_refused_prometheus_costs_one_request_and_says_why():
    opener = FakeOpener(refuse=True)
    v = collect(client(opener), T0, T0 + 30)
    assert opener.asked == ["ALERTS"]  # not one timeout per panel
    assert not v.available and v.panels == () and v.alerts == ()
    assert v.note.startswith(f"{UNAVAILABLE}: cannot reach Prometheus at http://127.0.0.1:1")


def test_a_panel_that_fails_half_way_makes_the_whole_view_unavailable():
    v = view(fail=frozenset({PANELS[2].query}))
    assert not v.available and v.panels == ()
    assert "HTTP 503: shutting down" in v.note


def test_markdown_and_json_of_an_unavailable_view_say_so_and_hold_no_numbers():
    v = view(refuse=True)
    text = "\n".join(server_view.markdown(v, T0, "the fault"))
    assert UNAVAILABLE in text and "| panel |" not in text
    assert server_view.to_json(v, T0) == {"available": False, "unavailable": v.note}
    assert server_view.to_json(None, T0)["available"] is False
    assert UNAVAILABLE in "\n".join(server_view.markdown(None, T0, "the fault"))


def test_markdown_lists_alerts_with_their_delays_and_each_lines_peak():
    text = "\n".join(server_view.markdown(view(), T0, "the fault"))
    assert "| CareflowPatroniMemberDown | pg1 | warning | +5 s | +20 s | +34 s |" in text
    assert "(already active at the start)" in text
    # pg1's lag peaks at 9 KiB at -1 s (the NaN after it is not a value); pg2's at 49 at +39 s
    assert "| replication lag per replica | pg1 | 9.0 KiB | -1 s |" in text
    assert "| connections per node | pg2 | 49 sessions | +39 s |" in text


def test_json_keeps_nan_as_null_and_times_from_the_origin():
    data = server_view.to_json(view(), T0)
    lag = data["panels"]["lag"]["series"][0]
    assert lag["line"] == "pg1" and lag["points"][0] == [-10.0, 0.0] and lag["points"][-1] == [0.0, None]
    assert data["alerts"][0]["alert"] == "CareflowDiskAlmostFull" and data["alerts"][0]["since_start"] is True
    json.dumps(data, allow_nan=False)  # strict JSON: no NaN left


def test_draw_writes_the_reason_instead_of_empty_panels_when_unavailable():
    fig, axes = plt.subplots(server_view.panel_rows(view(refuse=True)), 1, squeeze=False)
    try:
        server_view.draw(axes[:, 0], view(refuse=True), T0)
        ax = axes[0, 0]
        assert len(ax.lines) == 0 and any(UNAVAILABLE in t.get_text() for t in ax.texts)
    finally:
        plt.close(fig)


def test_draw_gives_each_panel_its_lines_and_the_alert_lane_its_bars():
    v = view()
    fig, axes = plt.subplots(server_view.panel_rows(v), 1, squeeze=False)
    try:
        server_view.draw(axes[:, 0], v, T0, marks=[(0.0, "red")])
        alert_lane, *panels = axes[:, 0]
        assert len(alert_lane.patches) == 4  # member down: pending + firing; disk: firing; backend: pending
        for ax in panels:
            assert len([ln for ln in ax.lines if ln.get_label() in ("pg1", "pg2")]) == 2
        lag = panels[1]
        assert max(lag.lines[0].get_ydata()[:-1]) == pytest.approx(9.0)  # its peak is 9 KiB: drawn in KiB
        assert lag.get_ylabel() == "KiB" and lag.get_ylim()[0] == 0
    finally:
        plt.close(fig)


def test_a_panel_without_samples_says_so_instead_of_drawing_a_zero_line():
    v = view()
    panel, result = v.panels[0]
    empty = replace(v, panels=((panel, replace(result, series=())), *v.panels[1:]))
    fig, axes = plt.subplots(server_view.panel_rows(empty), 1, squeeze=False)
    try:
        server_view.draw(axes[:, 0], empty, T0)
        assert len(axes[1, 0].lines) == 0 and "no samples for" in axes[1, 0].texts[0].get_text()
    finally:
        plt.close(fig)


@pytest.mark.parametrize(("value", "unit", "shown"), [
    (3.5 * 2**20, "bytes", "3.5 MiB"), (12.0 * 2**20, "bytes/s", "12.0 MiB/s"), (512, "bytes", "512 B"),
    (2048, "bytes/s", "2.0 KiB/s"), (41.3, "tx/s", "41 tx/s"), (2.5, "sessions", "2.5 sessions"),
    (0.0, "sessions", "0 sessions"),
])
def test_human_units(value, unit, shown):
    assert human(value, unit) == shown


def test_steps_stay_within_the_point_budget():
    assert step_for(T0, T0 + 90) == 1.0
    assert step_for(T0, T0 + 3600) == 3.0 and server_view.MAX_STEPS >= 3600 / 3


def test_alert_spans_ignore_series_without_values():
    gone = Series({"alertname": "X", "alertstate": "firing"}, ((T0, math.nan),))
    real = Series({"alertname": "Y", "alertstate": "firing"}, ((T0 + 3, 1.0),))
    assert [a.alertname for a in alert_spans((gone, real), T0, 1.0)] == ["Y"]


# -- the drill's monitoring verdicts -------------------------------------------------------------------------


def test_an_expected_alert_that_was_raised_passes_with_its_moments():
    (v,) = alert_verdicts(("CareflowPatroniMemberDown",), False, ("pg1",), view(), T0)
    assert v.ok is True and v.detail == "pending +5 s, firing +20 s from the fault (±5 s)"
    (pending,) = alert_verdicts(("CareflowHAProxyBackendDown",), False, ("lb1",), view(), T0)
    assert pending.ok is True and pending.detail == "pending +2 s, firing - from the fault (±5 s)"


def test_an_expected_alert_never_raised_fails():
    (v,) = alert_verdicts(("CareflowPatroniMemberDown",), False, ("pg2",), view(), T0)
    assert v.ok is False and v.detail == "neither pending nor firing while observed"
    (old,) = alert_verdicts(("CareflowDiskAlmostFull",), False, ("backup1",), view(), T0)
    assert old.ok is False  # already firing when the window opened: not this fault's doing


def test_an_unavailable_monitoring_host_never_fails_a_drill():
    verdicts = alert_verdicts(("CareflowPatroniMemberDown",), True, ("pg1",), view(refuse=True), T0)
    assert [v.ok for v in verdicts] == [None, None]
    assert all(UNAVAILABLE in v.detail for v in verdicts)
    assert [v.ok for v in alert_verdicts(("CareflowNoLeader",), False, ("pg1",), None, T0)] == [None]


def test_a_planned_operation_fails_when_a_critical_alert_fires():
    v = view()
    (quiet,) = alert_verdicts((), True, ("pg1",), v, T0)
    assert quiet.ok is True  # only a warning fired, and the critical one stayed pending
    paging = replace(v, alerts=tuple(replace(a, severity="critical") for a in v.alerts))
    (loud,) = alert_verdicts((), True, ("pg1",), paging, T0)
    assert loud.ok is False and loud.detail == "CareflowPatroniMemberDown on pg1"


def test_every_panel_query_is_valid_promql(tmp_path):
    """promtool parses each query as a recording rule: a typo in a panel fails here, not on the lab."""
    rules = {"groups": [{"name": "panels", "rules": [
        {"record": f"careflow:panel_{p.key}", "expr": p.query} for p in PANELS]}]}
    path = tmp_path / "panels.yml"
    path.write_text(json.dumps(rules))
    proc = promtool("check", "rules", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(PANELS)} rules found" in proc.stdout + proc.stderr


def test_settings_without_a_monitoring_host_give_an_unavailable_view_without_a_request(tmp_path):
    """A drill against a test's local server (no mon1 port in its settings) is reported, never a KeyError."""
    from types import MappingProxyType

    from careflow_ha.settings import Settings

    settings = Settings(project_dir=tmp_path, ports=MappingProxyType({"CAREFLOW_RW_PORT": 5432}),
                        secrets=MappingProxyType({}))
    v = server_view.collect_lab(settings, T0, T0 + 30)
    assert not v.available and v.note == f"{UNAVAILABLE}: these settings name no monitoring host"
