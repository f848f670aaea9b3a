"""The balancers' keepalived check, rendered from the role and run against a fake HAProxy admin socket.

Healthy needs a server UP in the primary or replicas backend: a balancer cut off from every database
node must fail its check (and drop the VIP), one that still reaches a replica mid-failover must not.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

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
