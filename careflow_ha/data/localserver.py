"""A throwaway local PostgreSQL 15 server: for the data tests and the local benchmark.

It mirrors what the cluster provides for the EMR schema (roles careflow_app and
careflow_ro, database careflow, pg_partman and pg_cron preloaded), on
127.0.0.1 with a free port and scram-sha-256 passwords. As root (CI) the
server runs as the ``postgres`` OS user, because initdb and postgres refuse root.
"""

from __future__ import annotations

import os
import pwd
import random
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg

from careflow_ha.errors import CommandFailed, EnvironmentProblem, NotReady
from careflow_ha.settings import DB_NAME, ROLE_NAMES

PG_BIN = Path(os.environ.get("CAREFLOW_PG_BIN", "/usr/lib/postgresql/15/bin"))
#: Ports the lab publishes or a distro server may hold; never pick these.
RESERVED_PORTS = frozenset({5000, 5001, 5432, 5441, 5442, 5443})


def free_port(low: int = 55000, high: int = 59999, tries: int = 200) -> int:
    """A TCP port on 127.0.0.1 nobody listens on, outside the lab's ports."""
    rng = random.Random()
    for _ in range(tries):
        port = rng.randint(low, high)
        if port in RESERVED_PORTS:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise EnvironmentProblem(f"no free TCP port found in {low}-{high} on 127.0.0.1")


