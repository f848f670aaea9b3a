"""Pure rules of the load tests: shapes, durations, outages, routing, backoff, CLI flags (no server)."""

from __future__ import annotations

import random

import pytest
from click.testing import CliRunner

from careflow_ha.errors import UsageError
from careflow_ha.load.analysis import Request, outages, percentile, reads_by_node, summarize
from careflow_ha.load.profiles import PROFILES, users_at
from careflow_ha.load.report import routing_violations
from careflow_ha.load.runner import LoadConfig, parse_duration


@pytest.mark.parametrize(
    ("shape", "t", "expected"),
    [
        ("steady", 0, 10), ("steady", 99.9, 10), ("steady", 100, None),
        ("ramp", 0, 1), ("ramp", 100 / 6, 5), ("ramp", 40, 10), ("ramp", 99, 10), ("ramp", 100, None),
        ("spike", 10, 4), ("spike", 40, 10), ("spike", 59.9, 10), ("spike", 60, 4), ("spike", 100, None),
    ],
)  # fmt: skip
def test_shapes(shape: str, t: float, expected: int | None) -> None:
    assert users_at(shape, t, 100, 10) == expected  # type: ignore[arg-type]


def test_profiles_name_every_user_class() -> None:
    for p in PROFILES.values():
        assert set(p.weights) == {"reception", "lab", "vet", "analyst"} and min(p.weights.values()) >= 1


@pytest.mark.parametrize(("raw", "seconds"), [("90", 90), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("1.5", 1.5)])
def test_parse_duration(raw: str, seconds: float) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["", "5x", "m", "1m5", "-3"])
def test_parse_duration_rejects(raw: str) -> None:
    with pytest.raises(UsageError, match="90s, 5m"):
        parse_duration(raw)


def _cfg(**kw: object) -> LoadConfig:
    base = {"users": 5, "spawn_rate": 1.0, "duration_s": 10.0, "dsn_rw": "postgresql://a:secret@h:1/d",
            "dsn_ro": "postgresql://a:secret@h:2/d", "reports_dir": "/tmp"}
    base.update(kw)
    return LoadConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "flag"),
    [({"users": 0}, "--users"), ({"spawn_rate": 0}, "--spawn-rate"), ({"duration_s": 0}, "--duration"),
     ({"processes": 0}, "--processes"), ({"think_scale": -1}, "--think-scale"), ({"profile": "x"}, "--profile")],
)
def test_config_rejects_bad_numbers_naming_the_flag(kw: dict, flag: str) -> None:
    with pytest.raises(UsageError, match=flag):
        _cfg(**kw).validated()
    _cfg().validated()  # and the defaults pass


def R(ts: float, ok: bool, endpoint: str = "rw", user: int = 1, error: str = "", server: str = "pg1",
      recovery: bool | None = False, op: str = "op") -> Request:
    return Request(ts, op, endpoint, user, ok, 10.0, server, recovery, "" if ok else (error or "lost: gone"))


def test_no_failures_no_outage() -> None:
    assert outages([R(t, True) for t in range(10)], "rw") == []


def test_failed_queries_on_a_healthy_route_are_not_an_outage() -> None:
    rows = [R(0, True), R(1, False, error="query: duplicate key"), R(2, True)]
    assert outages(rows, "rw") == []


def test_full_outage_runs_from_last_success_to_first_success() -> None:
    rows = [R(0, True), R(1, True), R(2, False, error="lost: closed"), R(3, False, error="connect: refused"),
            R(4.5, False, error="connect: refused"), R(6, True)]
    (o,) = outages(rows, "rw")
    assert o.start == pytest.approx(1.01) and o.end == pytest.approx(6.01)
    assert o.gap_s == pytest.approx(5.0) and o.failures == 3 and o.first_error == "lost: closed"


