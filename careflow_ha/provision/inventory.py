"""One inventory for both provisioners: the Ansible inventory, read as data.

pyinfra gets its hosts, groups and variables from the same files Ansible
reads, with Ansible's precedence (role defaults < ``all.vars`` <
``group_vars/all.yml`` < group vars < host vars < extra vars):

- the inventory YAML (``inventory/lab.yml`` or a production one), its
  ``group_vars/`` and ``host_vars/`` beside it;
- every role's ``defaults/main.yml`` (names are role-prefixed, so they merge);
- Jinja expressions in those values are rendered with the same context the
  roles see (``groups``, ``hostvars``, ``inventory_hostname``, ``playbook_dir``,
  ``lookup('ansible.builtin.env', ...)`` answered from ``Settings.secrets``).

The role templates in ``roles/*/templates/`` are rendered here too, so each
config file has one source: the role's template. The inventory check that
runs before either tool starts (``checks``) reads the inventory through here.
"""

from __future__ import annotations

import configparser
import json
import re
from collections import ChainMap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jinja2
import yaml
from jinja2.nativetypes import NativeEnvironment

from careflow_ha.errors import UsageError
from careflow_ha.provision.pgauth import FILTERS as PGAUTH_FILTERS
from careflow_ha.settings import PROJECT_DIR

ROLES_DIR = PROJECT_DIR / "roles"
#: The playbook: its plays are the one source of the play order and of the roles both tools apply.
PLAYBOOK = PROJECT_DIR / "site.yml"
#: Ansible's own default for ``ansible_managed`` (ansible.cfg may override it).
ANSIBLE_MANAGED_DEFAULT = "Ansible managed"
#: Inventory connection variables and their pyinfra SSH connector equivalents.
_CONNECTION_VARS = {"ansible_host": "ssh_hostname", "ansible_port": "ssh_port", "ansible_user": "ssh_user"}


def _ansible_bool(value: Any) -> bool:
    """Ansible's ``bool`` filter: yes/on/true/1 are true, anything else false."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("yes", "on", "1", "true", "y", "t")


def _to_json(value: Any, **kwargs: Any) -> str:
    """Ansible's ``to_json``: ``json.dumps`` with its default separators."""
    return json.dumps(value, **kwargs)


def _ansible_int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return default


def _environment(cls: type[jinja2.Environment]) -> jinja2.Environment:
    # Ansible's template module renders with trim_blocks on and keeps the final newline.
    env = cls(undefined=jinja2.StrictUndefined, trim_blocks=True, keep_trailing_newline=True)
    env.filters.update({"bool": _ansible_bool, "to_json": _to_json, "int": _ansible_int, **PGAUTH_FILTERS})
    return env


_NATIVE = _environment(NativeEnvironment)
_TEXT = _environment(jinja2.Environment)


class UnsupportedLookup(UsageError):
    """A variable uses a lookup other than ``env``: Ansible can answer it, this reader cannot."""


def _shown(path: Path) -> str:
    """A path as the user knows it: relative to the checkout when inside it."""
    return str(path.relative_to(PROJECT_DIR)) if path.is_absolute() and path.is_relative_to(PROJECT_DIR) else str(path)


def _parse_yaml(path: Path) -> Any:
    """One YAML file's data. A syntax error names the file, line and column, never the text there
    (the text may be a secret), so the message is one line that says where to fix it."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{_shown(path)} is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise UsageError(f"cannot read {_shown(path)} ({exc.strerror}); check the path and its permissions") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        if mark is None:
            raise UsageError(f"{_shown(path)}: not valid YAML ({problem}); fix its syntax") from None
        line, column = mark.line + 1, mark.column + 1
        raise UsageError(
            f"{_shown(path)}:{line}:{column}: not valid YAML ({problem}); "
            f"fix the syntax at line {line}, column {column}"
        ) from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{_shown(path)}: not valid YAML ({type(exc).__name__}); fix its syntax") from None


def _looks_like_ini(path: Path) -> bool:
    """An INI inventory starts with a ``[group]`` line; YAML would call it a syntax error, which misleads."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False  # _parse_yaml says what is wrong with the file
    first = next((ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith(("#", ";"))), "")
    return re.fullmatch(r"\[[\w.:-]+\]", first) is not None