@dataclass
class LocalPostgres:
    """One local server: ``start()``, use ``dsn()``, ``stop()``; ``remove()`` deletes its files.

    ``durable=False`` (tests) turns fsync off for speed; the benchmark keeps
    the defaults so that its load figures mean something.
    """

    base_dir: Path
    port: int
    durable: bool = False
    extra_conf: dict[str, str] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "server.log"

    def dsn(self, role: str = "superuser", dbname: str = DB_NAME) -> str:
        """libpq URI for ``role`` (superuser, app, ro, admin) on this server. Contains a password: never print it."""
        user = ROLE_NAMES[role]
        return (
            f"postgresql://{user}:{quote(self.passwords[role], safe='')}@127.0.0.1:{self.port}/{dbname}"
            "?connect_timeout=5&application_name=careflow-localpg"
        )

    # -- process control -------------------------------------------------
    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise NotReady(f"{Path(args[0]).name} did not finish within {timeout:.0f}s") from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise CommandFailed(f"{Path(args[0]).name} failed ({proc.returncode}): {' | '.join(tail)}")
        return proc

    def init(self) -> None:
        """initdb with a superuser password (scram) and the settings the EMR schema needs."""
        if not (PG_BIN / "initdb").exists():
            raise EnvironmentProblem(f"{PG_BIN}/initdb not found; install postgresql-15 (scripts/bootstrap.sh)")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            os.chown(self.base_dir, pg.pw_uid, pg.pw_gid)
        self.base_dir.chmod(0o700)
        for role in ("superuser", "app", "ro", "admin"):
            self.passwords.setdefault(role, secrets.token_urlsafe(18))
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.passwords["superuser"] + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        pwfile.chmod(0o600)
        try:
            self._run([PG_BIN / "initdb", "-D", self.data_dir, "-U", ROLE_NAMES["superuser"], "--pwfile", pwfile,
                       "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "--encoding=UTF8",
                       "--locale=C.UTF-8"])
        finally:
            pwfile.unlink(missing_ok=True)
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base_dir}'",
            # pg_stat_statements and auto_explain as on the cluster (inventory/group_vars/all.yml)
            "shared_preload_libraries": "'pg_cron,pg_stat_statements,auto_explain'",
            "pg_stat_statements.track": "all",
            "cron.database_name": f"'{DB_NAME}'",
            "cron.use_background_workers": "on",
            "max_worker_processes": "16",
            "wal_level": "replica",
            "max_wal_senders": "5",
            # pgbadger parses this prefix (careflow_ha.monitoring.pgbadger.LOG_LINE_PREFIX)
            "log_line_prefix": "'%m [%p]: user=%u,db=%d,app=%a,client=%h '",
            "shared_buffers": "512MB" if self.durable else "128MB",
            "max_wal_size": "4GB" if self.durable else "1GB",
        }
        if not self.durable:
            conf.update({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
        conf.update(self.extra_conf)
        with (self.data_dir / "postgresql.conf").open("a") as fh:
            fh.write("\n# careflow-ha local test server\n")
            fh.writelines(f"{key} = {value}\n" for key, value in conf.items())

    def start(self, timeout: float = 60) -> None:
        self._run([PG_BIN / "pg_ctl", "-D", self.data_dir, "-l", self.log_file, "-w", "-t", str(int(timeout)),
                   "start"], timeout=timeout + 10)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        """Poll until the server accepts a superuser login, or fail at the deadline."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.dsn("superuser", "postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.2)
        raise NotReady(f"local PostgreSQL on port {self.port} not ready within {timeout:.0f}s: {last}")

    def stop(self, timeout: float = 60) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run([PG_BIN / "pg_ctl", "-D", self.data_dir, "-m", "fast", "-w", "-t", str(int(timeout)), "stop"],
                      timeout=timeout + 10)

    def remove(self) -> None:
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    # -- EMR set-up --------------------------------------------------------
    def create_roles(self) -> None:
        """The cluster's roles: careflow_app (read-write, owns the schema), careflow_ro, and careflow_admin with
        the attributes and membership roles/patroni/tasks/roles.yml gives it (CREATEDB, pg_monitor)."""
        Sql, Identifier = psycopg.sql.SQL, psycopg.sql.Identifier
        with psycopg.connect(self.dsn("superuser", "postgres"), autocommit=True) as conn:
            for role, attributes in (("app", ""), ("ro", ""), ("admin", " CREATEDB")):
                name = ROLE_NAMES[role]
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
                verb = "ALTER" if exists else "CREATE"
                conn.execute(
                    Sql("{} ROLE {} LOGIN{} PASSWORD {}").format(
                        Sql(verb), Identifier(name), Sql(attributes), psycopg.sql.Literal(self.passwords[role])
                    )
                )
            conn.execute(Sql("GRANT pg_monitor TO {}").format(Identifier(ROLE_NAMES["admin"])))

    def standby(self, base_dir: Path, port: int) -> LocalPostgres:
        """A streaming standby of this server (pg_basebackup -R), initialised but not started."""
        base_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            os.chown(base_dir, pg.pw_uid, pg.pw_gid)
        base_dir.chmod(0o700)
        replica = LocalPostgres(base_dir=base_dir, port=port, durable=self.durable, passwords=dict(self.passwords))
        conninfo = f"host=127.0.0.1 port={self.port} user={ROLE_NAMES['superuser']} dbname=postgres"
        pgpass = base_dir / "pgpass"
        pgpass.write_text(f"127.0.0.1:{self.port}:*:{ROLE_NAMES['superuser']}:{self.passwords['superuser']}\n")
        if os.geteuid() == 0:
            os.chown(pgpass, pwd.getpwnam("postgres").pw_uid, -1)
        pgpass.chmod(0o600)
        env_args = ["env", f"PGPASSFILE={pgpass}"]
        replica._run([*env_args, PG_BIN / "pg_basebackup", "-d", conninfo, "-D", replica.data_dir, "-R",
                      "-X", "stream", "-c", "fast"], timeout=300)
        # primary_conninfo written by -R names the password file, not the password.
        with (replica.data_dir / "postgresql.auto.conf").open("a") as fh:
            fh.write(f"port = {port}\nunix_socket_directories = '{base_dir}'\n")
            fh.write(f"primary_conninfo = '{conninfo} passfile={pgpass}'\n")
        return replica

    def child_processes(self) -> list[str]:
        """Process titles of the postmaster's children (``postgres: checkpointer``, ...), from /proc."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return []
        postmaster = pid_file.read_text().split("\n", 1)[0].strip()
        titles = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if fields[1] == postmaster:  # field 4 of /proc/PID/stat: the parent pid
                    titles.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
            except (OSError, IndexError):
                continue  # the process ended while we looked
        return titles

    def promote(self, timeout: float = 60) -> None:
        self._run([PG_BIN / "pg_ctl", "-D", self.data_dir, "-w", "-t", str(int(timeout)), "promote"],
                  timeout=timeout + 10)


def start_local_server(durable: bool = False, extra_conf: dict[str, str] | None = None) -> LocalPostgres:
    """initdb + start + roles + prepare_database: a server ready for ``migrate``.

    The caller owns it: call ``stop()`` and ``remove()`` when done.
    """
    from careflow_ha.data.db import prepare_database

    base = Path(tempfile.mkdtemp(prefix="careflow-localpg-"))
    server = LocalPostgres(base_dir=base, port=free_port(), durable=durable, extra_conf=dict(extra_conf or {}))
    try:
        server.init()
        server.start()
        server.create_roles()
        prepare_database(server.dsn("superuser", "postgres"))
    except BaseException:
        server.stop()
        server.remove()
        raise
    return server
