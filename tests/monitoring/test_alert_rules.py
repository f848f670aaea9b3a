"""Alert rules: promtool validates them and runs their unit tests (unit suite: needs only promtool).

Beyond "promtool says SUCCESS", these tests check that every rule has a case
that fires it and one that must not, that thresholds and ``for:`` durations
agree with the inventory's facts (lag limit, timing presets), and that a
broken rule really makes the unit tests fail.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from careflow_ha.monitoring.rules import (
    PROJECT_DIR,
    RULE_TESTS_DIR,
    RULES_DIR,
    RULES_FILE,
    SCRAPE_INTERVAL_S,
    load_rules,
    parse_duration,
    promtool,
    rule_test_files,
)

GROUP_VARS = yaml.safe_load((PROJECT_DIR / "inventory" / "group_vars" / "all.yml").read_text())
RULES = {r.name: r for r in load_rules()}


def test_promtool_check_rules() -> None:
    proc = promtool("check", "rules", RULES_FILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(RULES)} rules found" in proc.stdout


def test_promtool_unit_tests_pass() -> None:
    files = rule_test_files()
    assert files, f"no *.test.yml under {RULE_TESTS_DIR}"
    proc = promtool("test", "rules", *files, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _cases() -> dict[str, dict[str, int]]:
    """Per alert name: how many evaluations expect it firing, and how many expect it quiet."""
    seen: dict[str, dict[str, int]] = {}
    for path in rule_test_files():
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                kind = "fires" if case.get("exp_alerts") else "quiet"
                seen.setdefault(case["alertname"], {"fires": 0, "quiet": 0})[kind] += 1
    return seen


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_has_a_firing_and_a_quiet_case(name: str) -> None:
    cases = _cases().get(name, {"fires": 0, "quiet": 0})
    assert cases["fires"] >= 1, f"{name}: no promtool case expects it to fire"
    assert cases["quiet"] >= 1, f"{name}: no promtool case expects it to stay quiet"


def test_tests_name_only_existing_alerts() -> None:
    assert set(_cases()) <= set(RULES), set(_cases()) - set(RULES)


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_carries_severity_summary_and_a_careflow_ha_runbook(name: str) -> None:
    rule = RULES[name]
    assert rule.labels.get("severity") in {"warning", "critical"}
    assert rule.annotations.get("summary")
    assert "`careflow-ha " in rule.annotations.get("runbook", ""), "the runbook hint names a careflow-ha command"
    # One late scrape must never fire an alert on its own.
    assert rule.for_s >= 2 * SCRAPE_INTERVAL_S


def test_rule_tests_are_written_for_the_scrape_interval() -> None:
    for path in rule_test_files():
        doc = yaml.safe_load(path.read_text())
        assert parse_duration(doc["evaluation_interval"]) == SCRAPE_INTERVAL_S, path.name
        assert {parse_duration(t["interval"]) for t in doc["tests"]} == {SCRAPE_INTERVAL_S}, path.name


def test_lag_limit_is_the_inventory_limit() -> None:
    # HAProxy's /replica?lag= and Patroni's maximum_lag_on_failover use careflow_maximum_lag_bytes;
    # the alert must speak of the same limit.
    limit = GROUP_VARS["careflow_maximum_lag_bytes"]
    assert RULES["CareflowReplicationLag"].expr.strip().endswith(f"> {limit}")


def test_certificate_warning_is_when_the_lab_ca_reissues() -> None:
    # The alert warns exactly when `careflow-ha provision` would re-issue the certificate, and
    # `certs status` says WARN: one threshold, three places that must agree.
    from careflow_ha.lab.ca import RENEW_BEFORE

    days = int(RENEW_BEFORE.total_seconds() // 86400)
    assert RULES["CareflowCertificateExpiresSoon"].expr.strip().endswith(f"< {days} * 86400")


@pytest.mark.parametrize("preset", sorted(GROUP_VARS["careflow_timing_presets"]))
def test_for_durations_fit_every_timing_preset(preset: str) -> None:
    t = GROUP_VARS["careflow_timing_presets"][preset]
    # Losing the primary leaves no leader for at least ttl - loop_wait (the lock was renewed at most
    # one loop before the loss): the alert must fire within that window, with a scrape to spare.
    no_primary_at_least = t["ttl"] - t["loop_wait"]
    for name in ("CareflowNoLeader", "CareflowHAProxyBackendDown"):
        assert RULES[name].for_s + SCRAPE_INTERVAL_S <= no_primary_at_least, (name, preset)
    # A switchover empties the primary backend until HAProxy marks the new primary up
    # (rise x downinter: a DOWN server is checked at downinter) after it saw the old one fail
    # (fall x fastinter): that must not fire.
    switchover_gap = (t["haproxy_rise"] * parse_duration(t["haproxy_downinter"])
                      + t["haproxy_fall"] * parse_duration(t["haproxy_fastinter"]))
    assert RULES["CareflowHAProxyBackendDown"].for_s > switchover_gap, preset
    # Patroni picks another sync standby one loop after it sees the old one go (a dead standby's
    # connection is seen within wal_sender_timeout); only a longer gap means none is left.
    wal_sender_timeout = parse_duration(GROUP_VARS["careflow_postgresql_parameters"]["wal_sender_timeout"])
    assert RULES["CareflowSyncStandbyMissing"].for_s > wal_sender_timeout + t["loop_wait"] + SCRAPE_INTERVAL_S


def _copy_rules(tmp_path: Path) -> Path:
    dest = tmp_path / "files"
    shutil.copytree(RULES_DIR, dest)
    return dest


@pytest.mark.parametrize(
    ("alert", "before", "after"),
    [
        # Never fires: the firing case must catch it.
        ("CareflowReplicationLag", "pg_stat_replication_pg_wal_lsn_diff > 1048576",
         "pg_stat_replication_pg_wal_lsn_diff > 1e15"),
        # Fires on a single primary: the quiet case must catch it.
        ("CareflowTwoLeaders", "count by (scope) (patroni_primary == 1) > 1",
         "count by (scope) (patroni_primary == 1) > 0"),
        # Too eager: the switchover case must catch it.
        ("CareflowHAProxyBackendDown", "for: 10s\n        labels:\n          severity: critical\n        "
         "annotations:\n          summary: \"HAProxy backend", "for: 5s\n        labels:\n          severity: "
         "critical\n        annotations:\n          summary: \"HAProxy backend"),
    ],
)
def test_a_broken_rule_fails_its_unit_tests(tmp_path: Path, alert: str, before: str, after: str) -> None:
    files = _copy_rules(tmp_path)
    rules = files / RULES_FILE.name
    text = rules.read_text()
    assert text.count(before) == 1, f"mutation anchor for {alert} not found exactly once"
    rules.write_text(text.replace(before, after))
    proc = promtool("test", "rules", *rule_test_files(files / "tests"), timeout=300)
    assert proc.returncode != 0, f"promtool accepted a broken {alert}"
    assert f"alertname: {alert}" in proc.stdout + proc.stderr
