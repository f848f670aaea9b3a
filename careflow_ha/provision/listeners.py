"""Every TLS listener the inventory provisions, and the certificate each one really serves.

A certificate on disk proves nothing about a running service: PostgreSQL reads its files on reload,
HAProxy on reload, etcd on each handshake, Patroni when a SIGHUP finds a new serial number. So
``certs status`` and ``certs rotate`` ask each listener, over the network from the control host, which
certificate it presents, and compare it with the one the control host holds for that host
(``careflow_tls_dir/<host>.crt``, or the inventory's ``tls_src_cert_file``).

PostgreSQL and PgBouncer speak TLS only after the protocol's SSLRequest; everything else is TLS from
the first byte. etcd asks for a client certificate: the control host's (``careflow-control``) is shown.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from careflow_ha.lab.ca import CONTROL_CLIENT, cert_path, key_path
from careflow_ha.provision.inventory import ClusterInventory, _ansible_bool

#: PostgreSQL's SSLRequest: length 8, code 80877103 (the protocol's "1234.5679").
SSL_REQUEST = struct.pack("!ii", 8, 80877103)
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Listener:
    """One TLS endpoint: which host and service, where, and whether it starts with PostgreSQL's SSLRequest."""

    host: str
    service: str
    address: str
    port: int
    starttls_postgres: bool = False

    @property
    def where(self) -> str:
        return f"{self.host} {self.service} ({self.address}:{self.port})"


@dataclass(frozen=True)
class Served:
    """What a listener presented: its certificate's fingerprint, serial and end, or why none was read."""

    listener: Listener
    fingerprint: str = ""  # SHA-256, hex
    serial: str = ""
    not_after: str = ""
    error: str = ""


def _on(hv: Any, name: str) -> bool:
    return _ansible_bool(hv.get(name, False))


def tls_listeners(inv: ClusterInventory) -> list[Listener]:
    """The inventory's TLS listeners, host by host, in the order the groups appear (one source: the variables
    the roles render into each service's configuration)."""
    out: list[Listener] = []
    for host in inv.hosts:
        hv = inv.hostvars[host]
        address = str(hv.get("careflow_node_ip") or hv.get("ansible_host") or host)

        def add(service: str, port_var: str, starttls: bool = False, _host: str = host, _addr: str = address,
                _hv: Any = hv) -> None:
            out.append(Listener(_host, service, _addr, int(_hv[port_var]), starttls))

        if host in inv.group("etcd_cluster") and _on(hv, "careflow_etcd_tls"):
            add("etcd client", "careflow_etcd_client_port")
            add("etcd peer", "careflow_etcd_peer_port")
        if host in inv.group("postgres_cluster"):
            if _on(hv, "careflow_postgresql_tls"):
                add("postgresql", "careflow_pg_port", starttls=True)
            if _on(hv, "careflow_patroni_api_tls"):
                add("patroni rest", "careflow_patroni_api_port")
        if host in inv.group("balancers"):
            if _on(hv, "careflow_haproxy_stats_tls"):
                add("haproxy stats", "careflow_haproxy_stats_port")
            if _on(hv, "careflow_postgresql_tls"):
                add("pgbouncer rw", "careflow_pgbouncer_rw_port", starttls=True)
                add("pgbouncer ro", "careflow_pgbouncer_ro_port", starttls=True)
        repo_group = str(hv.get("pgbackrest_repo_group") or "backup_repository")
        serves_backrest = host in inv.group("postgres_cluster") or host in inv.group(repo_group)
        if serves_backrest and inv.group(repo_group) and str(hv.get("pgbackrest_host_type")) == "tls":
            add("pgbackrest server", "pgbackrest_tls_server_port")
    return out


def fingerprint(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256()).hex()


def file_fingerprint(path: Path) -> str:
    return x509.load_pem_x509_certificate(path.read_bytes()).fingerprint(hashes.SHA256()).hex()


def client_context(ca_file: Path, client_cert: Path | None = None, client_key: Path | None = None) -> ssl.SSLContext:
    """Verify the chain against ``ca_file`` (not the name: the fingerprint comparison says whose it is), and
    show ``client_cert`` to a listener that asks for one."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert is not None and client_key is not None:
        ctx.load_cert_chain(str(client_cert), str(client_key))
    return ctx


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted by the control host's CA ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "no answer (timeout)"
    if isinstance(exc, OSError):
        return f"cannot connect ({exc.strerror or exc})"
    return str(exc)


def served_certificate(listener: Listener, ctx: ssl.SSLContext, timeout: float = CONNECT_TIMEOUT_S) -> Served:
    """Connect to ``listener`` and read the certificate it presents; an error is returned, never raised."""
    try:
        with socket.create_connection((listener.address, listener.port), timeout=timeout) as raw:
            if listener.starttls_postgres:
                raw.sendall(SSL_REQUEST)
                answer = raw.recv(1)
                if answer != b"S":
                    return Served(listener, error=f"refused TLS (answered {answer!r} to SSLRequest)")
            with ctx.wrap_socket(raw, server_hostname=listener.host) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError) as exc:
        return Served(listener, error=_reason(exc))
    if not der:
        return Served(listener, error="presented no certificate")
    cert = x509.load_der_x509_certificate(der)
    return Served(listener, fingerprint=fingerprint(der), serial=f"{cert.serial_number:x}",
                  not_after=f"{cert.not_valid_after_utc:%Y-%m-%d}")


def read_served(listeners: Iterable[Listener], tls_dir: Path, ca_file: Path | None = None,
                connect: Callable[[Listener, ssl.SSLContext], Served] = served_certificate) -> list[Served]:
    """Every listener's served certificate, asked in parallel (a dead host costs one timeout, not one each)."""
    client = cert_path(tls_dir, CONTROL_CLIENT)
    ctx = client_context(ca_file or tls_dir / "ca.crt", client if client.exists() else None,
                         key_path(tls_dir, CONTROL_CLIENT) if client.exists() else None)
    items = list(listeners)
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(items)))) as pool:
        return list(pool.map(lambda item: connect(item, ctx), items))
