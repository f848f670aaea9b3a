"""The balancers' keepalived check, rendered from the role and run against a fake HAProxy admin socket.

Healthy needs a server UP in the primary or replicas backend: a balancer cut off from every database
node must fail its check (and drop the VIP), one that still reaches a replica mid-failover must not.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from careflow_ha.lab.ca import LeafSpec, ensure_lab_ca
from careflow_ha.provision import LAB_INVENTORY
from careflow_ha.provision.inventory import load_inventory
from careflow_ha.settings import SECRET_KEYS

HEADER = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight"


def _row(proxy: str, server: str, status: str) -> str:
    return ",".join([proxy, server, *["0"] * 15, status, "1"])


def _check_code(tmp_path: Path) -> str:
    inv = load_inventory(LAB_INVENTORY, {k: "x" * 24 for k in SECRET_KEYS})
    script = inv.render_template("keepalived", "careflow-check-haproxy.sh.j2", "lb1")
    code = script.split("exec python3 -c '", 1)[1].rsplit("'", 1)[0]
    return code.replace("/run/haproxy/admin.sock", str(tmp_path / "admin.sock"))


def _serve_once(path: Path, answer: str) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(100)
            conn.sendall(answer.encode())
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    "rows,healthy",
    [
        ([_row("primary", "pg1", "UP"), _row("replicas", "pg2", "UP")], True),
        ([_row("primary", "pg1", "DOWN"), _row("replicas", "pg2", "UP")], True),  # mid-failover: a replica
        ([_row("primary", "pg1", "DOWN"), _row("replicas", "pg2", "DOWN"), _row("replicas", "pg3", "DOWN")], False),
        ([_row("primary", "BACKEND", "UP"), _row("primary", "pg1", "DOWN")], False),  # a backend line is no server
        ([_row("stats", "FRONTEND", "OPEN"), _row("primary", "pg2", "UP 1/2")], True),  # failing checks, still serving
        ([], False),
    ],
)
def test_the_check_needs_a_database_server_up(tmp_path, rows, healthy):
    thread = _serve_once(tmp_path / "admin.sock", "\n".join([HEADER, *rows, ""]))
    proc = subprocess.run([sys.executable, "-c", _check_code(tmp_path)], capture_output=True, timeout=10, check=False)
    thread.join(5)
    assert (proc.returncode == 0) is healthy, proc.stderr


def test_no_haproxy_socket_fails_the_check(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _check_code(tmp_path)], capture_output=True, timeout=10, check=False)
    assert proc.returncode != 0


def _conf(host: str, **overrides: str) -> str:
    inv = load_inventory(LAB_INVENTORY, {k: "x" * 24 for k in SECRET_KEYS}, overrides or None)
    return inv.render_template("keepalived", "keepalived.conf.j2", host)


def test_balancers_keep_the_client_vip_and_database_nodes_the_leader_vip():
    lb1, pg1 = _conf("lb1"), _conf("pg1")
    assert "vrrp_instance careflow_vip {" in lb1 and "careflow_leader_vip" not in lb1
    assert "192.168.56.100/24 dev eth0" in lb1 and "unicast_peer {\n        192.168.56.20\n    }" in lb1
    assert "vrrp_instance careflow_leader_vip {" in pg1 and "vrrp_instance careflow_vip " not in pg1
    assert "virtual_router_id 57" in pg1 and "192.168.56.101/24 dev eth0" in pg1
    assert "advert_int 0.2" in pg1 and "advert_int 0.5" in lb1
    assert "unicast_peer {\n        192.168.56.12\n        192.168.56.13\n    }" in pg1
    assert 'script "/etc/keepalived/careflow-check-leader.sh"' in pg1
    # The leader check drops the priority on the first failure (a demoted node must stop taking writes).
    leader_script = pg1.split("vrrp_script careflow_leader {", 1)[1].split("}", 1)[0]
    assert "fall 1" in leader_script and "rise 1" in leader_script
    # The leader preempts: its weight lifts it above every other member, so no FAULT/BACKUP wait.
    assert "careflow_leader weight 100" in pg1 and "\n    nopreempt" not in pg1
    priorities = [int(_conf(h).split("    priority ", 1)[1].split()[0]) for h in ("pg1", "pg2", "pg3")]
    assert priorities == [100, 90, 80] and min(priorities) + 100 > max(priorities) and max(priorities) + 100 <= 254
    # The client VIP: FAULT on failure, and no move back.
    assert "\n    nopreempt" in lb1 and "careflow_haproxy weight" not in lb1


def test_no_leader_vip_leaves_the_database_nodes_without_an_instance():
    assert "vrrp_instance" not in _conf("pg1", careflow_leader_vip="")


class _Patroni(threading.Thread):
    """A fake Patroni REST API on loopback answering GET /primary with one status code, over https with a
    certificate for the name pg1 only (not 127.0.0.1), as the lab's careflow_patroni_api_tls wants."""

    def __init__(self, code: int, tls_dir: Path) -> None:
        super().__init__(daemon=True)
        from http.server import BaseHTTPRequestHandler, HTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(code if self.path == "/primary" else 404)
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_dir / "pg1.crt", tls_dir / "pg1.key")
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]

    def run(self) -> None:
        self.server.serve_forever(poll_interval=0.05)


