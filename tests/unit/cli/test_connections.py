"""What `up` prints at the end: the way to Prometheus on mon1, on the port the lab publishes."""

from __future__ import annotations

from careflow_ha.cli.cluster import print_connections
from careflow_ha.settings import SECRET_KEYS, load_settings


def test_up_names_prometheus_on_its_published_loopback_port(tmp_path, capsys):
    settings = load_settings(tmp_path, environ={"CAREFLOW_MON1_PROM_PORT": "19191",
                                                **{k: "x" * 24 for k in SECRET_KEYS}})
    print_connections(settings, show_secrets=False)
    out = capsys.readouterr().out
    assert "  Prometheus (mon1): http://127.0.0.1:19191/ (targets: http://127.0.0.1:19191/targets)" in out
    assert "x" * 24 not in out