def test_partial_loss_shows_a_small_gap_and_the_user_wait() -> None:
    """One of two replicas goes: its users reconnect; the endpoint kept answering the others."""
    rows = [R(t / 2, True, "ro", user=2) for t in range(20)]
    rows += [R(0, True, "ro", user=1), R(3, False, "ro", user=1), R(7, True, "ro", user=1)]
    (o,) = outages(rows, "ro")
    assert o.gap_s is not None and o.gap_s <= 0.5 + 1e-9
    assert o.worst_user_s == pytest.approx(7.0)


def test_outage_still_open_at_the_end() -> None:
    (o,) = outages([R(0, True), R(1, False), R(2, False)], "rw")
    assert o.end is None and o.gap_s is None


def test_other_endpoint_is_ignored() -> None:
    assert outages([R(0, True, "ro"), R(1, False, "ro"), R(2, True, "ro")], "rw") == []


def test_reads_by_node_and_routing() -> None:
    rows = [R(1, True, "ro", server="pg2", recovery=True), R(2, True, "ro", server="pg3", recovery=True),
            R(3, True, "ro", server="pg2", recovery=True), R(4, True, "rw", server="pg1"),
            R(50, True, "ro", server="pg1", recovery=False)]
    nodes = reads_by_node(rows)
    assert [(n["node"], n["role"], n["reads"]) for n in nodes] == [("pg2", "replica", 2), ("pg1", "PRIMARY", 1),
                                                                  ("pg3", "replica", 1)]
    assert len(routing_violations(rows, [])) == 1
    assert routing_violations(rows, [{"at": 45.0, "detail": "pg1: replica -> leader"}]) == []  # during a switch
    assert summarize(rows, 0, 60)["reads_on_primary"] == 1


def test_percentile_nearest_rank() -> None:
    assert percentile([], 95) is None
    assert percentile([5.0], 99) == 5.0
    values = list(range(1, 101))
    random.Random(1).shuffle(values)
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (50, 95, 99)


def test_backoff_grows_and_resets() -> None:
    pytest.importorskip("gevent")
    from careflow_ha.load.client import Backoff

    b = Backoff(first=0.2, cap=3.0, rng=random.Random(0))
    delays = [b.next_delay() for _ in range(8)]
    assert all(0.1 <= d <= 3.0 for d in delays) and max(delays[5:]) > max(delays[:2])
    b.reset()
    assert b.next_delay() <= 0.2


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--users", "0"], "--users"), (["--duration", "soon"], "--duration"),
     (["--dsn-ro", "postgresql://x@h/d"], "--dsn-rw"), (["--dsn-rw", "nonsense"], "libpq URI"),
     (["--processes", "99"], "--processes"), (["--profile", "lunch"], "emr-day")],
)
def test_cli_bad_flags_fail_with_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    from careflow_ha.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["load", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_cli_help_lists_profiles() -> None:
    from careflow_ha.cli import cli

    out = CliRunner().invoke(cli, ["load", "--help"]).output
    assert all(name in out for name in PROFILES)


def test_operation_deck_runs_every_operation_in_exact_proportion() -> None:
    """Each run of len(deck) picks holds every operation exactly `weight` times, in a seeded random order."""
    from careflow_ha.load.profiles import OperationDeck

    weights = {"analyst.clinic_daily": 2, "analyst.breed_age_patterns": 1}
    deck = OperationDeck(weights, random.Random(7))
    rounds = [[deck.deal() for _ in range(3)] for _ in range(200)]
    for picks in rounds:
        assert sorted(picks) == ["analyst.breed_age_patterns", "analyst.clinic_daily", "analyst.clinic_daily"]
    # ... and the order is shuffled, not fixed: the rare operation comes first, second and last.
    assert {picks.index("analyst.breed_age_patterns") for picks in rounds} == {0, 1, 2}
    with pytest.raises(ValueError, match="weight of 1 or more"):
        OperationDeck({"vet.lab_trend": 0}, random.Random(1))
