"""The lab certificate authority on the control host: one CA, and a certificate per host, made with ``cryptography``.

Everything lives in one directory (the inventory's ``careflow_tls_dir``, ``.lab/ca`` for the lab), next to
``.env`` and under the same rules: generated on first use, gitignored, every private key mode 0600 from its
first byte, never printed. The layout is the one the ``tls`` role copies to the hosts, and the one a user's own
CA must follow (``ca.crt``, ``<host>.crt``, ``<host>.key``)::

    ca.crt  ca.key                      the CA (10 years)
    pg1.crt pg1.key ...                 one per inventory host: serverAuth + clientAuth (1 year)
    careflow-control.crt/.key           the control host's client certificate (etcdctl, Patroni REST)

``ensure_lab_ca`` is idempotent: a certificate that still fits is kept; one that lacks a needed name, expires
within ``RENEW_BEFORE``, was not issued by this CA or does not match its key is issued again (with a new key).
No object here holds a private key beyond the function that writes it, so no repr or log can show one.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from careflow_ha.errors import UsageError

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
#: The control host's client certificate (CN): etcdctl and Patroni's REST API once they require one.
CONTROL_CLIENT = "careflow-control"
#: A certificate closer than this to its end is issued again (and ``certs status`` warns about it).
RENEW_BEFORE = timedelta(days=30)
CA_VALIDITY = timedelta(days=3650)
LEAF_VALIDITY = timedelta(days=365)
#: Backdate notBefore a little: a host whose clock is a minute behind the control host still accepts the cert.
CLOCK_SKEW = timedelta(minutes=5)
CA_NAME = "CareFlow HA Lab CA"
SERVER_AND_CLIENT = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
CLIENT_ONLY = (ExtendedKeyUsageOID.CLIENT_AUTH,)


@dataclass(frozen=True)
class LeafSpec:
    """What one certificate must carry: its name (CN and file stem), its SANs and its extended key usages."""

    name: str
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    #: serverAuth + clientAuth for hosts (etcd peers and pgBackRest use the host cert as a client cert too).
    usages: tuple[x509.ObjectIdentifier, ...] = SERVER_AND_CLIENT


@dataclass(frozen=True)
class CaResult:
    """What :func:`ensure_lab_ca` did: the CA created or kept, and which leaf certificates were (re)issued."""

    directory: Path
    ca_created: bool
    issued: tuple[str, ...]
    kept: tuple[str, ...]


def cert_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.crt"


def key_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.key"


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` atomically, created with ``mode`` from the first byte (a key is never readable by others,
    not even for a moment), then renamed over the old file: a crash leaves the old pair or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates it 0600
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    # Unencrypted PKCS#8: PostgreSQL, etcd, HAProxy and pgBackRest read it without a passphrase prompt.
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _write(path, pem, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: accepted by every TLS stack here (OpenSSL in PostgreSQL/pgBackRest/HAProxy, Go in etcd), small and fast.
    return ec.generate_private_key(ec.SECP256R1())


def load_certificate(path: Path) -> x509.Certificate:
    """A PEM certificate, or a one-line ``UsageError`` naming the file."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist; put the certificate there or point careflow_tls_dir elsewhere") \
            from None
    except OSError as exc:
        raise UsageError(f"cannot read {path} ({exc.strerror}); check its permissions") from None
    except ValueError:
        raise UsageError(f"{path} is not a PEM certificate; export it as PEM (-----BEGIN CERTIFICATE-----)") from None


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey | object:
    """A PEM private key (unencrypted), or a one-line ``UsageError`` naming the file, never its content."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist; put the certificate's private key there (mode 0600)") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path} ({exc.strerror}); check its permissions") from None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise UsageError(f"{path} is an encrypted key; the services read it unattended: store it unencrypted, "
                         "mode 0600") from None
    except (ValueError, UnsupportedAlgorithm):
        raise UsageError(f"{path} is not a PEM private key; export it as unencrypted PEM (mode 0600)") from None


def _public_bytes(key: object) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches(cert: x509.Certificate, key: object) -> bool:
    """Whether ``key`` is the private half of ``cert``'s public key."""
    return _public_bytes(key) == cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``cert`` (issuer name and signature)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def subject_alt_names(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(DNS names, IP addresses) of ``cert``'s subjectAltName; empty when it has none."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), ()
    return (tuple(san.get_values_for_type(x509.DNSName)),
            tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)))


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def extended_key_usages(cert: x509.Certificate) -> tuple[x509.ObjectIdentifier, ...] | None:
    """The extended key usages, or None when the certificate has no such extension (any usage)."""
    try:
        return tuple(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def missing_names(cert: x509.Certificate, dns_names: Iterable[str], ip_addresses: Iterable[str]) -> list[str]:
    """The wanted names and addresses ``cert``'s subjectAltName lacks (DNS names compared case-insensitively)."""
    have_dns, have_ips = subject_alt_names(cert)
    lower = {d.lower() for d in have_dns}
    ips = {ipaddress.ip_address(ip) for ip in have_ips}
    return ([d for d in dns_names if d.lower() not in lower]
            + [ip for ip in ip_addresses if ipaddress.ip_address(ip) not in ips])


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _new_ca(now: datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    serial = x509.random_serial_number()
    # Part of the serial in the name tells two generations apart: during a CA rotation both sit in one trust
    # bundle, and two CAs with one subject would leave chain building to guess (and `certs status` unable to
    # say which is which). Not the date: two CAs made in one second must differ too.
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CareFlow HA Lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"{CA_NAME} {serial:x}"[:len(CA_NAME) + 9])])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + CA_VALIDITY)
        # pathlen 0: this CA signs host certificates, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _create_ca(directory: Path, now: datetime) -> x509.Certificate:
    key, cert = _new_ca(now)
    # Key first: a ca.crt without its key would look like a user's CA that careflow-ha cannot sign with.
    _write_key(key_path(directory, "ca"), key)
    _write_cert(directory / CA_CERT, cert)
    return cert


