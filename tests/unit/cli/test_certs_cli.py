"""``careflow-ha certs status``: every certificate of careflow_tls_dir with its names and days left, WARN under
30 days, exit 5 once one has expired, exit 2 with nothing to read."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from careflow_ha.lab.ca import LeafSpec, ensure_lab_ca
from careflow_ha.provision import LAB_INVENTORY
from tests.cli import run_cli

NOW = datetime.now(UTC)


def _inventory(tmp_path: Path, tls_dir: Path) -> Path:
    gv = yaml.safe_load((LAB_INVENTORY.parent / "group_vars" / "all.yml").read_text())
    gv["careflow_tls_dir"] = str(tls_dir)
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text(yaml.safe_dump(gv))
    (tmp_path / "inventory.yml").write_text(LAB_INVENTORY.read_text())
    return tmp_path / "inventory.yml"


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    ensure_lab_ca(d, [LeafSpec("pg1", ("pg1",), ("192.168.56.11",))], now=NOW)
    return d


def test_a_fresh_lab_ca_is_all_ok_ca_first(tmp_path, ca_dir):
    code, out, err = run_cli("certs", "status", "-i", str(_inventory(tmp_path, ca_dir)), "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["file"], r["subject"].rsplit(" ", 1)[0], r["is_ca"], r["state"]) for r in rows] == [
        ("ca.crt", "CareFlow HA Lab CA", True, "ok"), ("pg1.crt", "pg1", False, "ok")]
    assert rows[1]["ip_addresses"] == ["192.168.56.11"] and rows[1]["days_left"] in (364, 365)
    assert "PRIVATE" not in out


def test_a_certificate_under_30_days_is_a_warning_not_a_failure(tmp_path, ca_dir):
    ensure_lab_ca(ca_dir, [LeafSpec("lb1", ("lb1",))], now=NOW - timedelta(days=350))  # 15 days left
    code, out, err = run_cli("certs", "status", "-i", str(_inventory(tmp_path, ca_dir)))
    assert code == 0, err
    (line,) = [ln for ln in out.splitlines() if "lb1.crt" in ln]
    # 15 days less the seconds since NOW: 14 whole days left.
    assert re.search(r"\|\s*14\s*\|\s*WARN\s*\|$", line), line
    (pg1,) = [ln for ln in out.splitlines() if "pg1.crt" in ln]
    assert "| ok" in pg1 and "192.168.56.11" in pg1


def test_an_expired_certificate_is_shown_then_exit_5(tmp_path, ca_dir):
    ensure_lab_ca(ca_dir, [LeafSpec("lb2", ("lb2",))], now=NOW - timedelta(days=400))
    code, out, err = run_cli("certs", "status", "-i", str(_inventory(tmp_path, ca_dir)))
    assert code == 5
    assert "lb2.crt" in out and "EXPIRED" in out  # the table is printed first
    assert err.strip().splitlines() == [
        f"careflow-ha: error: 1 certificate(s) in {ca_dir} expired: lb2.crt; `careflow-ha provision` re-issues "
        "the lab CA's (replace your own)"]


def test_no_certificates_is_exit_2_naming_the_fix(tmp_path):
    code, _out, err = run_cli("certs", "status", "-i", str(_inventory(tmp_path, tmp_path / "nothing")))
    assert code == 2 and "run `careflow-ha provision` (it creates the lab CA)" in err


def test_served_shows_every_listener_and_a_stale_one_is_exit_5_naming_it(tmp_path, monkeypatch):
    from careflow_ha.provision import listeners
    from careflow_ha.provision.certificates import prepare_certificates
    from careflow_ha.provision.inventory import load_inventory

    d = tmp_path / "ca"
    inv_file = _inventory(tmp_path, d)
    prepare_certificates(load_inventory(inv_file, {}), lambda _m: None)
    served = {"stale": ""}

    def fake_read(items, directory, ca_file=None):  # noqa: ANN001, ANN202
        out = []
        for item in items:
            fp = listeners.file_fingerprint(d / f"{item.host}.crt")
            if item.host == served["stale"] and item.service == "patroni rest":
                fp = "0" * 64
            out.append(listeners.Served(item, fingerprint=fp, serial="ab", not_after="2027-12-04"))
        return out

    monkeypatch.setattr(listeners, "read_served", fake_read)
    code, out, err = run_cli("certs", "status", "-i", str(inv_file), "--served")
    assert code == 0, err
    assert out.count("installed certificate") == 22
    served["stale"] = "pg2"
    code, out, err = run_cli("certs", "status", "-i", str(inv_file), "--served")
    assert code == 5 and "OLD certificate (reload it)" in out
    assert "1 listener(s) do not serve the installed certificate: pg2 patroni rest" in err
    assert len(err.strip().splitlines()) == 1