def _lab_ca(directory: Path) -> Path:
    ensure_lab_ca(directory, [LeafSpec("pg1", ("pg1",))])
    return directory


def _leader_check(port: int, ca_dir: Path) -> subprocess.CompletedProcess:
    inv = load_inventory(LAB_INVENTORY, {k: "x" * 24 for k in SECRET_KEYS})
    script = inv.render_template("keepalived", "careflow-check-leader.sh.j2", "pg1")
    assert "https://pg1:8008/primary" in script  # the lab's API speaks https (careflow_patroni_api_tls)
    script = script.replace(":8008", f":{port}").replace("/etc/careflow/tls/ca.crt", str(ca_dir / "ca.crt"))
    return subprocess.run(["sh", "-c", script], timeout=10)


@pytest.mark.parametrize("code,passes", [(200, True), (503, False)])
def test_leader_check_passes_only_where_patroni_says_primary(code, passes, tmp_path):
    ca = _lab_ca(tmp_path / "ca")
    patroni = _Patroni(code, ca)
    patroni.start()
    try:
        run = _leader_check(patroni.port, ca)
    finally:
        patroni.server.shutdown()
    assert (run.returncode == 0) is passes


def test_leader_check_fails_against_a_certificate_from_another_ca(tmp_path):
    patroni = _Patroni(200, _lab_ca(tmp_path / "ca"))
    patroni.start()
    try:
        run = _leader_check(patroni.port, _lab_ca(tmp_path / "other-ca"))
    finally:
        patroni.server.shutdown()
    assert run.returncode != 0


def test_leader_check_fails_when_patroni_does_not_answer(tmp_path):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert _leader_check(port, _lab_ca(tmp_path / "ca")).returncode != 0


def test_the_balancer_check_requires_the_poolers_listening_too():
    """A balancer whose PgBouncer died keeps HAProxy up: the VIP must move anyway, or 6432 is gone."""
    inv = load_inventory(LAB_INVENTORY, {k: "x" * 24 for k in SECRET_KEYS})
    script = inv.render_template("keepalived", "careflow-check-haproxy.sh.j2", "lb1")
    hv = inv.hostvars["lb1"]
    ports = [hv[k] for k in ("careflow_haproxy_rw_port", "careflow_haproxy_ro_port",
                             "careflow_pgbouncer_rw_port", "careflow_pgbouncer_ro_port")]
    for port in ports:
        assert f"ss -Htln 'sport = :{port}' | grep -q . || exit 1" in script, port
