"""Summaries and the report of the replication-lag watch, from made-up samples."""

from __future__ import annotations

import json

import pytest

from careflow_ha.data.replication_lag import LagSample, render_line, summarize, write_report
from careflow_ha.errors import CheckFailed

MB = 2**20


def _samples() -> list[LagSample]:
    out = []
    for i in range(21):  # pg2 sync, lag growing to 20 MB at +20 s; pg3 async, constant 5 MB
        out.append(LagSample(100.0 + i, "pg2", "streaming", "sync", i * MB // 2, i * MB, 0.01, i / 10))
        out.append(LagSample(100.0 + i, "pg3", "streaming", "async", 5 * MB, 5 * MB, None, None))
    out.append(LagSample(200.0, "pg2", "streaming", "sync", 0, 99 * MB, 0.0, 9.9))  # after the commit
    return out


def test_summary_counts_only_the_load_and_names_the_catch_up():
    out = summarize(_samples(), started_at=100.0, committed_at=120.0, caught_up_s={"pg2": 1.5, "pg3": None})
    assert out["pg2"]["max_replay_mb"] == 20.0, "the sample after the commit is not the load's"
    assert out["pg2"]["samples"] == 21 and out["pg2"]["sync_states"] == ["sync"]
    assert out["pg2"]["max_flush_mb"] == 10.0 and out["pg2"]["max_replay_lag_s"] == 2.0
    assert 18.0 <= out["pg2"]["p95_replay_mb"] < 20.0
    assert out["pg3"]["max_replay_lag_s"] is None and out["pg3"]["caught_up_s"] is None
    lines = render_line(out).splitlines()
    assert "pg2 (sync)" in lines[0] and "1.5 s after the commit" in lines[0]
    assert "NOT within the wait" in lines[1]
    assert render_line({}) == "replication: no standby was streaming during the load"


def _meta() -> dict:
    return {"rows": 1000, "target": "port 5000", "started_at": 100.0, "committed_at": 120.0,
            "commit_lsn": "0/3000000", "seconds": 20.0, "rows_per_s": 50}


def test_report_has_markdown_json_and_png(tmp_path):
    samples = _samples()
    per = summarize(samples, 100.0, 120.0, {"pg2": 1.5, "pg3": 0.2})
    md = write_report(tmp_path / "r", _meta(), samples, per, {"pw": "s3cret-value"})
    assert "| pg2 | sync | 21 | 20.0 |" in md.read_text()
    data = json.loads((tmp_path / "r" / "result.json").read_text())
    assert data["standbys"]["pg3"]["caught_up_s"] == 0.2 and len(data["samples"]) == len(samples)
    assert (tmp_path / "r" / "lag.png").read_bytes()[:4] == b"\x89PNG"


def test_a_report_with_a_secret_in_it_is_refused(tmp_path):
    with pytest.raises(CheckFailed):
        write_report(tmp_path / "r", {**_meta(), "target": "postgresql://u:s3cret-value@h"}, [], {},
                     {"pw": "s3cret-value"})
    assert not (tmp_path / "r").exists()