def _load_yaml(path: Path) -> dict[str, Any]:
    """A variables file (group_vars, host_vars, role defaults): a mapping, or empty."""
    data = _parse_yaml(path) or {}
    if not isinstance(data, dict):
        raise UsageError(f"{_shown(path)} must be a YAML mapping of variables (name: value)")
    return data


def _vars_files(directory: Path, name: str) -> dict[str, Any]:
    """Ansible's ``group_vars/<name>`` or ``host_vars/<name>``: a .yml/.yaml file, or a folder of them."""
    merged: dict[str, Any] = {}
    for candidate in (directory / f"{name}.yml", directory / f"{name}.yaml"):
        if candidate.is_file():
            merged.update(_load_yaml(candidate))
    folder = directory / name
    if folder.is_dir():
        for file in sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")]):
            merged.update(_load_yaml(file))
    return merged


def _ansible_managed(project_dir: Path) -> str:
    """The header string Ansible puts in rendered files, so both tools write identical files."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(project_dir / "ansible.cfg")
    return parser.get("defaults", "ansible_managed", fallback=ANSIBLE_MANAGED_DEFAULT)


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


@dataclass(frozen=True)
class Play:
    """One play of ``site.yml``: the groups it targets (``hosts: a:b``) and its roles, in order."""

    name: str
    groups: tuple[str, ...]
    roles: tuple[str, ...]


def site_plays(playbook: Path = PLAYBOOK) -> tuple[Play, ...]:
    """The plays of ``site.yml`` in order, so pyinfra runs exactly Ansible's plays and roles."""
    plays = []
    for play in yaml.safe_load(playbook.read_text(encoding="utf-8")) or []:
        roles = tuple(r["role"] if isinstance(r, dict) else str(r) for r in play.get("roles") or [])
        plays.append(Play(str(play.get("name", "")), tuple(str(play["hosts"]).split(":")), roles))
    return tuple(plays)


#: The roles whose defaults and templates both tools use, in site.yml's order.
ROLES: tuple[str, ...] = tuple(dict.fromkeys(role for play in site_plays() for role in play.roles))


@dataclass(frozen=True)
class ClusterInventory:
    """Hosts, groups and each host's resolved variables (secrets included: never print ``hostvars``)."""

    path: Path
    groups: Mapping[str, tuple[str, ...]]
    hostvars: Mapping[str, Mapping[str, Any]] = field(repr=False)

    @property
    def hosts(self) -> tuple[str, ...]:
        return self.groups["all"]

    def group(self, name: str) -> tuple[str, ...]:
        return self.groups.get(name, ())

    def connector_data(self, host: str) -> dict[str, Any]:
        """pyinfra SSH connector data from the inventory's ansible_* connection variables."""
        hv = self.hostvars[host]
        return {pyinfra_key: hv[key] for key, pyinfra_key in _CONNECTION_VARS.items() if key in hv}

    def render_value(self, value: Any, host: str, item: Any = None) -> Any:
        """A task argument such as ``"{{ patroni_venv }}/bin/patroni"`` rendered for ``host``
        (``item``: the loop item of a looped task)."""
        if not _is_template(value):
            return value
        return _render(_NATIVE.from_string(value), self._context(host, item))

    def render_template(self, role: str, template: str, host: str, item: Any = None) -> str:
        """Render ``roles/<role>/templates/<template>`` for ``host``, exactly as the role does
        (``item``: the loop item when the role's task loops, as Ansible's ``item``)."""
        path = ROLES_DIR / role / "templates" / template
        tmpl = _TEXT.from_string(path.read_text(encoding="utf-8"))
        return _render(tmpl, self._context(host, item))

    def _context(self, host: str, item: Any) -> Mapping[str, Any]:
        if item is None:
            return self.hostvars[host]
        return ChainMap({"item": item}, self.hostvars[host])  # type: ignore[arg-type]


