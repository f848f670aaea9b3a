"""``certs rotate``'s order of passes, its resumption after a failure, and the served-certificate checks."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509

from careflow_ha.errors import CheckFailed, CommandFailed, UsageError
from careflow_ha.lab import ca
from careflow_ha.provision.base import LAB_INVENTORY
from careflow_ha.provision.certificates import prepare_certificates
from careflow_ha.provision.inventory import load_inventory
from careflow_ha.provision.listeners import (
    SSL_REQUEST,
    Listener,
    Served,
    client_context,
    file_fingerprint,
    served_certificate,
    tls_listeners,
)
from careflow_ha.provision.rotation import rotate, stale_listeners, wait_served
from careflow_ha.settings import SECRET_KEYS

SECRETS = {key: f"{key.lower()}-s3cr3t-value" for key in SECRET_KEYS}


def _inventory(tls_dir: Path, lab_ca: bool = True, **extra: str):  # noqa: ANN202
    return load_inventory(LAB_INVENTORY, SECRETS, {"careflow_tls_dir": str(tls_dir),
                                                   "careflow_tls_lab_ca": str(lab_ca).lower(), **extra})


def _issuers(d: Path) -> tuple[tuple[str, ...], str]:
    """(the CAs ca.crt trusts, the CA that issued pg1's certificate), by common name."""
    trusted = tuple(ca.common_name(c) for c in ca.trusted_cas(d / "ca.crt"))
    leaf = x509.load_pem_x509_certificate((d / "pg1.crt").read_bytes())
    return trusted, leaf.issuer.rfc4514_string().split("CN=")[1].split(",")[0]


class Recorder:
    """A fake install pass: records what the hosts would get; ``fail_on`` makes that pass (1-based) fail."""

    def __init__(self, d: Path, fail_on: int | None = None) -> None:
        self.d, self.fail_on, self.seen = d, fail_on, []

    def __call__(self, inventory_path: Path) -> None:
        if self.fail_on is not None and len(self.seen) + 1 == self.fail_on:
            self.fail_on = None
            raise CommandFailed("pg2 unreachable")
        self.seen.append(_issuers(self.d))


def _no_wait(inv, directory, progress):  # noqa: ANN001, ANN202
    return []


@pytest.fixture
def lab(tmp_path):  # noqa: ANN201
    inv = _inventory(tmp_path / "ca")
    prepare_certificates(inv, lambda _m: None)
    return inv, tmp_path / "ca"


def test_a_ca_rotation_trusts_both_then_signs_with_the_new_then_retires_the_old(lab):
    inv, d = lab
    old = ca.common_name(ca.trusted_cas(d / "ca.crt")[0])
    record = Recorder(d)
    result = rotate(inv, record, lambda _m: None, ca=True, wait=_no_wait)
    new = ca.common_name(ca.trusted_cas(d / "ca.crt")[0])
    assert new != old
    assert record.seen == [((old, new), old), ((new, old), new), ((new,), new)]
    assert [p.step for p in result.passes] == ["trust both CAs", "leaf certificates from the new CA",
                                               "retire the old CA"]


@pytest.mark.parametrize("failing_pass", [1, 2, 3])
def test_a_ca_rotation_stopped_by_a_failed_pass_runs_that_pass_again_first(lab, failing_pass):
    inv, d = lab
    old = ca.common_name(ca.trusted_cas(d / "ca.crt")[0])
    record = Recorder(d, fail_on=failing_pass)
    with pytest.raises(CommandFailed):
        rotate(inv, record, lambda _m: None, ca=True, wait=_no_wait)
    done = list(record.seen)
    rotate(inv, record, lambda _m: None, ca=True, wait=_no_wait)
    new = ca.common_name(ca.trusted_cas(d / "ca.crt")[0])
    expected = [((old, new), old), ((new, old), new), ((new,), new)]
    # The passes before the failure, then the failed one again (whole), then the rest: never a step skipped.
    assert done == expected[:failing_pass - 1]
    assert record.seen[len(done):] == expected[failing_pass - 1:]


def test_a_leaf_rotation_issues_new_certificates_and_refuses_to_start_mid_ca_rotation(lab):
    inv, d = lab
    before = file_fingerprint(d / "pg1.crt")
    rotate(inv, Recorder(d), lambda _m: None, wait=_no_wait)
    assert file_fingerprint(d / "pg1.crt") != before
    ca.begin_ca_rotation(d)
    with pytest.raises(UsageError, match=r"a CA rotation is half-way .* certs rotate --ca"):
        rotate(inv, Recorder(d), lambda _m: None, wait=_no_wait)


def test_with_your_own_ca_rotate_installs_what_is_there_and_refuses_to_make_a_ca(lab):
    _, d = lab
    own = _inventory(d, lab_ca=False)
    before = file_fingerprint(d / "pg1.crt")
    record = Recorder(d)
    rotate(own, record, lambda _m: None, wait=_no_wait)
    assert len(record.seen) == 1 and file_fingerprint(d / "pg1.crt") == before
    with pytest.raises(UsageError, match="careflow_tls_lab_ca is false"):
        rotate(own, record, lambda _m: None, ca=True, wait=_no_wait)


def test_the_listeners_are_every_tls_port_the_inventory_provisions(tmp_path):
    listeners = tls_listeners(_inventory(tmp_path))
    by_host = {}
    for item in listeners:
        by_host.setdefault(item.host, []).append(item.service)
    assert by_host["pg1"] == ["etcd client", "etcd peer", "postgresql", "patroni rest", "pgbackrest server"]
    assert by_host["lb1"] == ["haproxy stats", "pgbouncer rw", "pgbouncer ro"]
    assert by_host["backup1"] == ["pgbackrest server"] and "mon1" not in by_host
    assert {(i.service, i.starttls_postgres) for i in listeners if i.starttls_postgres} == {
        ("postgresql", True), ("pgbouncer rw", True), ("pgbouncer ro", True)}
    assert len(listeners) == 22
    plain = tls_listeners(_inventory(tmp_path, careflow_etcd_tls="false", careflow_haproxy_stats_tls="false"))
    assert {i.service for i in plain} == {"postgresql", "patroni rest", "pgbackrest server", "pgbouncer rw",
                                           "pgbouncer ro"}


def _serve_once(d: Path, host: str, postgres: bool, answer: bytes = b"S") -> int:
    """A one-connection TLS server on loopback presenting ``host``'s certificate (after an SSLRequest if
    ``postgres``); returns its port."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / f"{host}.crt", d / f"{host}.key")
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    def run() -> None:
        conn, _ = sock.accept()
        try:
            if postgres:
                assert conn.recv(8) == SSL_REQUEST
                conn.sendall(answer)
                if answer != b"S":
                    return
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass
        finally:
            conn.close()
            sock.close()

    threading.Thread(target=run, daemon=True).start()
    return port


@pytest.mark.parametrize("postgres", [False, True])
def test_the_served_certificate_is_read_as_presented(lab, postgres):
    _, d = lab
    port = _serve_once(d, "pg1", postgres)
    served = served_certificate(Listener("pg1", "x", "127.0.0.1", port, postgres), client_context(d / "ca.crt"))
    assert served.error == "" and served.fingerprint == file_fingerprint(d / "pg1.crt")


def test_a_listener_refusing_tls_or_from_another_ca_is_an_error_not_a_crash(lab, tmp_path):
    _, d = lab
    port = _serve_once(d, "pg1", True, answer=b"N")
    refused = served_certificate(Listener("pg1", "x", "127.0.0.1", port, True), client_context(d / "ca.crt"))
    assert "refused TLS" in refused.error
    other = tmp_path / "other"
    ca.ensure_lab_ca(other, [ca.LeafSpec("pg1")])
    port = _serve_once(other, "pg1", False)
    untrusted = served_certificate(Listener("pg1", "x", "127.0.0.1", port), client_context(d / "ca.crt"))
    assert "not trusted by the control host's CA" in untrusted.error


def test_stale_listeners_name_each_listener_that_serves_another_certificate(lab):
    inv, d = lab
    current = file_fingerprint(d / "pg1.crt")
    listener = Listener("pg1", "postgresql", "192.168.56.11", 5432, True)
    served = [Served(listener, fingerprint=current, serial="aa"),
              Served(Listener("lb1", "haproxy stats", "192.168.56.10", 7000), fingerprint="00", serial="bb"),
              Served(Listener("pg2", "etcd peer", "192.168.56.12", 2380), error="no answer (timeout)")]
    assert stale_listeners(inv, served) == ["lb1 haproxy stats (192.168.56.10:7000) still serves serial bb",
                                            "pg2 etcd peer (192.168.56.12:2380): no answer (timeout)"]


def test_waiting_for_the_listeners_is_bounded_and_names_the_laggard(lab):
    inv, d = lab
    good = {h: file_fingerprint(d / f"{h}.crt") for h in inv.hosts}
    calls = []

    def read(listeners, directory):  # noqa: ANN001, ANN202
        calls.append(1)
        stale = len(calls) < 3
        return [Served(i, fingerprint="00" if stale and i.service == "patroni rest" else good[i.host], serial="cc")
                for i in listeners]

    assert len(wait_served(inv, d, lambda _m: None, timeout_s=10, read=read)) == 22 and len(calls) == 3

    def never(listeners, directory):  # noqa: ANN001, ANN202
        return [Served(i, fingerprint="00", serial="dd") for i in listeners]

    with pytest.raises(CheckFailed, match=r"after 0 s, 22 listener\(s\) do not serve .*pg1 etcd client"):
        wait_served(inv, d, lambda _m: None, timeout_s=0, read=never)
