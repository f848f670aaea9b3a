"""The lab CA's rotation in three steps: at every moment of a rolling install, every client trusts every server.

During a pass the hosts hold either the files of the step before or those of the step now, so the invariant is
checked with real TLS handshakes (Python's ssl over a socket pair, client certificates required) between each
step's leaves and the neighbouring steps' trust bundles, both ways.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from careflow_ha.errors import UsageError
from careflow_ha.lab import ca
from careflow_ha.lab.ca import LeafSpec, ensure_lab_ca

#: The real clock: OpenSSL checks the validity period against it during the handshakes.
NOW = datetime.now(UTC)
PG1 = LeafSpec("pg1", ("pg1",), ("127.0.0.1",))
LB1 = LeafSpec("lb1", ("lb1",), ("127.0.0.1",))


def _snapshot(d: Path, into: Path) -> Path:
    """The files a host would have been given at this step."""
    shutil.copytree(d, into)
    return into


def _handshake(server_dir: Path, server: str, client_dir: Path, client: str) -> str | None:
    """None if a client holding ``client_dir``'s bundle and leaf and a server with ``server_dir``'s complete a
    mutual TLS handshake; else the error."""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(server_dir / f"{server}.crt", server_dir / f"{server}.key")
    sctx.load_verify_locations(server_dir / "ca.crt")
    sctx.verify_mode = ssl.CERT_REQUIRED
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.load_verify_locations(client_dir / "ca.crt")
    cctx.load_cert_chain(client_dir / f"{client}.crt", client_dir / f"{client}.key")
    a, b = socket.socketpair()
    errors: list[str] = []

    def serve() -> None:
        try:
            with sctx.wrap_socket(a, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError) as exc:
            errors.append(f"server: {exc}")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with cctx.wrap_socket(b) as tls:
            tls.sendall(b"x")
    except (ssl.SSLError, OSError) as exc:
        errors.append(f"client: {exc}")
    thread.join(10)
    a.close()
    return "; ".join(errors) or None


def _steps(tmp_path: Path) -> list[Path]:
    d = tmp_path / "ca"
    ensure_lab_ca(d, [PG1, LB1], now=NOW)
    steps = [_snapshot(d, tmp_path / "0-start")]
    ca.begin_ca_rotation(d, now=NOW)
    assert ca.ca_rotation_step(d) == "trust-both"
    steps.append(_snapshot(d, tmp_path / "1-trust-both"))
    ca.switch_ca_signer(d)
    assert ca.ca_rotation_step(d) == "sign-new"
    result = ensure_lab_ca(d, [PG1, LB1], now=NOW)
    assert result.issued == ("pg1", "lb1")  # issued by another CA now: both again
    steps.append(_snapshot(d, tmp_path / "2-sign-new"))
    ca.retire_old_ca(d)
    assert ca.ca_rotation_step(d) == "retire-old"  # until the hosts have it: a failed pass runs again
    ca.finish_ca_rotation(d)
    assert ca.ca_rotation_step(d) is None
    steps.append(_snapshot(d, tmp_path / "3-retired"))
    return steps


def test_every_host_trusts_every_other_at_every_moment_of_the_rotation(tmp_path):
    steps = _steps(tmp_path)
    for before, after in zip(steps, steps[1:], strict=False):
        for server, client in ((before, after), (after, before), (after, after)):
            error = _handshake(server, "pg1", client, "lb1")
            assert error is None, f"server at {server.name}, client at {client.name}: {error}"


def test_the_end_trusts_only_the_new_ca_and_the_old_key_is_gone(tmp_path):
    steps = _steps(tmp_path)
    start, end = steps[0], steps[-1]
    assert len(ca.trusted_cas(end / "ca.crt")) == 1
    old, new = ca.trusted_cas(start / "ca.crt")[0], ca.trusted_cas(end / "ca.crt")[0]
    assert old.fingerprint(old.signature_hash_algorithm) != new.fingerprint(new.signature_hash_algorithm)
    assert ca.common_name(old) != ca.common_name(new)  # two CAs in one bundle never share a subject
    assert not (end / "ca-next.key").exists() and not (end / "ca-previous.crt").exists()
    # The check that can fail: a server still on the old CA's leaf is refused by a client at the end.
    assert _handshake(start, "pg1", end, "lb1") is not None
    assert _handshake(end, "pg1", start, "lb1") is not None


def test_an_interrupted_first_step_resumes_with_the_same_next_ca(tmp_path):
    d = tmp_path / "ca"
    ensure_lab_ca(d, [PG1], now=NOW)
    first = ca.begin_ca_rotation(d, now=NOW)
    (d / "ca.crt").write_bytes(ca.trusted_cas(d / "ca.crt")[0].public_bytes(ca.serialization.Encoding.PEM))
    again = ca.begin_ca_rotation(d, now=NOW)  # the bundle was lost: rebuilt, the next CA kept
    assert again.serial_number == first.serial_number
    assert [c.serial_number for c in ca.trusted_cas(d / "ca.crt")][1] == first.serial_number


def test_a_leaf_rotation_issues_every_certificate_again_with_a_new_key(tmp_path):
    d = tmp_path / "ca"
    ensure_lab_ca(d, [PG1, LB1], now=NOW)
    before = {n: (d / f"{n}.key").read_bytes() for n in ("pg1", "lb1")}
    serials = {n: x509.load_pem_x509_certificate((d / f"{n}.crt").read_bytes()).serial_number for n in before}
    result = ensure_lab_ca(d, [PG1, LB1], now=NOW, reissue=True)
    assert result.issued == ("pg1", "lb1") and not result.ca_created
    for name in before:
        assert (d / f"{name}.key").read_bytes() != before[name]
        assert x509.load_pem_x509_certificate((d / f"{name}.crt").read_bytes()).serial_number != serials[name]


def test_a_garbled_bundle_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate\n")
    with pytest.raises(UsageError, match=r"ca\.crt is not a PEM certificate bundle"):
        ca.trusted_cas(bad)
