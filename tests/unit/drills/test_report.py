"""Drill reports from a recorded (synthetic) failover: files, figures, index, async explanation, no secrets."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from PIL import Image

from careflow_ha.cluster.model import ClusterSnapshot, HistoryEntry, Member
from careflow_ha.cluster.prometheus import RangeResult, Series
from careflow_ha.cluster.records import Ack, NodeSample, NodeWrite, ProbeError, Recording
from careflow_ha.cluster.server_view import PANELS, AlertSpan, ServerView
from careflow_ha.cluster.timing import TIMING_PRESETS
from careflow_ha.drills.analysis import analyse
from careflow_ha.drills.report import write_index, write_report
from careflow_ha.drills.runner import DrillRun
from careflow_ha.drills.targets import compare_verdict, verdicts
from careflow_ha.errors import CheckFailed

T0 = 1_795_780_800.0  # 2026-11-27 12:00 UTC
SECRETS = {"CAREFLOW_APP_PASSWORD": "app-pw-not-in-reports", "CAREFLOW_PATRONI_API_PASSWORD": "api-pw-secret"}


def members(leader: str, others: dict[str, tuple[str, str]], tl: int) -> tuple[Member, ...]:
    return (Member(leader, "leader", "running", tl), *[Member(n, r, s, tl) for n, (r, s) in others.items()])


def make_run(
    *,
    synchronous: bool = True,
    lost_tail: int = 0,
    outage_end: float = 31.0,
    inject_note: str = "",
    extra_rows: tuple[int, ...] = (),
    extra_errors: tuple[ProbeError, ...] = (),
    node_writes: tuple[NodeWrite, ...] = (),
    extra_snapshots: tuple[ClusterSnapshot, ...] = (),
    refused_write: bool = True,
) -> DrillRun:
    """A primary-node-loss run: fault at +10 s, writes back at +outage_end via pg2, pg1 streams again at +45 s."""
    before = [Ack(i, T0 + i * 0.05, T0 + i * 0.05 + 0.004, "pg1") for i in range(200)]  # up to +10 s
    after = [Ack(1000 + i, T0 + outage_end + i * 0.05, T0 + outage_end + i * 0.05 + 0.004, "pg2") for i in range(400)]
    writes = tuple(before + after)
    present = [w.seq for w in writes][: len(writes) - lost_tail] if lost_tail else [w.seq for w in writes]
    present += list(extra_rows)
    snaps = (
        ClusterSnapshot(
            T0 + 9.5, members("pg1", {"pg2": ("sync_standby", "streaming"), "pg3": ("replica", "streaming")}, 1)
        ),
        ClusterSnapshot(
            T0 + 28.0, (Member("pg2", "replica", "streaming", 1), Member("pg3", "replica", "streaming", 1))
        ),
        ClusterSnapshot(T0 + 29.5, members("pg2", {"pg3": ("sync_standby", "streaming")}, 2)),
        ClusterSnapshot(
            T0 + 45.0, members("pg2", {"pg1": ("replica", "streaming"), "pg3": ("sync_standby", "streaming")}, 2)
        ),
    )
    rec = Recording(
        writes=writes,
        write_errors=(*([ProbeError(300, T0 + 12.0, "connect", "connection refused")] if refused_write else []),
                      *extra_errors),
        reads=tuple(Ack(i, T0 + i * 0.1, T0 + i * 0.1, "pg3") for i in range(500)),
        node_samples=tuple(
            [NodeSample(T0 + i * 0.25, "pg1", True if i < 40 else None) for i in range(120)]
            + [NodeSample(T0 + i * 0.25, "pg2", i >= 118) for i in range(200)]
        ),
        node_writes=node_writes,
        snapshots=snaps + extra_snapshots,
        history=(HistoryEntry(1, 50331800, "no recovery target specified", T0 + 29.0, "pg2"),),
        started_at=T0,
        stopped_at=T0 + 50.0,
    )
    fault_at, heal_at = T0 + 10.0, T0 + 22.0
    a = analyse(rec, fault_at=fault_at, heal_at=heal_at, old_primary="pg1", present_seqs=present)
    return DrillRun(
        name="primary-node-loss",
        title="primary node loss",
        description="Container kill of the primary node.",
        preset="fast",
        timing=TIMING_PRESETS["fast"],
        synchronous=synchronous,
        under_load=False,
        run_id="r1",
        targets=("pg1",),
        old_primary="pg1",
        inject_note=inject_note or "container kill pg1",
        heal_note="container start pg1",
        started_at=T0,
        fault_at=fault_at,
        heal_at=heal_at,
        finished_at=T0 + 50.0,
        recovered=True,
        recovery_problem=None,
        expects_failover=True,
        recording=rec,
        analysis=a,
        verdicts=verdicts("primary-node-loss", "fast", synchronous, a, True),
    )


def test_report_folder_has_markdown_json_and_png(tmp_path):
    out = write_report(make_run(), tmp_path, SECRETS)
    assert out.parent == tmp_path / "drills"
    assert out.name == "20261127T120000Z-primary-node-loss-fast"
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "result.json").read_text())
    assert data["write_outage_s"] == pytest.approx(31.004 - 9.954)
    assert data["lost_acked_writes"] == 0 and data["split_brain"] == []
    assert data["new_primary"] == "pg2" and data["rejoin_s"] == pytest.approx(23.0)
    assert data["moments_from_fault_s"]["promotion"] == pytest.approx(19.0)  # Patroni's /history timestamp
    assert data["passed"] is True
    assert data["promotions_after_fault"] == 1
    md = (out / "report.md").read_text()
    for heading in ("## What the client saw", "## Targets", "## Where the time went", "![timeline](timeline.png)"):
        assert heading in md
    assert "Synchronous vs asynchronous" not in md


def test_a_missed_outage_target_names_the_phase_that_took_the_time(tmp_path):
    run = make_run(outage_end=60.0)  # lease 18 s, promotion 1 s, HAProxy + reconnect 31 s
    assert not run.passed
    md = (write_report(run, tmp_path, SECRETS) / "report.md").read_text()
    assert "The outage target was missed; most of the outage went to **HAProxy detection + client reconnect**" in md


def test_async_run_counts_lost_writes_and_explains_the_trade_off(tmp_path):
    out = write_report(make_run(synchronous=False, lost_tail=7), tmp_path, SECRETS)
    data = json.loads((out / "result.json").read_text())
    assert data["lost_acked_writes"] == 7 and len(data["lost_acked_seqs"]) == 7
    md = (out / "report.md").read_text()
    assert "## Synchronous vs asynchronous: the trade-off" in md
    assert "| acknowledged writes lost | 7 |" in md
    assert out.name.endswith("-async")


def test_lost_writes_in_sync_mode_fail_the_run():
    run = make_run(lost_tail=2)
    lost = [v for v in run.verdicts if v.target.startswith("0 lost")]
    assert lost[0].ok is False and not run.passed


def test_the_set_check_is_in_json_and_markdown_and_one_source_for_lost(tmp_path):
    """Ambiguous writes are reported with how they resolved; lost_acked_writes is the set check's lost."""
    errors = (
        ProbeError(301, T0 + 10.2, "ambiguous", "server closed the connection unexpectedly"),
        ProbeError(302, T0 + 10.3, "ambiguous", "canceling wait for synchronous replication"),
    )
    out = write_report(make_run(lost_tail=2, extra_rows=(301,), extra_errors=errors), tmp_path, SECRETS)
    data = json.loads((out / "result.json").read_text())
    check = data["set_check"]
    assert check["counts"]["lost"] == data["lost_acked_writes"] == 2
    assert check["lost"] == data["lost_acked_seqs"] == [1398, 1399]
    assert (check["ambiguous_present"], check["ambiguous_absent"]) == ([301], [302])
    assert check["counts"]["refused_absent"] == 1 and check["anomalies"] == 2
    assert data["ambiguous_writes"] == 2 and data["write_attempts"] == 600 + 3
    md = (out / "report.md").read_text()
    assert "ambiguous 2 (1 turned up, 1 did not)" in md
    assert "- lost: 2 (seqs 1398, 1399)" in md


