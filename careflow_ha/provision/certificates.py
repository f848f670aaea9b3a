"""The hosts' certificates, before either provisioner starts: the lab CA issues them, or the user's are checked.

The inventory says which (``careflow_tls_lab_ca``) and where they are on the control host
(``careflow_tls_dir``, and per host the ``tls`` role's ``tls_src_*_file``). The ``tls`` role copies them to the
hosts and does not care who made them. Either way every certificate is then checked here, so a user's
certificate that is expired, from another CA, for another host or without a name the clients use stops
``provision`` and ``up`` with exit 2 and one line naming the file and the fix, before any host changes.
"""

from __future__ import annotations

import ipaddress
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.x509.oid import NameOID

from careflow_ha.errors import UsageError
from careflow_ha.lab.ca import (
    RENEW_BEFORE,
    LeafSpec,
    common_name,
    control_client_spec,
    ensure_lab_ca,
    extended_key_usages,
    is_ca,
    issued_by,
    key_matches,
    load_certificate,
    load_private_key,
    missing_names,
    subject_alt_names,
)
from careflow_ha.provision.inventory import ClusterInventory, _ansible_bool

#: Each VIP and the groups whose hosts answer on it or sit behind it, so their certificates carry it: the
#: client VIP (HAProxy on the balancers, the database nodes behind it) and the leader VIP (on Patroni's leader).
VIP_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("careflow_vip", ("balancers", "postgres_cluster")),
    ("careflow_leader_vip", ("postgres_cluster",)),
)
#: What the roles need in an extended key usage, when a certificate restricts it.
SERVER_AUTH, CLIENT_AUTH = "1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"


def _get(inv: ClusterInventory, host: str, name: str) -> Any:
    try:
        return inv.hostvars[host][name]
    except KeyError:
        raise UsageError(f"variable {name} is not defined for {host}; set it in inventory/group_vars/all.yml") \
            from None


def lab_ca_enabled(inv: ClusterInventory) -> bool:
    return _ansible_bool(_get(inv, inv.hosts[0], "careflow_tls_lab_ca"))


def tls_dir(inv: ClusterInventory) -> Path:
    raw = str(_get(inv, inv.hosts[0], "careflow_tls_dir"))
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise UsageError(f"careflow_tls_dir={raw!r} is not an absolute path; write it like /etc/clinic-ca "
                         "(or \"{{ playbook_dir }}/.lab/ca\")")
    return path


