"""Lab settings: flags, then the environment, then ``.env``, then defaults.

Secrets are generated on first use into ``.env`` (mode 0600, gitignored) and
are never printed unless the user asks (``--show-secrets``).
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import quote

import yaml
from dotenv import dotenv_values

from careflow_ha.errors import CheckFailed, UsageError

PROJECT_DIR = Path(__file__).resolve().parent.parent

#: The lab hosts, in start order. The compose file, the lab inventory and the
#: Vagrantfile must agree with this (tests/unit/lab/test_topology.py checks it).
PG_NODES: tuple[str, ...] = ("pg1", "pg2", "pg3")
#: The port of Prometheus on mon1 among the ports (docker-compose.yml publishes it on 127.0.0.1).
PROMETHEUS_PORT_KEY = "CAREFLOW_MON1_PROM_PORT"
LB_NODES: tuple[str, ...] = ("lb1", "lb2")
#: The inventory's ``monitoring`` group: Prometheus (roles/prometheus).
MON_NODES: tuple[str, ...] = ("mon1",)
#: The inventory's ``backup_repository`` group: the pgBackRest repository (roles/pgbackrest).
BACKUP_NODES: tuple[str, ...] = ("backup1",)
LAB_NODES: tuple[str, ...] = PG_NODES + LB_NODES + MON_NODES + BACKUP_NODES

#: Compose project name: also the label that marks containers as ours, so a
#: stale lab left by an earlier run can be found and removed safely.
COMPOSE_PROJECT = "careflow-ha-lab"

#: Every port the lab publishes on 127.0.0.1, with its default.
PORT_DEFAULTS: Mapping[str, int] = MappingProxyType(
    {
        "CAREFLOW_RW_PORT": 5000,  # HAProxy -> Patroni primary
        "CAREFLOW_RO_PORT": 5001,  # HAProxy -> Patroni replicas
        "CAREFLOW_STATS_PORT": 7000,  # HAProxy stats page
        "CAREFLOW_LB1_SSH_PORT": 2220,
        "CAREFLOW_LB2_SSH_PORT": 2224,
        "CAREFLOW_PG1_SSH_PORT": 2221,
        "CAREFLOW_PG2_SSH_PORT": 2222,
        "CAREFLOW_PG3_SSH_PORT": 2223,
        "CAREFLOW_MON1_SSH_PORT": 2225,
        "CAREFLOW_BACKUP1_SSH_PORT": 2226,
        # Direct access to each node, used by drills to detect two primaries.
        "CAREFLOW_PG1_PG_PORT": 5441,
        "CAREFLOW_PG2_PG_PORT": 5442,
        "CAREFLOW_PG3_PG_PORT": 5443,
        "CAREFLOW_PG1_API_PORT": 8011,
        "CAREFLOW_PG2_API_PORT": 8012,
        "CAREFLOW_PG3_API_PORT": 8013,
        # Prometheus' UI and HTTP API on mon1 (no authentication: loopback only).
        "CAREFLOW_MON1_PROM_PORT": 9090,
    }
)

#: Secrets generated on first run. Role names are fixed; passwords are random.
SECRET_KEYS: tuple[str, ...] = (
    "CAREFLOW_SUPERUSER_PASSWORD",  # postgres
    "CAREFLOW_REPLICATION_PASSWORD",  # replicator
    "CAREFLOW_REWIND_PASSWORD",  # rewind_user
    "CAREFLOW_APP_PASSWORD",  # careflow_app: read-write, owns the EMR schema
    "CAREFLOW_RO_PASSWORD",  # careflow_ro: read-only
    "CAREFLOW_ADMIN_PASSWORD",  # careflow_admin: the control host's tooling over TCP (the superuser: socket only)
    "CAREFLOW_PATRONI_API_PASSWORD",  # Patroni REST basic auth (user: patroni)
    "CAREFLOW_HAPROXY_STATS_PASSWORD",  # HAProxy stats basic auth (user: admin)
    "CAREFLOW_VRRP_PASSWORD",  # keepalived VRRP authentication between the balancers
    "CAREFLOW_PGBOUNCER_ADMIN_PASSWORD",  # PgBouncer's admin console (user: pgbouncer_admin; PAUSE/RESUME)
    "CAREFLOW_PGBOUNCER_AUTH_PASSWORD",  # pgbouncer_auth: PgBouncer's auth_query login (get_auth only)
    "CAREFLOW_PGBOUNCER_STATS_PASSWORD",  # pgbouncer_stats: PgBouncer's read-only console (the metrics timer)
)

DB_NAME = "careflow"
ROLE_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "superuser": "postgres",
        "replication": "replicator",
        "rewind": "rewind_user",
        "app": "careflow_app",
        "ro": "careflow_ro",
        "admin": "careflow_admin",
    }
)
SECRET_FOR_ROLE: Mapping[str, str] = MappingProxyType(
    {
        "superuser": "CAREFLOW_SUPERUSER_PASSWORD",
        "replication": "CAREFLOW_REPLICATION_PASSWORD",
        "rewind": "CAREFLOW_REWIND_PASSWORD",
        "app": "CAREFLOW_APP_PASSWORD",
        "ro": "CAREFLOW_RO_PASSWORD",
        "admin": "CAREFLOW_ADMIN_PASSWORD",
    }
)
#: ``bench routing``'s throwaway pgbench login, and its schema (inventory/group_vars/all.yml careflow_bench_user).
BENCH_ROLE = "careflow_bench"
PATRONI_API_USER = "patroni"
HAPROXY_STATS_USER = "admin"

Endpoint = Literal["rw", "ro"]
#: The roles careflow-ha logs in as over TCP. Not the superuser: the cluster refuses its TCP logins (pg_hba), so
#: its work on the cluster is done by provisioning, over the primary's local socket.
Role = Literal["app", "ro", "admin"]


#: The in-host HAProxy port variable behind each published-port key.
VIP_PORT_VARS: Mapping[str, str] = MappingProxyType(
    {
        "CAREFLOW_RW_PORT": "careflow_haproxy_rw_port",
        "CAREFLOW_RO_PORT": "careflow_haproxy_ro_port",
        "CAREFLOW_STATS_PORT": "careflow_haproxy_stats_port",
    }
)


@dataclass(frozen=True)
class Vip:
    """The VIP and HAProxy's ports on it, keyed like the published ports (``CAREFLOW_RW_PORT``...)."""

    address: str
    ports: Mapping[str, int]