def _load_ca(directory: Path, now: datetime) -> tuple[x509.Certificate, object]:
    cert_file, key_file = directory / CA_CERT, directory / CA_KEY
    cert, key = load_certificate(cert_file), load_private_key(key_file)
    if not key_matches(cert, key):
        raise UsageError(f"{key_file} is not the key of {cert_file}; restore the pair, or move {directory} away to "
                         "start a new lab CA (then provision again)")
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        raise UsageError(f"the lab CA {cert_file} expires on {cert.not_valid_after_utc:%Y-%m-%d}; move {directory} "
                         "away to start a new lab CA, then provision again")
    return cert, key


def why_reissue(directory: Path, spec: LeafSpec, ca: x509.Certificate, now: datetime) -> str | None:
    """Why the certificate for ``spec`` must be issued again, or None when the one on disk still fits."""
    cert_file, key_file = cert_path(directory, spec.name), key_path(directory, spec.name)
    if not cert_file.exists() or not key_file.exists():
        return "missing"
    try:
        cert, key = load_certificate(cert_file), load_private_key(key_file)
    except UsageError:
        return "unreadable"
    if not key_matches(cert, key):
        return "key mismatch"
    if not issued_by(cert, ca):
        return "another CA"
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return "expiring"
    if common_name(cert) != spec.name:
        return "other name"
    if missing_names(cert, spec.dns_names, spec.ip_addresses):
        return "missing SAN"
    usages = extended_key_usages(cert)
    if usages is None or set(spec.usages) - set(usages):
        return "usage"
    return None


def _issue(directory: Path, spec: LeafSpec, ca: x509.Certificate, ca_key: object, now: datetime) -> None:
    key = _new_key()
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in spec.dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in spec.ip_addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CareFlow HA Lab"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, spec.name)]))
        .issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + LEAF_VALIDITY, ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(spec.usages)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False)  # type: ignore[arg-type]
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    # Key first, then the certificate: an interrupted run leaves a pair that `why_reissue` calls a mismatch.
    _write_key(key_path(directory, spec.name), key)
    _write_cert(cert_path(directory, spec.name), cert)


def ensure_lab_ca(directory: Path, leaves: Iterable[LeafSpec], now: datetime | None = None,
                  reissue: bool = False) -> CaResult:
    """Create the CA in ``directory`` on first use, and issue every leaf in ``leaves`` that is missing or no
    longer fits (see :func:`why_reissue`), or every leaf with ``reissue`` (a rotation: new keys too).
    Returns what it did; raises ``UsageError`` for a CA it cannot use."""
    moment = _now(now)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # the CA key's directory: the control host's user only
    has_cert, has_key = (directory / CA_CERT).exists(), (directory / CA_KEY).exists()
    if has_cert != has_key:
        present, absent = (CA_CERT, CA_KEY) if has_cert else (CA_KEY, CA_CERT)
        raise UsageError(f"{directory} has {present} but no {absent}; restore it, or move {directory} away to start "
                         "a new lab CA")
    created = not has_cert
    if created:
        ca = _create_ca(directory, moment)
        ca_key = load_private_key(directory / CA_KEY)
    else:
        ca, ca_key = _load_ca(directory, moment)
    issued, kept = [], []
    for spec in leaves:
        if not reissue and why_reissue(directory, spec, ca, moment) is None:
            kept.append(spec.name)
        else:
            _issue(directory, spec, ca, ca_key, moment)
            issued.append(spec.name)
    return CaResult(directory, created, tuple(issued), tuple(kept))


