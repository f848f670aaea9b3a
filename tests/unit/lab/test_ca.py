"""The lab CA: created once, private keys 0600 from the first byte, certificates reused while they fit and
issued again when they do not (a name missing, expiry close, another CA, a foreign key)."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from careflow_ha.errors import UsageError
from careflow_ha.lab import ca
from careflow_ha.lab.ca import CONTROL_CLIENT, LeafSpec, control_client_spec, ensure_lab_ca

NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
PG1 = LeafSpec("pg1", ("pg1", "localhost"), ("192.168.56.11", "192.168.56.100", "127.0.0.1"))
LB1 = LeafSpec("lb1", ("lb1", "localhost"), ("192.168.56.10", "192.168.56.100", "127.0.0.1"))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(directory: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((directory / f"{name}.crt").read_bytes())


def test_first_use_creates_the_ca_and_every_leaf_with_private_modes(tmp_path):
    d = tmp_path / "ca"
    result = ensure_lab_ca(d, [PG1, LB1, control_client_spec()], now=NOW)
    assert result.ca_created and result.issued == ("pg1", "lb1", CONTROL_CLIENT) and result.kept == ()
    assert _mode(d) == 0o700
    for key in ("ca.key", "pg1.key", "lb1.key", f"{CONTROL_CLIENT}.key"):
        assert _mode(d / key) == 0o600, key
    for crt in ("ca.crt", "pg1.crt", "lb1.crt"):
        assert _mode(d / crt) == 0o644, crt
    assert not [p.name for p in d.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_keys_are_never_world_readable_even_while_written(tmp_path, monkeypatch):
    """The key's file is 0600 before any byte of the key is in it (a umask of 0 must not matter)."""
    seen: list[int] = []
    real_fdopen = os.fdopen

    def spy(fd, *args, **kwargs):  # noqa: ANN001, ANN202
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(ca.os, "fdopen", spy)
    old = os.umask(0)
    try:
        ensure_lab_ca(tmp_path / "ca", [PG1], now=NOW)
    finally:
        os.umask(old)
    # Writes go: ca.key, ca.crt, pg1.key, pg1.crt.
    assert seen == [0o600, 0o644, 0o600, 0o644]


def test_a_leaf_carries_its_names_both_usages_and_is_signed_by_the_ca(tmp_path):
    d = tmp_path / "ca"
    ensure_lab_ca(d, [PG1], now=NOW)
    cert, authority = _cert(d, "pg1"), _cert(d, "ca")
    assert ca.common_name(cert) == "pg1"
    assert ca.subject_alt_names(cert) == (("pg1", "localhost"), ("192.168.56.11", "192.168.56.100", "127.0.0.1"))
    assert set(ca.extended_key_usages(cert)) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert ca.issued_by(cert, authority) and ca.is_ca(authority) and not ca.is_ca(cert)
    assert cert.not_valid_after_utc == NOW + ca.LEAF_VALIDITY
    assert ca.key_matches(cert, ca.load_private_key(d / "pg1.key"))


def test_the_control_client_certificate_is_for_clients_only(tmp_path):
    d = tmp_path / "ca"
    ensure_lab_ca(d, [control_client_spec()], now=NOW)
    cert = _cert(d, CONTROL_CLIENT)
    assert ca.common_name(cert) == CONTROL_CLIENT
    assert ca.extended_key_usages(cert) == (ExtendedKeyUsageOID.CLIENT_AUTH,)


def test_a_second_run_keeps_everything(tmp_path):
    d = tmp_path / "ca"
    ensure_lab_ca(d, [PG1, LB1], now=NOW)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    result = ensure_lab_ca(d, [PG1, LB1], now=NOW + timedelta(days=200))
    assert (result.ca_created, result.issued, result.kept) == (False, (), ("pg1", "lb1"))
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_a_new_name_reissues_only_that_host(tmp_path):
    d = tmp_path / "ca"
    ensure_lab_ca(d, [PG1, LB1], now=NOW)
    old_key = (d / "pg1.key").read_bytes()
    wider = LeafSpec("pg1", (*PG1.dns_names, "pg1.clinic.example"), PG1.ip_addresses)
    result = ensure_lab_ca(d, [wider, LB1], now=NOW)
    assert (result.issued, result.kept) == (("pg1",), ("lb1",))
    assert "pg1.clinic.example" in ca.subject_alt_names(_cert(d, "pg1"))[0]
    assert (d / "pg1.key").read_bytes() != old_key  # a new certificate gets a new key


@pytest.mark.parametrize(
    ("days_later", "reissued"),
    [(365 - 31, False), (365 - 29, True)],  # 30 days before the end is the line
)
def test_a_certificate_close_to_its_end_is_issued_again(tmp_path, days_later, reissued):
    d = tmp_path / "ca"
    ensure_lab_ca(d, [PG1], now=NOW)
    result = ensure_lab_ca(d, [PG1], now=NOW + timedelta(days=days_later))
    assert result.issued == (("pg1",) if reissued else ())


def test_a_certificate_from_another_ca_or_with_a_foreign_key_is_issued_again(tmp_path):
    d, other = tmp_path / "ca", tmp_path / "other"
    ensure_lab_ca(d, [PG1, LB1], now=NOW)
    ensure_lab_ca(other, [PG1], now=NOW)
    for suffix in ("crt", "key"):  # a sound pair, signed by another CA
        (d / f"pg1.{suffix}").write_bytes((other / f"pg1.{suffix}").read_bytes())
    (d / "lb1.key").write_bytes((other / "pg1.key").read_bytes())  # lb1's cert with pg1's key
    assert ca.why_reissue(d, PG1, _cert(d, "ca"), NOW) == "another CA"
    assert ca.why_reissue(d, LB1, _cert(d, "ca"), NOW) == "key mismatch"
    result = ensure_lab_ca(d, [PG1, LB1], now=NOW)
    assert result.issued == ("pg1", "lb1")
    assert ca.issued_by(_cert(d, "pg1"), _cert(d, "ca"))


def test_a_half_ca_or_a_ca_near_its_end_is_one_line_naming_the_fix(tmp_path):
    d = tmp_path / "ca"
    ensure_lab_ca(d, [], now=NOW)
    with pytest.raises(UsageError, match="expires on 2036-.*move .* away to start a new lab CA") as err:
        ensure_lab_ca(d, [], now=NOW + ca.CA_VALIDITY - timedelta(days=10))
    assert "\n" not in str(err.value)
    (d / "ca.key").unlink()
    with pytest.raises(UsageError, match="has ca.crt but no ca.key; restore it"):
        ensure_lab_ca(d, [], now=NOW)


def test_an_encrypted_or_garbage_key_is_named_never_shown(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"pass-phrase")))
    with pytest.raises(UsageError, match="enc.key is an encrypted key; .* store it unencrypted"):
        ca.load_private_key(encrypted)
    garbage = tmp_path / "bad.key"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nTOPSECRETBYTES\n-----END PRIVATE KEY-----\n")
    with pytest.raises(UsageError, match="bad.key is not a PEM private key") as err:
        ca.load_private_key(garbage)
    assert "TOPSECRETBYTES" not in str(err.value)


def test_results_and_specs_hold_no_key_material(tmp_path):
    d = tmp_path / "ca"
    result = ensure_lab_ca(d, [PG1], now=NOW)
    pem = (d / "pg1.key").read_text()
    body = "".join(pem.splitlines()[1:-1])
    for shown in (repr(result), repr(PG1), str(result)):
        assert "PRIVATE KEY" not in shown and body[:24] not in shown