def check_no_secrets(texts: Iterable[str], secrets: Mapping[str, str]) -> None:
    """Refuse to write a report that contains any secret value (a last line of defence)."""
    values = [v for v in secrets.values() if v and len(v) >= 6]
    for text in texts:
        for value in values:
            if value in text:
                raise CheckFailed("a report would contain a secret; refusing to write it (this is a bug)")


def inventory_vars(inventory: Path) -> dict[str, Any]:
    """``group_vars/all.yml`` beside ``inventory``, overridden by the inventory's ``all.vars`` (Ansible's order)."""
    merged: dict[str, Any] = {}
    group_vars = inventory.parent / "group_vars" / "all.yml"
    if group_vars.exists():
        merged.update(yaml.safe_load(group_vars.read_text(encoding="utf-8")) or {})
    if inventory.exists():
        data = yaml.safe_load(inventory.read_text(encoding="utf-8")) or {}
        merged.update(((data.get("all") or {}).get("vars")) or {})
    return merged


def configured_vip(inventory: Path, environ: Mapping[str, str]) -> Vip | None:
    """The inventory's VIP for clients, or None when it is off (empty) or CAREFLOW_USE_VIP=0."""
    if environ.get("CAREFLOW_USE_VIP", "1").strip().lower() in ("0", "no", "false", "off"):
        return None
    values = inventory_vars(inventory)
    address = str(values.get("careflow_vip") or "").strip()
    if not address:
        return None
    return Vip(address, {key: int(values[var]) for key, var in VIP_PORT_VARS.items()})


#: The ways a client reaches the primary (``--via``). One list: the CLI's help, the drills' and the
#: routing benchmark's columns and the README's table all come from it.
WAYS_IN: Mapping[str, str] = MappingProxyType(
    {
        "haproxy-vip": "HAProxy's ports on the keepalived VIP (the default; any client, one proxy hop)",
        "leader-vip": "PostgreSQL on a VIP that keepalived keeps on Patroni's leader (writes: no proxy hop; reads: "
        "HAProxy's read-only port on the VIP)",
        "libpq-multihost": "every node in the connection string, target_session_attrs picks the primary or a "
        "standby (libpq-based clients only; no proxy and no VIP)",
        "pgbouncer": "PgBouncer's ports on the VIP (6432 rw, 6433 ro; transaction pooling in front of HAProxy, "
        "and the poolers `switchover --zero-error` pauses)",
    }
)
DEFAULT_WAY_IN = "haproxy-vip"


