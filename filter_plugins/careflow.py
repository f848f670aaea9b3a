"""Ansible filters shared with the pyinfra renderer (careflow_ha/provision/pgauth.py is the one implementation)."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from careflow_ha.provision.pgauth import FILTERS
except ImportError:  # ansible from another Python than the project's venv: import from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from careflow_ha.provision.pgauth import FILTERS


class FilterModule:
    """careflow_pg_md5(user), careflow_scram_sha256(user): password verifiers, stable across runs."""

    def filters(self):  # noqa: ANN201  # Ansible's plugin API
        return dict(FILTERS)