# -- CA rotation -------------------------------------------------------------------------------------------------------
# Three steps, each installed on every host (and every service made to use it) before the next begins:
#   1. trust both: a new CA is made (ca-next.*); ca.crt becomes the bundle old + new. The old CA still signs.
#   2. sign with the new: ca.key becomes the new CA's key, ca.crt new + old (the old kept as ca-previous.crt);
#      every leaf is issued again by the new CA. Clients and servers trust both, so old and new leaves meet.
#   3. retire the old: ca.crt is the new CA alone; once that is installed everywhere, ca-previous.crt is removed.
# The step a directory is in follows from its files alone, so an interrupted rotation resumes where it stopped.

CA_NEXT = "ca-next"
CA_PREVIOUS = "ca-previous"


def ca_rotation_step(directory: Path) -> str | None:
    """The CA rotation step ``directory`` has reached: "trust-both", "sign-new", "retire-old", or None."""
    if cert_path(directory, CA_NEXT).exists():
        return "trust-both"
    if cert_path(directory, CA_PREVIOUS).exists():
        return "sign-new" if len(trusted_cas(directory / CA_CERT)) > 1 else "retire-old"
    return None


def _bundle(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def trusted_cas(path: Path) -> list[x509.Certificate]:
    """Every certificate of a CA file (a bundle during a rotation), or a one-line ``UsageError``."""
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist; run `careflow-ha provision` (it creates the lab CA)") from None
    except ValueError:
        raise UsageError(f"{path} is not a PEM certificate bundle; restore it from {path.parent}") from None
    return certs


def begin_ca_rotation(directory: Path, now: datetime | None = None) -> x509.Certificate:
    """Step 1: make the next CA (or keep the one an interrupted run made) and trust both in ca.crt."""
    moment = _now(now)
    current, _ = _load_ca(directory, moment)
    if not cert_path(directory, CA_NEXT).exists():
        key, cert = _new_ca(moment)
        _write_key(key_path(directory, CA_NEXT), key)
        _write_cert(cert_path(directory, CA_NEXT), cert)
    nxt = load_certificate(cert_path(directory, CA_NEXT))
    # The signing CA stays first: the certificate checks read the first one as the hosts' issuer.
    _write(directory / CA_CERT, _bundle(current, nxt), 0o644)
    return nxt


def switch_ca_signer(directory: Path) -> None:
    """Step 2: the next CA signs from now on (ca.key), ca.crt is new + old; the old CA is kept as ca-previous."""
    nxt_cert, nxt_key = cert_path(directory, CA_NEXT), key_path(directory, CA_NEXT)
    old = trusted_cas(directory / CA_CERT)[0]
    new = load_certificate(nxt_cert)
    if not key_matches(new, load_private_key(nxt_key)):
        raise UsageError(f"{nxt_key} is not the key of {nxt_cert}; move both away and start the CA rotation again")
    _write_cert(cert_path(directory, CA_PREVIOUS), old)
    _write(directory / CA_CERT, _bundle(new, old), 0o644)
    os.replace(nxt_key, directory / CA_KEY)  # the old key is gone from here on: nothing may sign with it
    nxt_cert.unlink()


def retire_old_ca(directory: Path) -> None:
    """Step 3: ca.crt trusts the new CA alone (ca-previous.crt stays until :func:`finish_ca_rotation`)."""
    new = trusted_cas(directory / CA_CERT)[0]
    _write(directory / CA_CERT, _bundle(new), 0o644)


def finish_ca_rotation(directory: Path) -> None:
    """After step 3 is installed everywhere: the rotation is over (ca-previous.crt removed)."""
    cert_path(directory, CA_PREVIOUS).unlink(missing_ok=True)


def control_client_spec() -> LeafSpec:
    """The control host's client certificate: clientAuth only, no names (it is never a server)."""
    return LeafSpec(CONTROL_CLIENT, usages=CLIENT_ONLY)


__all__ = [
    "CA_CERT", "CA_KEY", "CA_NEXT", "CA_PREVIOUS", "CONTROL_CLIENT", "CaResult", "LeafSpec", "RENEW_BEFORE",
    "begin_ca_rotation", "ca_rotation_step", "cert_path", "common_name", "control_client_spec", "ensure_lab_ca",
    "extended_key_usages", "finish_ca_rotation", "is_ca", "issued_by", "key_matches", "key_path",
    "load_certificate", "load_private_key", "missing_names", "retire_old_ca", "subject_alt_names",
    "switch_ca_signer", "trusted_cas", "why_reissue",
]
