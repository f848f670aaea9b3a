"""PatroniApi over https (careflow_patroni_api_tls): it verifies the node against the lab CA, and a wrong CA is
one line that says so. A real TLS server on loopback with a certificate from a throwaway CA."""

from __future__ import annotations

import json
import ssl
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import MappingProxyType

import pytest

from careflow_ha.cluster.patroni import PatroniApi
from careflow_ha.errors import NotReady
from careflow_ha.lab.ca import LeafSpec, ensure_lab_ca
from careflow_ha.settings import PORT_DEFAULTS, SECRET_KEYS, Routing, Settings


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({"state": "running", "role": "primary"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture
def node(tmp_path):
    """pg1's API on a free loopback port, https with a certificate for 127.0.0.1 from the CA in tmp/ca."""
    ensure_lab_ca(tmp_path / "ca", [LeafSpec("pg1", ("pg1",), ("127.0.0.1",))])
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "ca" / "pg1.crt", tmp_path / "ca" / "pg1.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def _settings(tmp_path, port: int, ca_file: str) -> Settings:
    ports = dict(PORT_DEFAULTS) | {"CAREFLOW_PG1_API_PORT": port}
    base = Settings(project_dir=tmp_path, ports=MappingProxyType(ports),
                    secrets=MappingProxyType({k: "x" for k in SECRET_KEYS}))
    return replace(base, routing=Routing(api_tls_ca_file=ca_file))


def test_the_api_is_asked_over_https_and_the_node_verified(tmp_path, node):
    api = PatroniApi(_settings(tmp_path, node, str(tmp_path / "ca" / "ca.crt")), nodes=("pg1",))
    assert api.url("pg1", "/primary").startswith("https://")
    assert api.get_any("/primary") == ("pg1", {"state": "running", "role": "primary"})


def test_a_wrong_ca_is_one_line_naming_the_certificate(tmp_path, node):
    ensure_lab_ca(tmp_path / "other", [])
    api = PatroniApi(_settings(tmp_path, node, str(tmp_path / "other" / "ca.crt")), nodes=("pg1",))
    with pytest.raises(NotReady) as caught:
        api.get_any("/primary")
    message = str(caught.value)
    assert "\n" not in message and "pg1: TLS certificate not trusted" in message, message
    assert "careflow_tls_dir/ca.crt" in message


def test_the_ca_file_is_read_again_on_every_request(tmp_path, node):
    """A CA rotation replaces ca.crt under a running client: it must follow the file, not a context made once."""
    ca_file = tmp_path / "ca" / "ca.crt"
    good = ca_file.read_bytes()
    api = PatroniApi(_settings(tmp_path, node, str(ca_file)), nodes=("pg1",))
    assert api.get_any("/primary")[0] == "pg1"
    ensure_lab_ca(tmp_path / "other", [])
    ca_file.write_bytes((tmp_path / "other" / "ca.crt").read_bytes())  # the same client, now another CA
    with pytest.raises(NotReady, match="TLS certificate not trusted"):
        api.get_any("/primary")
    ca_file.write_bytes(good)
    assert api.get_any("/primary")[0] == "pg1"
