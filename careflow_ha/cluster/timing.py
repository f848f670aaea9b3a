"""Patroni's leader-lease timing and the named presets, read from the inventory's group_vars.

The presets are provisioned config (``careflow_timing_presets`` in
``inventory/group_vars/all.yml``: Patroni's ttl/loop_wait/retry_timeout and
HAProxy's check timing). That file is their one source: drills switch
Patroni's half at run time through the REST API, and the CLI offers the same
names for ``--preset``, so both read it here instead of keeping a copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import yaml

from careflow_ha.errors import UsageError
from careflow_ha.settings import PROJECT_DIR

#: Where the presets live (shared by every role and both provisioners).
GROUP_VARS = PROJECT_DIR / "inventory" / "group_vars" / "all.yml"


@dataclass(frozen=True)
class Timing:
    """Patroni's leader-lease timing (seconds). Patroni requires loop_wait + 2 * retry_timeout <= ttl."""

    ttl: int
    loop_wait: int
    retry_timeout: int

    def __post_init__(self) -> None:
        if self.loop_wait + 2 * self.retry_timeout > self.ttl:
            raise UsageError(f"timing {self} breaks Patroni's rule loop_wait + 2*retry_timeout <= ttl")


def read_presets(group_vars: Path = GROUP_VARS) -> Mapping[str, Timing]:
    """The Patroni half of each ``careflow_timing_presets`` entry, in file order."""
    data = yaml.safe_load(group_vars.read_text(encoding="utf-8")) or {}
    presets = data.get("careflow_timing_presets") or {}
    return MappingProxyType(
        {
            name: Timing(ttl=int(p["ttl"]), loop_wait=int(p["loop_wait"]), retry_timeout=int(p["retry_timeout"]))
            for name, p in presets.items()
        }
    )


#: ``default`` is Patroni's own defaults. ``fast`` keeps a 20 s lease (the
#: floor we accept: shorter leases fail over on a busy 2-core box for nothing)
#: but runs the HA loop every 2 s, so the replicas notice the expired lease and
#: promote sooner than the common (20, 5, 5) preset.
TIMING_PRESETS: Mapping[str, Timing] = read_presets()


def timing_preset(name: str) -> Timing:
    """The preset called ``name``, or a UsageError listing the valid names."""
    try:
        return TIMING_PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown timing preset {name!r}; use one of: {', '.join(TIMING_PRESETS)}") from None
