"""What `up` prints at the end: the way to Prometheus on mon1, on the port the lab publishes."""

from __future__ import annotations

from careflow_ha.cli.cluster import print_connections
from careflow_ha.settings import PROJECT_DIR, SECRET_KEYS, load_settings


def test_up_names_prometheus_on_its_published_loopback_port(tmp_path, capsys):
    settings = load_settings(tmp_path, environ={"CAREFLOW_MON1_PROM_PORT": "19191",
                                                **{k: "x" * 24 for k in SECRET_KEYS}})
    print_connections(settings, show_secrets=False)
    out = capsys.readouterr().out
    assert "  Prometheus (mon1): http://127.0.0.1:19191/ (targets: http://127.0.0.1:19191/targets)" in out
    assert "x" * 24 not in out


def test_up_prints_connection_strings_that_verify_the_servers_certificate(tmp_path, capsys):
    (tmp_path / "inventory").symlink_to(PROJECT_DIR / "inventory")  # the lab's: careflow_postgresql_tls on
    settings = load_settings(tmp_path, environ={k: "x" * 24 for k in SECRET_KEYS})
    print_connections(settings, show_secrets=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if "postgresql://" in line or "psql " in line]
    assert len(lines) >= 4
    assert all("sslmode=verify-full" in line and f"sslrootcert={tmp_path}/.lab/ca/ca.crt" in line
               for line in lines), lines
    assert not any("connect_timeout" in line or "application_name" in line for line in lines)
    multihost = next(line for line in lines if "--via libpq-multihost" in line)
    assert "target_session_attrs=read-write" in multihost
