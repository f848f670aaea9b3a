"""The HAProxy A/B copies: derived from the provisioned config, and reported against it."""

from __future__ import annotations

import pytest

from careflow_ha.provision import LAB_INVENTORY
from careflow_ha.provision.inventory import load_inventory
from careflow_ha.routing.haproxy_ab import VARIANTS, Variant, variant_config
from careflow_ha.routing.report import haproxy_ab_lines
from careflow_ha.settings import SECRET_KEYS


def _provisioned() -> str:
    inv = load_inventory(LAB_INVENTORY, {k: "s" * 24 for k in SECRET_KEYS})
    return inv.render_template("haproxy", "haproxy.cfg.j2", "lb1")


def test_a_variant_keeps_only_the_primary_listener_on_its_own_port():
    cfg = variant_config(_provisioned(), 5010, VARIANTS["haproxy nbthread 1"])
    assert "listen primary" in cfg and "listen stats" not in cfg and "listen replicas" not in cfg
    assert "    bind *:5010" in cfg and "bind *:5000" not in cfg
    assert "stats socket" not in cfg  # the running HAProxy owns the admin socket
    assert "s" * 24 not in cfg  # the stats password went with the stats listener
    glob = cfg.split("global\n", 1)[1].split("\n\n", 1)[0]
    assert "    nbthread 1" in glob
    # The health checks and timeouts are the provisioned ones: only the variant's line differs.
    assert "option httpchk GET /primary" in cfg and "on-marked-down shutdown-sessions" in cfg
    assert cfg.count("server pg") == 3


def test_defaults_lines_go_in_defaults():
    cfg = variant_config(_provisioned(), 5011, Variant(defaults_lines=("option splice-auto",)))
    defaults = cfg.split("defaults\n", 1)[1].split("\n\n", 1)[0]
    assert "    option splice-auto" in defaults


def test_a_config_without_the_primary_listener_is_refused():
    with pytest.raises(ValueError, match="no 'listen primary' section"):
        variant_config("global\n    maxconn 1\ndefaults\n    mode tcp\n", 5010, Variant())


def test_the_report_compares_each_variant_with_the_provisioned_haproxy():
    rows = [
        {"mode": "tpcb-like", "path": "haproxy-vip", "ratio_to_direct": 0.8},
        {"mode": "tpcb-like", "path": "haproxy nbthread 1", "ratio_to_direct": 0.88},
        {"mode": "tpcb-like", "path": "direct", "ratio_to_direct": 1.0},
    ]
    assert haproxy_ab_lines(rows) == [
        "- HAProxy `nbthread 1` against the provisioned one: tpcb-like 0.8x -> 0.88x (1.10 of it).",
    ]
    # With the control copy measured, every variant is read against it, and the control is not a finding.
    rows.append({"mode": "tpcb-like", "path": "haproxy copy", "ratio_to_direct": 0.85})
    assert haproxy_ab_lines(rows) == [
        "- HAProxy `nbthread 1` against the unchanged copy: tpcb-like 0.85x -> 0.88x (1.04 of it).",
    ]
