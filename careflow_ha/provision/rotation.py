"""Certificate rotation without an outage: ``careflow-ha certs rotate [--ca]``.

A leaf rotation issues every host's certificate again (new keys too), installs them one host at a time and
makes each service use them (``rotate-certs.yml``: reloads, which keep every connection). A CA rotation
takes three such passes (``lab/ca.py``): trust both CAs, sign with the new one, retire the old one, so that
at every moment each client trusts whatever certificate each server presents.

After every pass each TLS listener is asked, from the control host, which certificate it serves
(``listeners.py``); one that still serves an old one fails the rotation with one line naming it. A
rotation stopped half-way (a host down) resumes where it stopped when started again: the CA step follows
from the files in ``careflow_tls_dir``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from careflow_ha.errors import CheckFailed, UsageError
from careflow_ha.lab.ca import (
    LeafSpec,
    begin_ca_rotation,
    ca_rotation_step,
    common_name,
    control_client_spec,
    ensure_lab_ca,
    finish_ca_rotation,
    retire_old_ca,
    switch_ca_signer,
)
from careflow_ha.provision.certificates import host_certificate_file, lab_ca_enabled, lab_leaf, tls_dir
from careflow_ha.provision.inventory import ClusterInventory
from careflow_ha.provision.listeners import Served, file_fingerprint, read_served, tls_listeners
from careflow_ha.settings import PROJECT_DIR, Settings

ROTATE_PLAYBOOK = PROJECT_DIR / "rotate-certs.yml"
#: Patroni handles a SIGHUP in its main loop (up to loop_wait, 10 s): a listener may take that long to switch.
SERVED_WAIT_S = 30.0

Progress = Callable[[str], None]
#: Runs the rotation playbook against the inventory (the Ansible runner, or a fake in tests).
InstallStep = Callable[[Path], None]


@dataclass(frozen=True)
class Pass:
    """One install-and-reload pass: what it did, how long it took, and what the listeners served after it."""

    step: str
    seconds: float
    served: tuple[Served, ...]


@dataclass
class Rotation:
    """What ``certs rotate`` did, pass by pass."""

    kind: str  # "leaf" or "ca"
    passes: list[Pass] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.passes)


def _leaves(inv: ClusterInventory) -> list[LeafSpec]:
    return [lab_leaf(inv, host) for host in inv.hosts] + [control_client_spec()]


def installed_fingerprints(inv: ClusterInventory) -> dict[str, str]:
    """Each host's certificate as the control host holds it (what its listeners must serve), by fingerprint."""
    return {host: file_fingerprint(host_certificate_file(inv, host)) for host in inv.hosts}


def stale_listeners(inv: ClusterInventory, served: list[Served]) -> list[str]:
    """The listeners whose certificate is not the control host's file for their host (or that could not be read),
    one phrase each."""
    wanted = installed_fingerprints(inv)
    out = []
    for s in served:
        if s.error:
            out.append(f"{s.listener.where}: {s.error}")
        elif s.fingerprint != wanted[s.listener.host]:
            out.append(f"{s.listener.where} still serves serial {s.serial}")
    return out


def name_stale(stale: list[str], shown: int = 3) -> str:
    """The first few stale listeners and how many more: one readable line however many hosts there are."""
    more = len(stale) - shown
    return "; ".join(stale[:shown]) + (f"; and {more} more (certs status --served lists them)" if more > 0 else "")


def wait_served(inv: ClusterInventory, directory: Path, progress: Progress, timeout_s: float = SERVED_WAIT_S,
                read: Callable[..., list[Served]] = read_served) -> list[Served]:
    """Poll every listener until each serves its host's current certificate; ``CheckFailed`` at the deadline."""
    listeners = tls_listeners(inv)
    deadline = time.monotonic() + timeout_s
    while True:
        served = read(listeners, directory)
        stale = stale_listeners(inv, served)
        if not stale:
            progress(f"certs: all {len(served)} TLS listeners serve the new certificates")
            return served
        if time.monotonic() >= deadline:
            raise CheckFailed(f"after {timeout_s:.0f} s, {len(stale)} listener(s) do not serve the installed "
                              f"certificate: {name_stale(stale)}; see the service's log, then run "
                              "`careflow-ha certs rotate` again")
        time.sleep(1.0)


def _install(inv: ClusterInventory, directory: Path, step: str, install: InstallStep, progress: Progress,
             rotation: Rotation, wait: Callable[..., list[Served]]) -> None:
    progress(f"certs: {step}: installing on every host, one at a time")
    started = time.monotonic()
    install(inv.path)
    served = wait(inv, directory, progress)
    rotation.passes.append(Pass(step, time.monotonic() - started, tuple(served)))


def rotate(inv: ClusterInventory, install: InstallStep, progress: Progress, ca: bool = False,
           wait: Callable[..., list[Served]] = wait_served) -> Rotation:
    """Rotate the hosts' certificates (``ca``: the lab CA too), pass by pass; see the module's docstring."""
    directory = tls_dir(inv)
    if not lab_ca_enabled(inv):
        if ca:
            raise UsageError("--ca rotates the lab CA, and this inventory uses its own (careflow_tls_lab_ca is "
                             "false); put the new CA and certificates in careflow_tls_dir and run `certs rotate`")
        rotation = Rotation("leaf")
        _install(inv, directory, "install your certificates", install, progress, rotation, wait)
        return rotation
    if not ca:
        if ca_rotation_step(directory) is not None:
            raise UsageError(f"a CA rotation is half-way in {directory} (step {ca_rotation_step(directory)}); "
                             "finish it with `careflow-ha certs rotate --ca`")
        result = ensure_lab_ca(directory, _leaves(inv), reissue=True)
        progress(f"certs: issued new certificates for {', '.join(result.issued)}")
        rotation = Rotation("leaf")
        _install(inv, directory, "new leaf certificates", install, progress, rotation, wait)
        return rotation
    rotation = Rotation("ca")
    step = ca_rotation_step(directory)
    # A step's files may be on only some hosts (a run stopped half-way): its pass runs again, whole, before the
    # next step changes anything.
    if step is None:
        new = begin_ca_rotation(directory)
        progress(f"certs: made the next CA ({common_name(new)}); hosts trust both")
    if step in (None, "trust-both"):
        _install(inv, directory, "trust both CAs", install, progress, rotation, wait)
        switch_ca_signer(directory)
        result = ensure_lab_ca(directory, _leaves(inv), reissue=True)
        progress(f"certs: the new CA signs; issued {', '.join(result.issued)}")
    if step != "retire-old":
        _install(inv, directory, "leaf certificates from the new CA", install, progress, rotation, wait)
        retire_old_ca(directory)
        progress("certs: the old CA is retired; hosts trust the new one only")
    _install(inv, directory, "retire the old CA", install, progress, rotation, wait)
    finish_ca_rotation(directory)
    return rotation


def rotate_with_ansible(settings: Settings, inventory: Path, progress: Progress, ca: bool = False) -> Rotation:
    """``certs rotate [--ca]`` on ``inventory``: the checked inventory, each pass run by ``rotate-certs.yml``."""
    from careflow_ha.provision.ansible import run_playbook
    from careflow_ha.provision.checks import check_inventory_file

    def install(inventory_path: Path) -> None:
        run_playbook(settings, progress, inventory_path, playbook=ROTATE_PLAYBOOK)

    inv = check_inventory_file(inventory, settings.secrets, None, lookups_checked_later=True)
    return rotate(inv, install, progress, ca=ca)
