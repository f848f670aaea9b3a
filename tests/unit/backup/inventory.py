"""The lab inventory with or without its repository host, for rendering the pgbackrest role.

A copy of inventory/lab.yml (group_vars are the real ones, through a symlink), so the tests read the same
defaults and templates; without ``repository_host`` the backup_repository group is dropped, which is the
single-server form (a local repository on each node).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from careflow_ha.provision import LAB_INVENTORY
from careflow_ha.provision.inventory import ClusterInventory, load_inventory
from careflow_ha.settings import SECRET_KEYS

SECRETS = {key: f"{key.lower()}-s3cr3t-value" for key in SECRET_KEYS}
#: The defaults a pgbackrest render sees: its own only, as in its site.yml play (Ansible scopes role defaults
#: to the play; a variable of another role's defaults is undefined there).
ROLES_WITH_PGBACKREST = ("pgbackrest",)
REPO_GROUP = "backup_repository"
BACKUP1_IP = "192.168.56.30"


def inventory_file(directory: Path, repository_host: bool = True, extra_vars: dict | None = None) -> Path:
    """``directory``/inventory.yml: the lab's hosts (and backup1 unless not ``repository_host``)."""
    data = yaml.safe_load(LAB_INVENTORY.read_text())
    assert data["all"]["children"][REPO_GROUP]["hosts"]["backup1"]["careflow_node_ip"] == BACKUP1_IP
    if not repository_host:
        del data["all"]["children"][REPO_GROUP]
    data["all"]["vars"].update(extra_vars or {})
    (directory / "group_vars").symlink_to(LAB_INVENTORY.parent / "group_vars")
    path = directory / "inventory.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def with_repository(directory: Path, **kwargs) -> ClusterInventory:
    return load_inventory(inventory_file(directory, **kwargs), SECRETS, roles=ROLES_WITH_PGBACKREST)
