"""A series of drill runs summed up: nearest-rank percentiles against the targets, and every write counted."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from careflow_ha.drills.checker import SetCheck
from careflow_ha.drills.series import nearest_rank, render_lines, summarize, write_series_report
from careflow_ha.errors import CheckFailed


def run(name: str, outage: float | None, new: str | None = "pg2", sync: bool = True, lost: int = 0,
        ambiguous: int = 0, check: bool = True, preset: str = "fast"):
    set_check = SetCheck(ok=tuple(range(100)), lost=tuple(range(1000, 1000 + lost)),
                         ambiguous_present=tuple(range(2000, 2000 + ambiguous))) if check else None
    analysis = SimpleNamespace(write_outage=SimpleNamespace(seconds=outage), set_check=set_check,
                               old_primary="pg1", new_primary=new, split_brain=(),
                               failed_over=new not in (None, "pg1"))
    return SimpleNamespace(name=name, preset=preset, synchronous=sync, passed=outage is not None,
                           analysis=analysis)


@pytest.mark.parametrize(("values", "p", "expected"), [
    ([3.0, 1.0, 2.0], 0.5, 2.0),
    (list(range(1, 11)), 0.95, 10),  # p95 of 10 runs is the worst one, not an interpolation
    (list(range(1, 21)), 0.95, 19),
    ([4.2], 0.95, 4.2),
    ([], 0.5, None),
])
def test_nearest_rank_is_a_value_some_run_had(values, p, expected):
    assert nearest_rank(values, p) == expected


def test_a_series_is_judged_per_drill_by_its_p95_and_a_run_that_never_recovered_fails_it():
    runs = [run("switchover", s) for s in (1.1, 1.2, 1.3, 4.1)] + [run("primary-node-loss", s) for s in (20.0, 21.5)]
    summary = summarize(runs)
    by = {d.drill: d for d in summary.drills}
    assert (by["switchover"].p50_s, by["switchover"].p95_s, by["switchover"].target_s) == (1.2, 4.1, 2.0)
    assert by["switchover"].p95_within_target is False
    assert by["primary-node-loss"].p95_within_target is True
    never = summarize([run("primary-node-loss", 20.0), run("primary-node-loss", None)])
    assert never.drills[0].never_recovered == 1 and never.drills[0].p95_within_target is False


def test_targets_apply_to_the_tuned_preset_only():
    (d,) = summarize([run("switchover", 9.0, preset="default")]).drills
    assert d.target_s is None and d.p95_within_target is None


def test_every_write_is_counted_and_losses_in_synchronous_mode_are_apart():
    runs = [run("primary-node-loss", 20.0, lost=2), run("primary-node-loss", 22.0, sync=False, lost=5, ambiguous=3),
            run("switchover", 1.0, new=None), run("switchover", 1.0, check=False)]
    summary = summarize(runs)
    assert summary.set_check["lost"] == 7 and summary.lost_in_synchronous_mode == 2
    assert summary.set_check["ambiguous_present"] == 3 and summary.unmeasured == 1
    assert (summary.runs, summary.failovers, summary.synchronous_failovers) == (4, 3, 2)
    last = render_lines(summary)[-1]
    assert "lost 7 (in synchronous mode 2)" in last and "1 run(s) not verifiable" in last


def test_the_report_is_markdown_json_and_png_and_links_each_run(tmp_path):
    runs = [run("switchover", 1.5), run("switchover", 1.7)]
    folder = write_series_report(runs, ["/x/reports/drills/A-switchover", "/x/reports/drills/B-switchover"],
                                 tmp_path, {"PASSWORD": "s3cret-value"})
    assert folder.parent == tmp_path / "drill-series"
    data = json.loads((folder / "result.json").read_text())
    assert data["drills"][0]["p95_s"] == 1.7 and data["reports"] == ["A-switchover", "B-switchover"]
    md = (folder / "report.md").read_text()
    assert "(../../drills/A-switchover/report.md)" in md and "| switchover | fast | on | 2 | 2 |" in md
    assert (folder / "outage.png").stat().st_size > 1000


def test_the_report_refuses_to_write_a_secret(tmp_path):
    with pytest.raises(CheckFailed):
        write_series_report([run("switchover", 1.0)], ["/x/s3cret-value"], tmp_path, {"PASSWORD": "s3cret-value"})