@pytest.mark.parametrize("synchronous", [True, False])
def test_unexpected_or_duplicated_rows_fail_the_run_in_either_mode(tmp_path, synchronous):
    run = make_run(synchronous=synchronous, extra_rows=(5, 77_777))  # seq 5 twice; 77777 never attempted
    verdict = next(v for v in run.verdicts if v.target.startswith("0 unexpected"))
    assert verdict.ok is False and not run.passed
    assert verdict.detail == "1 unexpected, 1 duplicated, 0 refused yet present"
    data = json.loads((write_report(run, tmp_path, SECRETS) / "result.json").read_text())
    assert (data["set_check"]["unexpected"], data["set_check"]["duplicated"]) == ([77_777], [5])


def test_a_clean_run_passes_the_set_check_verdict():
    verdict = next(v for v in make_run().verdicts if v.target.startswith("0 unexpected"))
    assert verdict.ok is True


def test_per_node_writes_under_another_leader_are_split_brain_in_the_report(tmp_path):
    """pg1 (not partitioned off from the host, say) acknowledges a write at +30 s, while pg2 holds the key."""
    node_writes = (
        NodeWrite("pg2", 1, T0 + 30.0, T0 + 30.01, "acked"),
        NodeWrite("pg1", 1, T0 + 30.0, T0 + 30.02, "acked"),
        NodeWrite("pg3", 1, T0 + 30.0, T0 + 30.01, "refused"),
    )
    # The poller saw pg2 as leader every second from +29.5 s (the rule needs consecutive snapshots, not one).
    polls = tuple(
        ClusterSnapshot(T0 + 29.5 + i, members("pg2", {"pg3": ("sync_standby", "streaming")}, 2)) for i in range(16)
    )
    run = make_run(node_writes=node_writes, extra_snapshots=polls)
    verdict = next(v for v in run.verdicts if v.target.startswith("no write acknowledged on a node"))
    assert verdict.ok is False and verdict.detail == "1 write(s) on pg1"
    out = write_report(run, tmp_path, SECRETS)
    data = json.loads((out / "result.json").read_text())
    by_writes = data["split_brain_by_writes"]
    assert by_writes["acknowledged_count"] == 1 and by_writes["acknowledged"][0]["leader"] == "pg2"
    assert set(by_writes["coverage"]) == {"pg1", "pg2", "pg3"}
    md = (out / "report.md").read_text()
    assert "- pg1 acknowledged seq 1 (+20.00 s to +20.02 s) while pg2 held the leader key" in md


