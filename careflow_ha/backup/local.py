"""A loopback PostgreSQL 15 archiving into a pgBackRest repository in a temp directory: for tests and the bench.

The pgBackRest configuration is the ``pgbackrest`` role's own template, rendered through the shared
inventory reader for a one-host inventory (a database node with a local repository), so the loopback
tests and the bench exercise the file the lab will run (zstd, async archiving, process-max), not a copy.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import yaml

from careflow_ha.backup.commands import LocalRunner, Pgbackrest
from careflow_ha.data.localserver import LocalPostgres, free_port
from careflow_ha.errors import NotReady
from careflow_ha.provision.base import LAB_INVENTORY
from careflow_ha.provision.inventory import ROLES, load_inventory
from careflow_ha.settings import ROLE_NAMES, SECRET_KEYS

OS_USER = "postgres"
HOST = "localpg"


def _own(path: Path, mode: int = 0o700) -> Path:
    """``path`` as a directory the database's OS user owns (we may be root; postgres runs the commands)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        pg = pwd.getpwnam(OS_USER)
        os.chown(path, pg.pw_uid, pg.pw_gid)
    path.chmod(mode)
    return path


def render_local_config(base: Path, stanza: str, server: LocalPostgres, process_max: int | None = None) -> str:
    """The role's pgbackrest.conf.j2 for one node with its repository under ``base``."""
    host_vars = {
        "careflow_node_ip": "127.0.0.1",
        "pgbackrest_stanza": stanza,
        "pgbackrest_config_dir": str(base / "etc"),
        "pgbackrest_repo_path": str(base / "repo"),
        "pgbackrest_log_path": str(base / "log"),
        "pgbackrest_spool_path": str(base / "spool"),
        "pgbackrest_pg_path": str(server.data_dir),
        "pgbackrest_pg_port": server.port,
        "pgbackrest_pg_socket_path": str(server.base_dir),
    }
    if process_max is not None:
        host_vars["pgbackrest_process_max"] = process_max
    inv_dir = base / "inventory"
    inv_dir.mkdir(exist_ok=True)
    if not (inv_dir / "group_vars").exists():
        (inv_dir / "group_vars").symlink_to(LAB_INVENTORY.parent / "group_vars")
    inventory = {"all": {"children": {"postgres_cluster": {"hosts": {HOST: host_vars}}}}}
    (inv_dir / "local.yml").write_text(yaml.safe_dump(inventory))
    # No secret is in a pgBackRest config; the lookups only need to resolve.
    inv = load_inventory(inv_dir / "local.yml", dict.fromkeys(SECRET_KEYS, "unused"), roles=(*ROLES, "pgbackrest"))
    return inv.render_template("pgbackrest", "pgbackrest.conf.j2", HOST)


@dataclass
class LocalRepository:
    """A running archiving server and its stanza. ``close()`` stops the server and deletes everything."""

    base: Path
    server: LocalPostgres
    pgbr: Pgbackrest
    run: LocalRunner = field(repr=False)

    @property
    def repo_path(self) -> Path:
        return self.base / "repo"

    def connect(self, dbname: str = "postgres", **kwargs) -> psycopg.Connection:
        return psycopg.connect(self.server.dsn("superuser", dbname), **kwargs)

    def restored_server(self, name: str) -> LocalPostgres:
        """An empty place for a restore (its data dir does not exist yet) on a port of its own."""
        base = _own(self.base / name)
        return LocalPostgres(base_dir=base, port=free_port(), durable=self.server.durable,
                             passwords=dict(self.server.passwords))

    def start_restored(self, restored: LocalPostgres, timeout: float = 120) -> None:
        """Start a restored copy beside the original: its own port and socket, and no archiving into the
        original's stanza (a restored copy is for reading, and its timeline would mix into the archive)."""
        with (restored.data_dir / "postgresql.auto.conf").open("a") as fh:
            fh.write(f"\n# careflow-ha: a restored copy\nport = {restored.port}\n"
                     f"unix_socket_directories = '{restored.base_dir}'\narchive_mode = off\n")
        restored.start(timeout=timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # target-action=promote: writable once recovery reached the target
            with psycopg.connect(restored.dsn("superuser", "postgres"), autocommit=True) as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return
            time.sleep(0.2)
        raise NotReady(f"the restored server on port {restored.port} was still in recovery after {timeout:.0f}s")

    def close(self) -> None:
        # If the server does not stop, its files stay (and the error says so): deleting the data of a
        # running postmaster would leave an orphan holding a port, which is worse than a temp directory.
        self.server.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def start_local_repository(stanza: str | None = None, durable: bool = False, process_max: int | None = None,
                           parent: Path | None = None) -> LocalRepository:
    """initdb + archiving into a fresh repository + stanza-create. The caller owns it (``close()``)."""
    base = _own(Path(tempfile.mkdtemp(prefix="careflow-pgbackrest-", dir=parent)))
    for sub in ("etc", "repo", "log", "spool"):
        _own(base / sub, 0o750)
    port = free_port()
    # pgBackRest locks live in /tmp/pgbackrest per stanza: a stanza per rig lets two rigs run at once.
    stanza = stanza or f"localpg_{port}"
    config = base / "etc" / "pgbackrest.conf"
    pgbr = Pgbackrest(stanza, config)
    server = LocalPostgres(
        base_dir=_own(base / "pg"), port=port, durable=durable,
        extra_conf={"archive_mode": "on", "archive_command": f"'{pgbr.archive_command()}'",
                    # nothing here needs pg_cron; without it no launcher looks for a 'careflow' database
                    "shared_preload_libraries": "''"},
    )
    repo = None
    try:
        server.init()
        config.write_text(render_local_config(base, stanza, server, process_max))
        config.chmod(0o644)
        # pgBackRest logs in as postgres over the socket (scram): the password from a 0600 passfile, never argv.
        passfile = base / "etc" / "pgpass"
        passfile.write_text(f"*:*:*:{ROLE_NAMES['superuser']}:{server.passwords['superuser']}\n")
        if os.geteuid() == 0:
            os.chown(passfile, pwd.getpwnam(OS_USER).pw_uid, -1)
        passfile.chmod(0o600)
        run = LocalRunner(user=OS_USER, env={"PGPASSFILE": str(passfile)})
        repo = LocalRepository(base, server, pgbr, run)
        server.start()
        run(pgbr.stanza_create(), timeout=120)
        return repo
    except BaseException:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
        raise
