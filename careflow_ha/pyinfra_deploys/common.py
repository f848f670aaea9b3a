"""The ``common`` role in pyinfra: base packages, timezone, locales, kernel settings."""

from __future__ import annotations

import io

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server

from careflow_ha.pyinfra_deploys._data import var
from careflow_ha.pyinfra_deploys.ops import VirtualizationContainer, apt_cache_fresh

SYSCTL_FILE = "/etc/sysctl.d/60-careflow-postgresql.conf"


def _manage_sysctl() -> bool:
    mode = var("common_manage_sysctl")
    return mode == "always" or (mode == "auto" and host.get_fact(VirtualizationContainer) == "none")


@deploy("Common")
def common() -> None:
    apt_cache_fresh(name="Ensure the apt cache is fresh (at most an hour old)", max_age_s=3600)
    apt.packages(name="Ensure base packages are installed", packages=var("common_packages"), no_recommends=True)

    tz = var("common_timezone")
    files.link(
        name=f"Ensure the timezone is {tz} (/etc/localtime)", path="/etc/localtime", target=f"/usr/share/zoneinfo/{tz}"
    )
    files.put(
        name=f"Ensure the timezone is {tz} (/etc/timezone)",
        src=io.BytesIO(f"{tz}\n".encode()), dest="/etc/timezone", user="root", group="root", mode="644",
    )
    for locale in var("common_locales"):
        server.locale(name=f"Ensure locale {locale} is generated", locale=locale)
    for key, value in var("common_sysctl").items():
        server.sysctl(
            name=f"Ensure kernel setting {key} for PostgreSQL is applied",
            key=key, value=value, persist=True, persist_file=SYSCTL_FILE,
            _if=_manage_sysctl,
        )