def test_a_run_without_per_node_writers_says_so_and_still_reports_sampling_coverage(tmp_path):
    run = make_run()
    assert not any(v.target.startswith("no write acknowledged on a node") for v in run.verdicts)
    out = write_report(run, tmp_path, SECRETS)
    data = json.loads((out / "result.json").read_text())
    assert data["split_brain_by_writes"] is None
    # pg1 answered for 10 s of the 50 s run, pg2 throughout.
    assert data["sampling_coverage"]["pg1"] == pytest.approx(10.0 / 50.0, abs=0.01)
    assert data["sampling_coverage"]["pg2"] == pytest.approx(49.75 / 50.0, abs=0.01)
    md = (out / "report.md").read_text()
    assert "| writes acknowledged on a node while another held the leader key | not measured" in md
    assert "pg1 20%, pg2 100%" in md


def test_index_shows_invented_and_ambiguous_rows_and_tolerates_old_results(tmp_path):
    errors = (ProbeError(301, T0 + 10.2, "ambiguous", "server closed the connection unexpectedly"),)
    out = write_report(make_run(extra_rows=(5, 77_777), extra_errors=errors), tmp_path, SECRETS)
    old = tmp_path / "drills" / "20200101T000000Z-switchover-fast"
    old.mkdir()
    (old / "result.json").write_text(json.dumps({"drill": "switchover", "lost_acked_writes": 0, "started_at": 1.58e9}))
    rows = [line for line in write_index(tmp_path / "drills").read_text().splitlines() if line.startswith("| 20")]
    assert out.name in rows[0] and "| 0 | 2 | 1 |" in rows[0], rows[0]  # lost 0, invented 2, ambiguous 1
    assert "| 0 | ? | ? |" in rows[1], "a result from before the set checker says unknown, not 0"