def client_names(inv: ClusterInventory, host: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(DNS names, IP addresses) clients use to reach ``host``: its name, its node IP, the VIPs where they apply."""
    hv = inv.hostvars[host]
    ips = [str(hv["careflow_node_ip"])] if hv.get("careflow_node_ip") else []
    for name, groups in VIP_GROUPS:
        vip = str(hv.get(name) or "").strip()
        if vip and any(host in inv.group(g) for g in groups):
            ips.append(vip)
    return (host,), tuple(dict.fromkeys(ips))


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def lab_leaf(inv: ClusterInventory, host: str) -> LeafSpec:
    """The lab certificate of ``host``: the client names, plus its short name, its SSH address, and
    ``localhost``/``127.0.0.1`` for the lab's published ports."""
    dns, ips = client_names(inv, host)
    dns_names, addresses = [*dns, host.split(".")[0], "localhost"], [*ips, "127.0.0.1"]
    ssh = str(inv.hostvars[host].get("ansible_host") or "")
    if ssh:
        (addresses if _is_ip(ssh) else dns_names).append(ssh)
    return LeafSpec(host, tuple(dict.fromkeys(dns_names)), tuple(dict.fromkeys(addresses)))


def _files(inv: ClusterInventory, host: str) -> tuple[Path, Path, Path]:
    """The CA certificate, certificate and key the ``tls`` role copies to ``host`` (its tls_src_* variables)."""
    return tuple(Path(str(_get(inv, host, f"tls_src_{kind}_file")))  # type: ignore[return-value]
                 for kind in ("ca", "cert", "key"))


def host_certificate_file(inv: ClusterInventory, host: str) -> Path:
    """The certificate the ``tls`` role installs on ``host``, on the control host (what its services must serve)."""
    return _files(inv, host)[1]


def check_certificates(inv: ClusterInventory, now: datetime | None = None) -> None:
    """Raise ``UsageError`` (one line: the file and the fix) on the first certificate the hosts cannot use."""
    moment = now or datetime.now(UTC)
    cas: dict[Path, Any] = {}
    for host in inv.hosts:
        ca_file, cert_file, key_file = _files(inv, host)
        if ca_file not in cas:
            authority = load_certificate(ca_file)
            if not is_ca(authority):
                raise UsageError(f"{ca_file} is not a CA certificate (no basicConstraints CA:TRUE); put the CA that "
                                 "signed the hosts' certificates there")
            _check_dates(ca_file, authority, moment, "the CA")
            cas[ca_file] = authority
        authority = cas[ca_file]
        cert = load_certificate(cert_file)
        _check_dates(cert_file, cert, moment, host)
        if not issued_by(cert, authority):
            raise UsageError(f"{cert_file} ({host}) is not signed by the CA in {ca_file}; issue it from that CA, "
                             "or put the CA that signed it in careflow_tls_dir")
        dns, ips = client_names(inv, host)
        if common_name(cert) != host and host not in subject_alt_names(cert)[0]:
            raise UsageError(f"{cert_file} is for {common_name(cert) or 'no name'}, not for host {host}; put {host}'s "
                             f"certificate there (CN or DNS subjectAltName {host})")
        lacking = missing_names(cert, dns, ips)
        if lacking:
            raise UsageError(f"{cert_file} ({host}) lacks {', '.join(lacking)} in its subjectAltName, which clients "
                             f"use; re-issue it with DNS:{host}" + "".join(f", IP:{ip}" for ip in ips))
        usages = extended_key_usages(cert)
        if usages is not None and not {SERVER_AUTH, CLIENT_AUTH} <= {u.dotted_string for u in usages}:
            raise UsageError(f"{cert_file} ({host}) lacks the serverAuth or clientAuth extended key usage; re-issue it "
                             "with both (etcd peers and pgBackRest present host certificates as clients too)")
        _check_key(key_file, cert_file, cert)


def _check_dates(path: Path, cert: Any, now: datetime, what: str) -> None:
    if cert.not_valid_after_utc <= now:
        raise UsageError(f"{path} ({what}) expired on {cert.not_valid_after_utc:%Y-%m-%d}; issue a new one and put "
                         "it there")
    if cert.not_valid_before_utc > now:
        raise UsageError(f"{path} ({what}) is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check "
                         "the control host's clock or re-issue it")


def _check_key(key_file: Path, cert_file: Path, cert: Any) -> None:
    try:
        mode = stat.S_IMODE(key_file.stat().st_mode)
    except FileNotFoundError:
        raise UsageError(f"{key_file} does not exist; put the private key of {cert_file} there (mode 0600)") from None
    if mode & 0o077:
        raise UsageError(f"{key_file} is readable by others than its owner (mode {mode:04o}); chmod 600 {key_file}")
    if not key_matches(cert, load_private_key(key_file)):
        raise UsageError(f"{key_file} is not the private key of {cert_file}; put the key that belongs to it there")


def prepare_certificates(inv: ClusterInventory, progress: Callable[[str], None],
                         now: datetime | None = None) -> None:
    """Before a provisioner starts: with the lab CA, create it on first use and (re)issue what no longer fits;
    then check every host's certificate, the lab's as much as a user's."""
    if lab_ca_enabled(inv):
        directory = tls_dir(inv)
        leaves = [lab_leaf(inv, host) for host in inv.hosts] + [control_client_spec()]
        result = ensure_lab_ca(directory, leaves, now=now)
        if result.ca_created:
            progress(f"tls: created the lab CA in {directory}")
        if result.issued:
            progress(f"tls: issued certificates for {', '.join(result.issued)}")
    check_certificates(inv, now=now)


@dataclass(frozen=True)
class CertificateStatus:
    """One certificate on the control host, as ``certs status`` shows it (public data only)."""

    file: str
    subject: str
    issuer: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_after: datetime
    days_left: int
    #: ok; warn: closer than RENEW_BEFORE to its end (the lab CA re-issues it on the next provision); expired.
    state: str
    is_ca: bool


def certificate_status(directory: Path, now: datetime | None = None) -> list[CertificateStatus]:
    """Every ``*.crt`` in ``directory`` (the CA first), with its names and how long it has left."""
    moment = now or datetime.now(UTC)
    files = sorted(directory.glob("*.crt"), key=lambda p: (p.name != "ca.crt", p.name)) if directory.is_dir() else []
    if not files:
        raise UsageError(f"no certificates in {directory}; run `careflow-ha provision` (it creates the lab CA), or "
                         "point careflow_tls_dir at yours")
    out = []
    for path in files:
        cert = load_certificate(path)
        left = cert.not_valid_after_utc - moment
        state = "expired" if left <= timedelta(0) else "warn" if left < RENEW_BEFORE else "ok"
        issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
        dns, ips = subject_alt_names(cert)
        out.append(CertificateStatus(
            file=path.name, subject=common_name(cert), issuer=str(issuer[0].value) if issuer else "",
            dns_names=dns, ip_addresses=ips, not_after=cert.not_valid_after_utc,
            days_left=left // timedelta(days=1), state=state, is_ca=is_ca(cert),
        ))
    return out