@dataclass(frozen=True)
class Routing:
    """What the inventory provisions for the ways in besides HAProxy: the leader VIP, the database nodes'
    addresses."""

    pg_port: int = 5432
    #: postgres_cluster host -> careflow_node_ip, in inventory order.
    node_ips: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: careflow_leader_vip ("" when off).
    leader_vip: str = ""
    #: balancers host -> careflow_node_ip: each runs HAProxy and the PgBouncer instances.
    balancer_ips: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: PgBouncer's read-write and read-only ports on each balancer, and its admin console user.
    pooler_ports: tuple[int, ...] = (6432, 6433)
    pooler_admin_user: str = "pgbouncer_admin"
    #: HAProxy's read-write port and stats page on each balancer (the switchover asks where writes go).
    haproxy_rw_port: int = 5000
    haproxy_stats_port: int = 7000
    #: The CA clients verify PostgreSQL's and PgBouncer's certificates with (careflow_tls_dir/ca.crt), when
    #: the inventory turns TLS on (careflow_postgresql_tls); "" when it is off.
    pg_tls_root_cert: str = ""
    #: The CA careflow-ha verifies Patroni's REST API with, when it speaks https (careflow_patroni_api_tls);
    #: "" when it is plain http.
    api_tls_ca_file: str = ""
    #: The same for HAProxy's stats page (careflow_haproxy_stats_tls).
    stats_tls_ca_file: str = ""

    def tls_params(self) -> dict[str, str]:
        """libpq parameters of every TCP connection to the cluster: verify-full against the lab CA (or none)."""
        return {"sslmode": "verify-full", "sslrootcert": self.pg_tls_root_cert} if self.pg_tls_root_cert else {}

    def available(self) -> tuple[str, ...]:
        """The ways in this inventory supports, in WAYS_IN order (haproxy-vip always: without a VIP it is
        HAProxy's published 127.0.0.1 ports)."""
        ok = {"haproxy-vip": True, "leader-vip": bool(self.leader_vip), "libpq-multihost": bool(self.node_ips),
              "pgbouncer": bool(self.balancer_ips)}
        return tuple(name for name in WAYS_IN if ok[name])

    def why_not(self, way: str) -> str:
        if way == "leader-vip":
            return 'careflow_leader_vip is "" in the inventory'
        if way == "pgbouncer":
            return "the inventory lists no balancers host with a careflow_node_ip"
        return "the inventory lists no postgres_cluster host with a careflow_node_ip"


def configured_routing(inventory: Path) -> Routing:
    """The leader VIP, the postgres_cluster nodes' addresses (libpq multi-host) and PostgreSQL's port on them."""
    values = inventory_vars(inventory)
    doc = yaml.safe_load(inventory.read_text(encoding="utf-8")) if inventory.exists() else None
    groups = ((doc or {}).get("all") or {}).get("children") or {}
    ips: dict[str, str] = {}
    for group in groups.values():  # a host's careflow_node_ip may be set under any of its groups
        for host, host_vars in ((group or {}).get("hosts") or {}).items():
            if (host_vars or {}).get("careflow_node_ip"):
                ips[str(host)] = str(host_vars["careflow_node_ip"])
    members = (((groups.get("postgres_cluster") or {}).get("hosts")) or {}).keys()
    balancers = (((groups.get("balancers") or {}).get("hosts")) or {}).keys()
    return Routing(
        pg_port=int(values.get("careflow_pg_port", 5432)),
        node_ips=MappingProxyType({str(h): ips[str(h)] for h in members if str(h) in ips}),
        leader_vip=str(values.get("careflow_leader_vip") or "").strip(),
        balancer_ips=MappingProxyType({str(h): ips[str(h)] for h in balancers if str(h) in ips}),
        pooler_ports=(int(values.get("careflow_pgbouncer_rw_port", 6432)),
                      int(values.get("careflow_pgbouncer_ro_port", 6433))),
        pooler_admin_user=str(values.get("careflow_pgbouncer_admin_user", "pgbouncer_admin")),
        haproxy_rw_port=int(values.get("careflow_haproxy_rw_port", 5000)),
        haproxy_stats_port=int(values.get("careflow_haproxy_stats_port", 7000)),
        pg_tls_root_cert=_tls_root_cert(values, inventory.parent.parent, "careflow_postgresql_tls"),
        api_tls_ca_file=_tls_root_cert(values, inventory.parent.parent, "careflow_patroni_api_tls"),
        stats_tls_ca_file=_tls_root_cert(values, inventory.parent.parent, "careflow_haproxy_stats_tls"),
    )