def test_index_lists_every_run_newest_first_and_is_rebuilt_idempotently(tmp_path):
    first = write_report(make_run(), tmp_path, SECRETS)
    second = write_report(make_run(synchronous=False, lost_tail=3), tmp_path, SECRETS)
    third = write_report(make_run(), tmp_path, SECRETS)  # same second: a distinct folder
    assert len({first, second, third}) == 3
    index = (tmp_path / "drills" / "index.md").read_text()
    rows = [line for line in index.splitlines() if line.startswith("| 2026")]
    assert len(rows) == 3
    assert "| off |" in index and "| 3 |" in index
    assert all(row.count("|") == 13 for row in rows), "every row has the header's 12 columns"
    assert write_index(tmp_path / "drills").read_text() == index


def test_a_secret_in_any_field_stops_the_report(tmp_path):
    run = make_run(inject_note="psql postgresql://careflow_app:app-pw-not-in-reports@127.0.0.1:5000/careflow")
    with pytest.raises(CheckFailed, match="secret"):
        write_report(run, tmp_path, SECRETS)
    assert not (tmp_path / "drills").exists()


def test_reports_never_contain_secrets_or_dsns(tmp_path):
    out = write_report(make_run(), tmp_path, SECRETS)
    for f in ("result.json", "report.md"):
        text = (out / f).read_text()
        assert "postgresql://" not in text
        assert not any(v in text for v in SECRETS.values())


@pytest.mark.parametrize(
    ("default_s", "fast_s", "ok"),
    [(36.0, 20.0, True), (36.0, 24.0, False), (None, 20.0, None), (36.0, None, None)],
)
def test_compare_ratio_target(default_s, fast_s, ok):
    assert compare_verdict(default_s, fast_s).ok is ok


def _server_view(available: bool = True):
    start, end = T0, T0 + 50.0
    if not available:
        return ServerView(start, end, 1.0, unavailable="cannot reach Prometheus at http://127.0.0.1:9090 (refused)")
    panels = tuple((p, RangeResult(p.query, (Series({p.legend: "pg2"}, tuple((T0 + t, float(t)) for t in range(50))),)))
                   for p in PANELS)
    down = AlertSpan("CareflowPatroniMemberDown", "pg1", "warning", T0 + 15, T0 + 30, T0 + 40, since_start=False)
    return ServerView(start, end, 1.0, panels, (down,))


def test_the_report_carries_the_server_view_its_alerts_and_panels(tmp_path):
    out = write_report(replace(make_run(), server=_server_view()), tmp_path, SECRETS)
    data = json.loads((out / "result.json").read_text())
    assert data["server"]["available"] is True
    assert data["server"]["alerts"][0] == {"alert": "CareflowPatroniMemberDown", "on": "pg1", "severity": "warning",
                                           "pending_s": 5.0, "firing_s": 20.0, "last_seen_s": 30.0,
                                           "since_start": False}  # seconds from the fault at +10 s
    assert set(data["server"]["panels"]) == {"tps", "lag", "connections", "wal", "lock_waits"}
    md = (out / "report.md").read_text()
    assert "## Server view (Prometheus on mon1)" in md
    assert "| CareflowPatroniMemberDown | pg1 | warning | +5 s | +20 s | +30 s |" in md
    with Image.open(out / "timeline.png") as png:  # the timeline plus an alert lane and five panels
        assert png.height > 110 * (1.2 + 0.55 * 4 + 5 * 1.3)


def test_a_report_without_prometheus_says_server_metrics_unavailable(tmp_path):
    out = write_report(replace(make_run(), server=_server_view(available=False)), tmp_path, SECRETS)
    md = (out / "report.md").read_text()
    assert "server metrics unavailable: cannot reach Prometheus" in md
    assert json.loads((out / "result.json").read_text())["server"]["available"] is False
    assert json.loads((out / "result.json").read_text())["passed"] is True  # an observer never fails a drill