def _render(tmpl: jinja2.Template, context: Mapping[str, Any]) -> Any:
    ctx = tmpl.new_context(context, shared=True)  # type: ignore[arg-type]  # lazy mapping, no copy
    try:
        return tmpl.environment.concat(tmpl.root_render_func(ctx))  # type: ignore[attr-defined]
    except jinja2.UndefinedError as exc:
        raise UsageError(
            f"inventory variable missing: {exc.message}; define it in group_vars or the inventory"
        ) from None


class _HostVars(Mapping[str, Any]):
    """One host's variables, rendered on first access (Ansible's lazy templating)."""

    def __init__(self, resolver: _Resolver, host: str) -> None:
        self._resolver = resolver
        self._host = host

    def __getitem__(self, key: str) -> Any:
        return self._resolver.value(self._host, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._resolver.names(self._host))

    def __len__(self) -> int:
        return len(self._resolver.names(self._host))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._resolver.names(self._host)


class _Resolver:
    def __init__(self, raw: dict[str, dict[str, Any]], magic: dict[str, dict[str, Any]]) -> None:
        self._raw = raw
        self._magic = magic
        self._done: dict[tuple[str, str], Any] = {}
        self._busy: set[tuple[str, str]] = set()
        self.views = {h: _HostVars(self, h) for h in raw}

    def names(self, host: str) -> set[str]:
        return set(self._raw[host]) | set(self._magic[host])

    def value(self, host: str, key: str) -> Any:
        if key in self._magic[host]:
            return self._magic[host][key]
        if key not in self._raw[host]:
            raise KeyError(key)
        slot = (host, key)
        if slot not in self._done:
            if slot in self._busy:
                raise UsageError(f"variable {key} refers to itself (on {host}); fix its definition")
            self._busy.add(slot)
            try:
                self._done[slot] = self._deep(self._raw[host][key], host)
            except (jinja2.TemplateError, TypeError, ValueError) as exc:
                # Name the variable, not its text: the text may carry a secret.
                why = getattr(exc, "message", None) or type(exc).__name__
                raise UsageError(
                    f"variable {key} (for {host}) is not a valid Jinja expression ({why}); fix it in the inventory "
                    "or group_vars"
                ) from None
            finally:
                self._busy.discard(slot)
        return self._done[slot]

    def _deep(self, value: Any, host: str) -> Any:
        if isinstance(value, dict):
            return {k: self._deep(v, host) for k, v in value.items()}
        if isinstance(value, list):
            return [self._deep(v, host) for v in value]
        if _is_template(value):
            return self._deep(_render(_NATIVE.from_string(value), self.views[host]), host)
        return value