def _tls_root_cert(values: Mapping[str, Any], project_dir: Path, switch: str) -> str:
    """careflow_tls_dir/ca.crt when the inventory's ``switch`` is on, else "". The directory is an Ansible
    expression; the only variable it may use here is ``playbook_dir`` (the project: site.yml lives there)."""
    if not values.get(switch):
        return ""
    raw = str(values.get("careflow_tls_dir") or "").replace("{{ playbook_dir }}", str(project_dir))
    if not raw or "{{" in raw:
        raise UsageError(f"careflow_tls_dir={values.get('careflow_tls_dir')!r} cannot be resolved here; write an "
                         'absolute path (or "{{ playbook_dir }}/.lab/ca")')
    return str(Path(raw).expanduser() / "ca.crt")


#: The layouts of lab_results that ``careflow_partition_scheme`` (inventory/group_vars/all.yml) may name:
#: months split into one leaf per clinic, or months only with a (clinic_id, collected_at) index.
#: Migration 0008 and ``data migrate`` apply it; partitioning/DECISION.md says which to pick.
PARTITION_SCHEMES: tuple[str, ...] = ("per-clinic", "months-only")


def check_partition_scheme(value: Any, where: str = "inventory/group_vars/all.yml") -> str:
    """``value`` if it names a partition scheme, else a one-line UsageError naming the choices."""
    if not isinstance(value, str) or value not in PARTITION_SCHEMES:
        raise UsageError(f"careflow_partition_scheme={value!r} is not one of {', '.join(PARTITION_SCHEMES)}; "
                         f"set one in {where}")
    return value


def configured_partition_scheme(inventory: Path) -> str:
    """The inventory's ``careflow_partition_scheme`` (group_vars, then the inventory's ``all.vars``), checked."""
    values = inventory_vars(inventory)
    if "careflow_partition_scheme" not in values:
        raise UsageError("careflow_partition_scheme is not set; add careflow_partition_scheme: per-clinic "
                         "(or months-only) to inventory/group_vars/all.yml")
    return check_partition_scheme(values["careflow_partition_scheme"])


#: Where a setting's value came from, for error messages: ``("flag", "")`` (the command line),
#: ``("environment", "")``, ``(".env", path)`` or ``("default", "")``.
Source = tuple[str, str]


def _parse_port(name: str, raw: str | int, source: Source = ("default", "")) -> int:
    """``raw`` as a port, or a UsageError that names the variable and where it was set.

    A value read from ``.env`` or the environment is never echoed: a damaged
    file can glue a secret onto a port line. A flag's value is the user's own
    typing and is shown.
    """
    kind, where = source
    if kind == "flag":
        said, fix = f"{name}={raw} from the command line", "pass a free port in 1024-65535"
    elif kind == "environment":
        said, fix = f"{name} in the environment", "set it to a free port in 1024-65535 (or unset it to use .env)"
    else:
        said, fix = f"{name} in {where or '.env'}", "set it to a free port in 1024-65535 there"
    try:
        port = int(str(raw).strip())
    except ValueError:
        raise UsageError(f"{said} is not a port number; {fix}") from None
    if not 1024 <= port <= 65535:
        raise UsageError(f"{said} is outside 1024-65535; {fix}")
    return port


def ensure_env_file(env_file: Path) -> dict[str, str]:
    """Create or complete ``env_file`` with any missing secret; return its values.

    Existing values are never changed: a cluster provisioned with a password
    keeps it. New lines follow the file's own line ending (CRLF stays CRLF),
    and a last line without a line ending gets one first, so a new secret is
    never glued onto it. When a key appears twice, the last one wins, as it
    does when a shell sources the file (``set -a; . ./.env``). The file is
    (re)set to mode 0600 on every call.
    """
    values = {k: v for k, v in dotenv_values(env_file).items() if v is not None} if env_file.exists() else {}
    missing = [key for key in SECRET_KEYS if not values.get(key)]
    if missing or not env_file.exists():
        existing = env_file.read_bytes() if env_file.exists() else b""
        eol = "\r\n" if b"\r\n" in existing else "\n"
        # Create with 0600 from the first byte: never a window where it is readable.
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8", newline="") as fh:
            if existing and not existing.endswith((b"\n", b"\r")):
                fh.write(eol)
            if not values:
                fh.write(f"# CareFlow HA Lab secrets and settings. Generated; keep private (mode 0600).{eol}")
            for key in missing:
                # token_urlsafe: no characters that need quoting in a DSN, YAML or shell.
                value = secrets.token_urlsafe(24)
                fh.write(f"{key}={value}{eol}")
                values[key] = value
    os.chmod(env_file, stat.S_IRUSR | stat.S_IWUSR)
    return values


