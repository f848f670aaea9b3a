"""A load report carries the server's side next to the client's: panels in server.png, a section, JSON."""

from __future__ import annotations

import json

from PIL import Image

from careflow_ha.cluster.prometheus import RangeResult, Series
from careflow_ha.cluster.server_view import PANELS, AlertSpan, ServerView
from careflow_ha.load.analysis import Request
from careflow_ha.load.report import write_report

T0 = 1_796_137_200.0  # 2026-12-01 15:00 UTC: 00:00 on 2 December in Seoul
META = {"run_id": "r1", "started_utc": "2026-12-01 15:00:00 UTC", "profile": "clinic-day", "profile_description": "",
        "users": 2, "spawn_rate": 1, "duration_s": 30, "processes": 1, "think_scale": 1.0, "target_rw": "rw",
        "target_ro": "ro", "check_routing": False}


def rows() -> list[Request]:
    return [Request(T0 + i * 0.5, "visit", "rw" if i % 2 else "ro", i % 2, True, 8.0, "pg1", i % 2 == 0)
            for i in range(60)]


def view() -> ServerView:
    panels = tuple((p, RangeResult(p.query, (Series({p.legend: "pg1"}, tuple((T0 + t, 3.0) for t in range(30))),)))
                   for p in PANELS)
    alerts = (AlertSpan("CareflowReplicationLag", "pg3", "warning", T0 + 4, T0 + 12, T0 + 20, since_start=False),)
    return ServerView(T0 - 10, T0 + 30, 1.0, panels, alerts)


def test_a_load_report_has_the_server_panels_and_their_section(tmp_path):
    rep = write_report(tmp_path, rows(), dict(META), [], T0, T0 + 30, server=view())
    assert rep["server"]["available"] and set(rep["server"]["panels"]) == {p.key for p in PANELS}
    md = (tmp_path / "report.md").read_text()
    assert "## Server view (Prometheus on mon1)" in md and "![server.png](server.png)" in md
    assert "| CareflowReplicationLag | pg3 | warning | +4 s | +12 s | +20 s |" in md
    with Image.open(tmp_path / "server.png") as png:  # an alert lane and five panels
        assert png.height >= 110 * (0.6 + 1.35 * (1 + len(PANELS))) - 2
    assert json.loads((tmp_path / "report.json").read_text())["server"]["alerts"][0]["firing_s"] == 12.0


def test_without_prometheus_the_report_says_so_and_draws_no_empty_panel(tmp_path):
    down = ServerView(T0, T0 + 30, 1.0, unavailable="cannot reach Prometheus at http://127.0.0.1:9090 (refused)")
    rep = write_report(tmp_path, rows(), dict(META), [], T0, T0 + 30, server=down)
    assert rep["server"] == {"available": False, "unavailable": down.note}
    assert "server metrics unavailable: cannot reach Prometheus" in (tmp_path / "report.md").read_text()
    with Image.open(tmp_path / "server.png") as png:  # one line of text, not six empty charts
        assert png.height < 110 * (0.6 + 1.35 * 2)