def _inventory_groups(
    data: dict[str, Any], path: Path
) -> tuple[dict[str, list[str]], dict[str, dict], dict[str, dict]]:
    """Groups (with their hosts), group vars and host vars of a YAML inventory (nested children too)."""
    groups: dict[str, list[str]] = {}
    group_vars: dict[str, dict] = {}
    host_vars: dict[str, dict] = {}

    def mapping(value: Any, what: str, example: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise UsageError(f"{_shown(path)}: {what} must be a mapping ({example}), not a {type(value).__name__}; "
                             "write it like inventory/lab.yml")
        return value

    def walk(name: str, node: Any, parents: list[str]) -> None:
        node = mapping(node, f"group {name!r}", "hosts:, children:, vars:")
        groups.setdefault(name, [])
        group_vars.setdefault(name, {}).update(mapping(node.get("vars"), f"vars of group {name!r}", "name: value"))
        hosts = mapping(node.get("hosts"), f"hosts of group {name!r}", "pg1: {careflow_node_ip: ...}")
        for host, hv in hosts.items():
            for g in [*parents, name]:
                if host not in groups.setdefault(g, []):
                    groups[g].append(host)
            host_vars.setdefault(host, {}).update(mapping(hv, f"variables of host {host!r}", "name: value"))
        for child, sub in mapping(node.get("children"), f"children of group {name!r}", "group: {hosts: ...}").items():
            walk(child, sub, [*parents, name])

    if not isinstance(data, dict) or "all" not in data:
        raise UsageError(
            f"{_shown(path)} is not a YAML inventory with a top-level 'all' group; write it like inventory/lab.yml "
            "(INI and script inventories are not read)"
        )
    walk("all", data["all"], [])
    return groups, group_vars, host_vars


def load_inventory(
    path: Path,
    secrets: Mapping[str, str],
    extra_vars: Mapping[str, str] | None = None,
    project_dir: Path = PROJECT_DIR,
    roles: tuple[str, ...] = ROLES,
) -> ClusterInventory:
    """Read an Ansible YAML inventory with its group_vars, host_vars and the roles' defaults.

    ``roles`` are the roles whose defaults are read: site.yml's, as Ansible does; a role not yet in
    site.yml (a component still being built) is rendered by naming it here.
    """
    if not path.is_file():
        raise UsageError(f"inventory {path} does not exist; pass -i with an inventory file (see inventory/)")
    if _looks_like_ini(path):
        raise UsageError(
            f"{_shown(path)} looks like an INI inventory; only YAML inventories are read: "
            "write it like inventory/lab.yml"
        )
    groups, group_vars, host_vars = _inventory_groups(_parse_yaml(path), path)
    defaults: dict[str, Any] = {}
    for role in roles:
        role_defaults = ROLES_DIR / role / "defaults" / "main.yml"
        if role_defaults.exists():
            defaults.update(_load_yaml(role_defaults))
    file_group_vars = {g: _vars_files(path.parent / "group_vars", g) for g in groups}
    hosts = groups["all"]
    file_host_vars = {h: _vars_files(path.parent / "host_vars", h) for h in hosts}
    # Group order for precedence: all first, then the others by name (Ansible's default).
    ordered = ["all"] + sorted(g for g in groups if g != "all")
    raw: dict[str, dict[str, Any]] = {}
    for host in hosts:
        merged = dict(defaults)
        for g in ordered:
            if host in groups[g]:
                merged.update(group_vars.get(g, {}))
                merged.update(file_group_vars.get(g, {}))
        merged.update(host_vars.get(host, {}))
        merged.update(file_host_vars[host])
        # -e key=value semantics: strings, which the roles' `| bool` and `| int` convert.
        merged.update(extra_vars or {})
        raw[host] = merged

    def lookup(plugin: str, *terms: str, **_: Any) -> str:
        if plugin in ("env", "ansible.builtin.env"):
            return ",".join(secrets.get(t, "") for t in terms)
        raise UnsupportedLookup(f"lookup({plugin!r}) is not supported by the pyinfra provisioner; use an env lookup")

    all_groups = {g: tuple(members) for g, members in groups.items()}
    all_groups.setdefault("ungrouped", ())
    magic: dict[str, dict[str, Any]] = {}
    resolver = _Resolver(raw, magic)
    common = {
        "groups": {g: list(m) for g, m in all_groups.items()},
        "hostvars": resolver.views,
        "playbook_dir": str(project_dir),
        "ansible_managed": _ansible_managed(project_dir),
        "lookup": lookup,
        "omit": "__omit_place_holder__",
    }
    for host in hosts:
        # group_names: Ansible's sorted list of this host's groups, without all and ungrouped.
        group_names = sorted(g for g, m in all_groups.items() if host in m and g not in ("all", "ungrouped"))
        magic[host] = {**common, "inventory_hostname": host, "inventory_hostname_short": host.split(".")[0],
                       "group_names": group_names}
    return ClusterInventory(
        path=path, groups=MappingProxyType(all_groups), hostvars=MappingProxyType(dict(resolver.views))
    )