@dataclass(frozen=True)
class Settings:
    """Resolved lab settings. Build with :func:`load_settings`."""

    project_dir: Path
    ports: Mapping[str, int]
    secrets: Mapping[str, str] = field(repr=False)
    host: str = "127.0.0.1"
    #: The client VIP (the inventory's careflow_vip); None: clients use the published 127.0.0.1 ports.
    vip: Vip | None = None
    #: The way in that :meth:`dsn` routes through (``--via``), and what the other ways need.
    via: str = DEFAULT_WAY_IN
    routing: Routing = field(default_factory=Routing)

    @property
    def env_file(self) -> Path:
        return self.project_dir / ".env"

    @property
    def state_dir(self) -> Path:
        """Generated, gitignored lab state: SSH keys, ssh_config, wheelhouse, image stamps."""
        return self.project_dir / ".lab"

    @property
    def lab_inventory(self) -> Path:
        """The lab's Ansible inventory (its group_vars hold the cluster's facts: ports, retention, ...)."""
        return self.project_dir / "inventory" / "lab.yml"

    @property
    def reports_dir(self) -> Path:
        return self.project_dir / "reports"

    def port(self, key: str) -> int:
        return self.ports[key]

    @property
    def prometheus_url(self) -> str:
        """Prometheus on the monitoring host, as published on 127.0.0.1 (docker-compose.yml)."""
        return f"http://{self.host}:{self.ports[PROMETHEUS_PORT_KEY]}"

    def node_port(self, node: str, kind: Literal["SSH", "PG", "API", "PROM"]) -> int:
        return self.ports[f"CAREFLOW_{node.upper()}_{kind}_PORT"]

    def password(self, role: str) -> str:
        return self.secrets[SECRET_FOR_ROLE[role]]

    def endpoint(self, endpoint: Endpoint = "rw") -> tuple[str, int]:
        """Where clients connect: HAProxy's port on the VIP when there is one, else the published 127.0.0.1 port."""
        key = "CAREFLOW_RW_PORT" if endpoint == "rw" else "CAREFLOW_RO_PORT"
        if self.vip is not None:
            return self.vip.address, self.vip.ports[key]
        return self.host, self.ports[key]

    def with_via(self, via: str | None) -> Settings:
        """These settings routed through ``via`` (a name in WAYS_IN that this inventory provisions)."""
        if via is None or via == self.via:
            return self
        available = self.routing.available()
        if via not in WAYS_IN:
            raise UsageError(f"--via {via!r} is unknown; use one of {', '.join(available)}")
        if via not in available:
            raise UsageError(
                f"--via {via} is not provisioned ({self.routing.why_not(via)}); use one of {', '.join(available)}"
            )
        return replace(self, via=via)

    def dsn(self, endpoint: Endpoint = "rw", role: Role = "app", dbname: str = DB_NAME) -> str:
        """A libpq URI for ``endpoint`` through :attr:`via`.

        haproxy-vip: HAProxy on the VIP (``rw`` 5000, ``ro`` 5001). leader-vip: ``rw`` is PostgreSQL on the
        leader VIP, ``ro`` stays HAProxy's (the leader VIP has no standby side). pgbouncer: PgBouncer on the
        VIP (``rw`` 6432, ``ro`` 6433); connections to it must be made with ``careflow_ha.dsn.pooler_safe``
        (no prepared statements, no ``options``); the admin role's stay on HAProxy. libpq-multihost: every node,
        ``target_session_attrs`` read-write or prefer-standby, in random order (``load_balance_hosts``:
        a dead first node must not cost every reconnect a timeout, and reads spread over the standbys).
        """
        if self.via == "libpq-multihost":
            return self._uri(
                None, role, dbname, self.multihost_hosts(),
                target_session_attrs="read-write" if endpoint == "rw" else "prefer-standby",
                load_balance_hosts="random",
            )
        if self.via == "leader-vip" and endpoint == "rw":
            return self._uri(self.routing.pg_port, role, dbname, self.routing.leader_vip)
        # The admin role never passes a pooler: its work (probe tables, read-backs, set-up, statistics) goes
        # through HAProxy whichever way the application takes, so the pooler under test is not also the
        # tool that observes it.
        if self.via == "pgbouncer" and role != "admin":
            host, port = self.pooler_endpoint(endpoint)
            return self._uri(port, role, dbname, host)
        host, port = self.endpoint(endpoint)
        return self._uri(port, role, dbname, host)

    def pooler_endpoint(self, endpoint: Endpoint = "rw") -> tuple[str, int]:
        """PgBouncer's port for ``endpoint`` on the VIP, or on the first balancer when there is no VIP."""
        port = self.routing.pooler_ports[0 if endpoint == "rw" else 1]
        if self.vip is not None:
            return self.vip.address, port
        return next(iter(self.routing.balancer_ips.values())), port

    def multihost_hosts(self) -> str:
        """``ip:port,ip:port,...`` of the database nodes (a libpq multi-host URI's host part)."""
        return ",".join(f"{ip}:{self.routing.pg_port}" for ip in self.routing.node_ips.values())

    def node_dsn(self, node: str, role: Role = "admin", dbname: str = "postgres") -> str:
        """A libpq URI straight to one node's PostgreSQL, bypassing HAProxy (default: the admin role, which
        reads every backend's statistics)."""
        return self._uri(self.node_port(node, "PG"), role, dbname)

    def redacted_dsn(self, endpoint: Endpoint = "rw", role: Role = "app", dbname: str = DB_NAME) -> str:
        """:meth:`dsn` with the password replaced by ``***`` (for output and reports)."""
        dsn, pw = self.dsn(endpoint, role, dbname), quote(self.password(role), safe="")
        return dsn.replace(f":{pw}@", ":***@", 1) if pw else dsn

    def _uri(self, port: int | None, role: str, dbname: str, host: str | None = None, **params: str) -> str:
        """``port`` None: ``host`` already carries ``host:port`` pairs (multi-host)."""
        user = ROLE_NAMES[role]
        pw = quote(self.password(role), safe="")
        where = host or self.host
        if port is not None:
            where = f"{where}:{port}"
        query = "&".join(f"{k}={quote(str(v), safe='/')}" for k, v in {
            "connect_timeout": "5", "application_name": "careflow-ha", **self.routing.tls_params(), **params}.items())
        return f"postgresql://{user}:{pw}@{where}/{dbname}?{query}"

    def compose_env(self) -> dict[str, str]:
        """Variables for ``docker-compose.yml`` interpolation (ports only, no secrets)."""
        return {key: str(value) for key, value in self.ports.items()}


