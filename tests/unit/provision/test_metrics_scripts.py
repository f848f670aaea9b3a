"""The textfile-collector scripts the roles install, run here as rendered: PgBouncer's pools and totals
(against a stand-in psql that answers as PgBouncer 1.18's admin console does) and certificate expiry
(against real certificates, read by the real openssl). promtool checks that node exporter can read what
they write."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from careflow_ha.provision import LAB_INVENTORY
from careflow_ha.provision.inventory import load_inventory
from tests.unit.provision.test_inventory import SECRETS


@pytest.fixture(scope="module")
def lab():
    return load_inventory(LAB_INVENTORY, SECRETS)


def _render_to(lab, role: str, template: str, host: str, out: Path, replacements: dict[str, str]) -> Path:
    """The rendered script with its output path (and any other host path) pointed into ``out``'s folder."""
    text = lab.render_template(role, template, host)
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    script = out.parent / template.removesuffix(".j2")
    script.write_text(text)
    script.chmod(0o755)
    return script


def _promtool_accepts(path: Path) -> None:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: scripts/bootstrap.sh installs Debian's prometheus package")
    proc = subprocess.run(["promtool", "check", "metrics"], input=path.read_text(), capture_output=True, text=True,
                          timeout=30)
    # promtool lints names too (it exits 1 for a counter without _total, for example): none of that here.
    assert proc.returncode == 0, proc.stdout + proc.stderr


# What `psql --csv -c "SHOW POOLS"` and "SHOW STATS_TOTALS" print against PgBouncer 1.18 (bookworm).
POOLS_CSV = """database,user,cl_active,cl_waiting,cl_active_cancel_req,cl_waiting_cancel_req,sv_active,\
sv_active_cancel,sv_being_canceled,sv_idle,sv_used,sv_tested,sv_login,maxwait,maxwait_us,pool_mode
careflow,careflow_app,7,3,0,0,5,0,0,2,1,0,0,1,500000,transaction
pgbouncer,pgbouncer,1,0,0,0,0,0,0,0,0,0,0,0,0,statement
"""
TOTALS_CSV = """database,xact_count,query_count,bytes_received,bytes_sent,xact_time,query_time,wait_time
careflow,1200,3400,56000,789000,2500000,1250000,400000
pgbouncer,3,3,0,0,0,0,0
"""
# The read-write instance (6432) answers; the read-only one (6433) refuses, as a stopped instance does.
FAKE_PSQL = f"""#!/bin/sh
for a in "$@"; do case "$a" in 6433) echo 'psql: error: connection to server at "127.0.0.1", port 6433 failed: \
Connection refused' >&2; exit 2;; esac; done
test "$PGPASSFILE" = "/etc/pgbouncer/careflow-stats.pgpass" || {{ echo "no password file" >&2; exit 2; }}
case "$*" in
  *"SHOW POOLS"*) cat <<'EOF'
{POOLS_CSV}EOF
;;
  *"SHOW STATS_TOTALS"*) cat <<'EOF'
{TOTALS_CSV}EOF
;;
  *) exit 3;;
esac
"""


def test_pgbouncer_metrics_publish_each_instance_and_survive_one_down(lab, tmp_path):
    out = tmp_path / "careflow_pgbouncer.prom"
    script = _render_to(lab, "pgbouncer", "careflow-pgbouncer-metrics.py.j2", "lb1", out,
                        {"/var/lib/prometheus/node-exporter/careflow_pgbouncer.prom": str(out)})
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "psql").write_text(FAKE_PSQL)
    (bindir / "psql").chmod(0o755)
    proc = subprocess.run([sys.executable, str(script)], env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr  # one instance did not answer: the timer's run says so
    assert "ro (:6433)" in proc.stderr and "Connection refused" in proc.stderr
    lines = set(out.read_text().splitlines())
    pool = 'pgbouncer="rw",database="careflow",user="careflow_app"'
    for expected in (
        'pgbouncer_up{pgbouncer="rw"} 1',
        'pgbouncer_up{pgbouncer="ro"} 0',
        f"pgbouncer_pools_client_active_connections{{{pool}}} 7",
        f"pgbouncer_pools_client_waiting_connections{{{pool}}} 3",
        f"pgbouncer_pools_server_active_connections{{{pool}}} 5",
        f"pgbouncer_pools_server_idle_connections{{{pool}}} 2",
        f"pgbouncer_pools_client_maxwait_seconds{{{pool}}} 1.5",  # maxwait 1 s + maxwait_us 500000
        'pgbouncer_stats_totals_sql_transactions_pooled_total{pgbouncer="rw",database="careflow"} 1200',
        'pgbouncer_stats_totals_queries_pooled_total{pgbouncer="rw",database="careflow"} 3400',
        'pgbouncer_stats_totals_queries_duration_seconds_total{pgbouncer="rw",database="careflow"} 1.25',
        'pgbouncer_stats_totals_client_wait_seconds_total{pgbouncer="rw",database="careflow"} 0.4',
    ):
        assert expected in lines, expected
    assert not any('database="pgbouncer"' in line for line in lines), "the admin console is not a pool"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    _promtool_accepts(out)


def _certificate(path: Path, cn: str, not_after: datetime) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_after - timedelta(days=400))
            .not_valid_after(not_after).sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_certificate_metrics_publish_each_files_end_and_flag_an_unreadable_one(lab, tmp_path):
    out = tmp_path / "careflow_certificates.prom"
    ca, host = tmp_path / "ca.crt", tmp_path / "pg1.crt"
    ends = datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC)  # the year end: the parse must not slip a day
    _certificate(host, "pg1", ends)
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    script = _render_to(lab, "node_exporter", "careflow-certificate-metrics.py.j2", "pg1", out, {
        "/var/lib/prometheus/node-exporter/careflow_certificates.prom": str(out),
        '"/etc/careflow/tls/ca.crt"': f'"{ca}"', '"/etc/careflow/tls/pg1.crt"': f'"{host}"'})
    if shutil.which("openssl") is None:
        pytest.fail("openssl is missing on the control host")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and f"cannot read {ca}" in proc.stderr
    lines = set(out.read_text().splitlines())
    end = f'careflow_certificate_not_after_timestamp_seconds{{file="{host}",subject="CN=pg1"}} {int(ends.timestamp())}'
    assert end in lines
    assert f'careflow_certificate_read_success{{file="{host}"}} 1' in lines
    assert f'careflow_certificate_read_success{{file="{ca}"}} 0' in lines
    assert not any(line.startswith("careflow_certificate_not_after") and str(ca) in line for line in lines)
    _promtool_accepts(out)


def test_certificate_metrics_name_the_tls_roles_files(lab):
    # The same two files the tls role installs on every host: the CA and the host's own certificate.
    hv = lab.hostvars["lb2"]
    assert hv["node_exporter_certificate_files"] == [hv["tls_ca_file"], hv["tls_cert_file"]]
