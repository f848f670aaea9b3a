"""The hosts' certificates before provisioning: the lab CA issues the names clients use, and a user's own
certificates are refused (exit 2, one line naming the file and the fix) when the hosts could not use them.

The bad certificates are made here with ``cryptography``, each broken in one way.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import careflow_ha.cli.cluster as cli_cluster
from careflow_ha.errors import UsageError
from careflow_ha.lab.ca import CONTROL_CLIENT, subject_alt_names
from careflow_ha.provision import LAB_INVENTORY, base
from careflow_ha.provision.certificates import (
    check_certificates,
    client_names,
    lab_leaf,
    prepare_certificates,
)
from careflow_ha.provision.inventory import load_inventory
from careflow_ha.settings import PORT_DEFAULTS, SECRET_KEYS, Settings
from tests.cli import run_cli

SECRETS = {key: f"{key.lower()}-s3cr3t-value" for key in SECRET_KEYS}
NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
LEADER_VIP = "192.168.56.101"
HOSTS = ("pg1", "pg2", "pg3", "lb1", "lb2", "mon1", "backup1")
VIP = "192.168.56.100"


def _inventory(tls_dir: Path, lab_ca: bool):  # noqa: ANN202
    return load_inventory(LAB_INVENTORY, SECRETS,
                          {"careflow_tls_dir": str(tls_dir), "careflow_tls_lab_ca": str(lab_ca).lower()})


@pytest.mark.parametrize(
    ("host", "ips"),
    [
        ("pg1", ("192.168.56.11", VIP, LEADER_VIP)),  # the database nodes: behind the VIP, and the leader VIP
        ("lb2", ("192.168.56.20", VIP)),
    ],
)
def test_clients_reach_a_host_by_its_name_node_ip_and_the_vip(tmp_path, host, ips):
    assert client_names(_inventory(tmp_path, True), host) == ((host,), ips)


def test_without_a_vip_no_certificate_names_one(tmp_path):
    inv = load_inventory(LAB_INVENTORY, SECRETS, {"careflow_tls_dir": str(tmp_path), "careflow_vip": ""})
    assert client_names(inv, "lb1") == (("lb1",), ("192.168.56.10",))


def test_a_lab_certificate_adds_the_published_ports_names(tmp_path):
    leaf = lab_leaf(_inventory(tmp_path, True), "pg2")
    assert (leaf.name, leaf.dns_names, leaf.ip_addresses) == (
        "pg2", ("pg2", "localhost"), ("192.168.56.12", VIP, LEADER_VIP, "127.0.0.1"))


def test_provisioning_makes_the_lab_ca_once_and_then_keeps_it(tmp_path):
    inv, said = _inventory(tmp_path / "ca", True), []
    prepare_certificates(inv, said.append, now=NOW)
    assert said == [f"tls: created the lab CA in {tmp_path / 'ca'}",
                    f"tls: issued certificates for {', '.join(HOSTS)}, {CONTROL_CLIENT}"]
    names = {p.name for p in (tmp_path / "ca").iterdir()}
    assert names == {"ca.crt", "ca.key"} | {f"{h}.{s}" for h in (*HOSTS, CONTROL_CLIENT) for s in ("crt", "key")}
    said.clear()
    prepare_certificates(inv, said.append, now=NOW + timedelta(days=100))
    assert said == []  # nothing to say, nothing re-issued


def test_a_new_vip_reissues_the_hosts_that_carry_it_on_the_next_run(tmp_path):
    inv, said = _inventory(tmp_path / "ca", True), []
    prepare_certificates(inv, said.append, now=NOW)
    said.clear()
    wider = load_inventory(LAB_INVENTORY, SECRETS, {"careflow_tls_dir": str(tmp_path / "ca"),
                                                   "careflow_vip": "192.168.56.102"})
    prepare_certificates(wider, said.append, now=NOW)
    assert said == ["tls: issued certificates for pg1, pg2, pg3, lb1, lb2"]  # the VIP moved: every host again


# --- A user's own certificates ------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, mode: int = 0o600) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(mode)


def _ca(name: str = "Clinic Root CA", ca: bool = True) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], cn: str, dns: list[str], ips: list[str],
          key: ec.EllipticCurvePrivateKey, days: tuple[int, int] = (-1, 365),
          usages: list[x509.ObjectIdentifier] | None = None) -> x509.Certificate:
    ca_cert, ca_key = ca
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(NOW + timedelta(days=days[0])).not_valid_after(NOW + timedelta(days=days[1]))
               .add_extension(x509.SubjectAlternativeName(sans), critical=False)
               .add_extension(x509.ExtendedKeyUsage(usages or [ExtendedKeyUsageOID.SERVER_AUTH,
                                                               ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    return builder.sign(ca_key, hashes.SHA256())


def _node_ips() -> dict[str, str]:
    inv = yaml.safe_load(LAB_INVENTORY.read_text())
    return {h: str(v["careflow_node_ip"]) for g in inv["all"]["children"].values()
            for h, v in (g.get("hosts") or {}).items() if v}


def _user_certificates(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A sound set, like a clinic's own CA would issue it: no localhost, no 127.0.0.1, production-like."""
    directory.mkdir(exist_ok=True)
    ca = _ca()
    (directory / "ca.crt").write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    for host, ip in _node_ips().items():
        key = _key()
        _write_key(directory / f"{host}.key", key)
        cert = _leaf(ca, host, [host], [ip, VIP, *([LEADER_VIP] if host.startswith("pg") else [])], key)
        (directory / f"{host}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca


def _put(directory: Path, host: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    (directory / f"{host}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        _write_key(directory / f"{host}.key", key)


def _expired(d: Path, ca) -> None:  # noqa: ANN001
    key = _key()
    _put(d, "pg2", _leaf(ca, "pg2", ["pg2"], ["192.168.56.12", VIP, LEADER_VIP], key, days=(-400, -3)), key)


def _other_ca(d: Path, ca) -> None:  # noqa: ANN001
    key = _key()
    _put(d, "pg1", _leaf(_ca("Someone Else's CA"), "pg1", ["pg1"], ["192.168.56.11", VIP, LEADER_VIP], key), key)


def _other_host(d: Path, ca) -> None:  # noqa: ANN001
    (d / "lb1.crt").write_bytes((d / "lb2.crt").read_bytes())
    (d / "lb1.key").write_bytes((d / "lb2.key").read_bytes())


def _no_vip(d: Path, ca) -> None:  # noqa: ANN001
    key = _key()
    _put(d, "lb2", _leaf(ca, "lb2", ["lb2"], ["192.168.56.20"], key), key)


def _no_node_ip(d: Path, ca) -> None:  # noqa: ANN001
    key = _key()
    _put(d, "pg3", _leaf(ca, "pg3", ["pg3"], [VIP, LEADER_VIP], key), key)


def _server_only(d: Path, ca) -> None:  # noqa: ANN001
    key = _key()
    _put(d, "pg1", _leaf(ca, "pg1", ["pg1"], ["192.168.56.11", VIP, LEADER_VIP], key,
                         usages=[ExtendedKeyUsageOID.SERVER_AUTH]), key)


def _foreign_key(d: Path, ca) -> None:  # noqa: ANN001
    _write_key(d / "pg2.key", _key())


def _open_key(d: Path, ca) -> None:  # noqa: ANN001
    (d / "lb1.key").chmod(0o644)


def _missing_cert(d: Path, ca) -> None:  # noqa: ANN001
    (d / "pg3.crt").unlink()


def _not_pem(d: Path, ca) -> None:  # noqa: ANN001
    (d / "pg1.crt").write_text("this is not a certificate\n")


def _leaf_as_ca(d: Path, ca) -> None:  # noqa: ANN001
    (d / "ca.crt").write_bytes((d / "pg1.crt").read_bytes())


def _not_yet_valid(d: Path, ca) -> None:  # noqa: ANN001
    key = _key()
    _put(d, "lb2", _leaf(ca, "lb2", ["lb2"], ["192.168.56.20", VIP], key, days=(2, 365)), key)


BAD = [
    ("expired", _expired, r"pg2\.crt \(pg2\) expired on 2026-11-29; issue a new one and put it there"),
    ("another CA", _other_ca, r"pg1\.crt \(pg1\) is not signed by the CA in .*ca\.crt; issue it from that CA"),
    ("another host's", _other_host, r"lb1\.crt is for lb2, not for host lb1; put lb1's certificate there"),
    ("no VIP", _no_vip, r"lb2\.crt \(lb2\) lacks 192\.168\.56\.100 in its subjectAltName, which clients use; "
                        r"re-issue it with DNS:lb2, IP:192\.168\.56\.20, IP:192\.168\.56\.100$"),
    ("no node IP", _no_node_ip, r"pg3\.crt \(pg3\) lacks 192\.168\.56\.13 in its subjectAltName"),
    ("server auth only", _server_only, r"pg1\.crt \(pg1\) lacks the serverAuth or clientAuth extended key usage"),
    ("foreign key", _foreign_key, r"pg2\.key is not the private key of .*pg2\.crt; put the key that belongs"),
    ("key readable by others", _open_key, r"lb1\.key is readable by others than its owner \(mode 0644\); chmod 600"),
    ("missing certificate", _missing_cert, r"pg3\.crt does not exist; put the certificate there"),
    ("not PEM", _not_pem, r"pg1\.crt is not a PEM certificate; export it as PEM"),
    ("leaf as CA", _leaf_as_ca, r"ca\.crt is not a CA certificate .*; put the CA that signed"),
    ("not yet valid", _not_yet_valid, r"lb2\.crt \(lb2\) is not valid before 2026-12-04 .*check the control host's"),
]


def test_a_sound_set_of_user_certificates_passes_and_is_not_touched(tmp_path):
    _user_certificates(tmp_path / "certs")
    before = {p.name: p.read_bytes() for p in (tmp_path / "certs").iterdir()}
    said: list[str] = []
    prepare_certificates(_inventory(tmp_path / "certs", False), said.append, now=NOW)
    assert said == [] and {p.name: p.read_bytes() for p in (tmp_path / "certs").iterdir()} == before


@pytest.mark.parametrize(("edit", "message"), [(e, m) for _, e, m in BAD], ids=[b[0] for b in BAD])
def test_a_user_certificate_the_hosts_cannot_use_is_one_line_naming_the_file(tmp_path, edit, message):
    ca = _user_certificates(tmp_path / "certs")
    edit(tmp_path / "certs", ca)
    with pytest.raises(UsageError) as err:
        check_certificates(_inventory(tmp_path / "certs", False), now=NOW)
    assert re.search(message, str(err.value)), str(err.value)
    assert "\n" not in str(err.value) and "PRIVATE KEY" not in str(err.value)


def test_a_relative_tls_dir_is_refused(tmp_path):
    with pytest.raises(UsageError, match=r"careflow_tls_dir='certs' is not an absolute path"):
        prepare_certificates(load_inventory(LAB_INVENTORY, SECRETS, {"careflow_tls_dir": "certs"}), print)


def test_the_lab_ca_certificates_pass_the_user_check_too(tmp_path):
    inv = _inventory(tmp_path / "ca", True)
    prepare_certificates(inv, lambda _m: None, now=NOW)
    check_certificates(inv, now=NOW)  # what the pyinfra child runs again
    assert "127.0.0.1" in subject_alt_names(x509.load_pem_x509_certificate((tmp_path / "ca/lb1.crt").read_bytes()))[1]


# --- Through the CLI: exit 2 before any tool starts ------------------------------------------------------------

_REAL_POPEN = subprocess.Popen


@pytest.mark.parametrize("provisioner", ["ansible", "pyinfra"])
def test_provision_refuses_an_expired_user_certificate_before_the_tool_starts(monkeypatch, tmp_path, provisioner):
    started: list[bool] = []

    def tool(argv, cwd, env, stdout, stderr, text):  # noqa: ANN001, ANN202 - Popen's signature
        started.append(True)
        if "--result" in argv:
            Path(argv[argv.index("--result") + 1]).write_text(
                json.dumps({"changed_ops": {}, "failed": {}, "unreachable": []}))
        return _REAL_POPEN(["printf", "%s", "PLAY RECAP\n"], stdout=subprocess.PIPE, text=True)

    secrets = {k: f"secret-{i}-value-long-enough" for i, k in enumerate(SECRET_KEYS)}
    settings = Settings(project_dir=tmp_path, ports=MappingProxyType(dict(PORT_DEFAULTS)),
                        secrets=MappingProxyType(secrets))
    monkeypatch.setattr(cli_cluster, "get_settings", lambda: settings)
    monkeypatch.setattr(base.subprocess, "Popen", tool)
    monkeypatch.setattr(base, "ensure_wheelhouse", lambda directory, progress: directory)
    monkeypatch.setattr(cli_cluster, "wait_healthy", lambda settings, progress: None)
    certs = tmp_path / "certs"
    ca = _user_certificates(certs)
    key = _key()
    _put(certs, "pg2", _leaf(ca, "pg2", ["pg2"], ["192.168.56.12", VIP, LEADER_VIP], key, days=(-400, -3)), key)
    inv = yaml.safe_load(LAB_INVENTORY.read_text())
    gv = yaml.safe_load((LAB_INVENTORY.parent / "group_vars" / "all.yml").read_text())
    gv.update(careflow_tls_dir=str(certs), careflow_tls_lab_ca=False)
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text(yaml.safe_dump(gv))
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inv))
    code, out, err = run_cli("provision", "-i", str(tmp_path / "inventory.yml"), "--provisioner", provisioner)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert re.search(r"certs/pg2\.crt \(pg2\) expired on \d{4}-\d\d-\d\d; issue a new one", lines[0])
    assert not started and "Traceback" not in err