def load_settings(
    project_dir: Path = PROJECT_DIR,
    overrides: Mapping[str, int | str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings: ``overrides`` (flags) > ``environ`` > ``.env`` > defaults."""
    environ = os.environ if environ is None else environ
    env_file = project_dir / ".env"
    file_values = ensure_env_file(env_file)
    ports: dict[str, int] = {}
    for key, default in PORT_DEFAULTS.items():
        raw: str | int = default
        source: Source = ("default", "")
        if key in file_values:
            raw, source = file_values[key], (".env", str(env_file))
        if environ.get(key):
            raw, source = environ[key], ("environment", "")
        if overrides and overrides.get(key) is not None:
            raw, source = overrides[key], ("flag", "")
        ports[key] = _parse_port(key, raw, source)
    clashes: dict[int, list[str]] = {}
    for key, port in ports.items():
        clashes.setdefault(port, []).append(key)
    dupes = {p: keys for p, keys in clashes.items() if len(keys) > 1}
    if dupes:
        port, keys = next(iter(dupes.items()))
        raise UsageError(f"port {port} is assigned to {', '.join(keys)}; give each a different port in .env")
    secret_values = {key: environ.get(key) or file_values[key] for key in SECRET_KEYS}
    inventory = project_dir / "inventory" / "lab.yml"
    vip = configured_vip(inventory, {**file_values, **environ})
    return Settings(
        project_dir=project_dir, ports=MappingProxyType(ports), secrets=MappingProxyType(secret_values), vip=vip,
        routing=configured_routing(inventory),
    )
