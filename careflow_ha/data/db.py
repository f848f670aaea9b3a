"""Database set-up for the EMR schema: prepare (as superuser), migrate (as the app role).

On the cluster the superuser logs in over the local socket only, so provisioning prepares the database there
(roles/patroni/templates/emr-prepare.sql.j2, on the primary) and ``careflow-ha up`` then calls ``migrate``
through HAProxy port 5000. ``prepare_database`` runs the same SQL file on a server that lets the superuser in
over TCP: the throwaway local servers of the tests, or a server of the user's own (``data prepare --admin-dsn``).
Both are idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import psycopg
import yaml
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from careflow_ha.dsn import check_dsn, redact
from careflow_ha.errors import CareflowError, CheckFailed, EnvironmentProblem, NotReady, UsageError
from careflow_ha.settings import BENCH_ROLE, DB_NAME, PROJECT_DIR, ROLE_NAMES, check_partition_scheme

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "partitioning" / "migrations"
#: The superuser's part of the EMR database: one file for provisioning (on the cluster) and prepare_database.
PREPARE_SQL = PROJECT_DIR / "roles" / "patroni" / "templates" / "emr-prepare.sql.j2"
#: Where its version mark is set (``__patroni_emr_prepare_version``).
PREPARE_VERSION_FILE = PROJECT_DIR / "roles" / "patroni" / "defaults" / "main.yml"

#: Server settings the schema relies on (the cluster's Patroni config must set them).
REQUIRED_GUCS: dict[str, str] = {
    "shared_preload_libraries": "pg_cron",
    "cron.database_name": DB_NAME,
    "cron.use_background_workers": "on",
}


def with_dbname(dsn: str, dbname: str) -> str:
    """The same DSN pointed at another database."""
    return make_conninfo(dsn, dbname=dbname)


#: Fragments of libpq's messages about a malformed option value (as opposed to an unreachable server).
_OPTION_ERRORS = ("for connection option", "invalid connection option", "invalid sslmode value",
                  "invalid target_session_attrs value", "invalid load_balance_hosts value")


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection:
    """Open a connection; a malformed DSN is bad input, and connection failures are one-line errors without secrets."""
    check_dsn(dsn)
    try:
        return psycopg.connect(dsn, autocommit=autocommit)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if any(fragment in first for fragment in _OPTION_ERRORS):
            raise UsageError(f"the DSN {redact(dsn)} is invalid: {first.removeprefix('connection is bad: ')}") from None
        raise EnvironmentProblem(f"cannot connect to {redact(dsn)}: {first}") from None


#: The version mark emr-prepare.sql.j2 leaves (the database's COMMENT; '' when none). Provisioning reads it with
#: the same query (roles/patroni/tasks/roles.yml, careflow_ha/pyinfra_deploys/ops.py; a unit test holds them equal).
PREPARED_VERSION_SQL = ("SELECT coalesce(shobj_description((SELECT oid FROM pg_database WHERE datname = "
                        "current_database()), 'pg_database'), '')")


def prepare_version() -> str:
    """The preparation this checkout applies (``__patroni_emr_prepare_version``)."""
    return str(yaml.safe_load(PREPARE_VERSION_FILE.read_text(encoding="utf-8"))["__patroni_emr_prepare_version"])


def check_prepared(dsn: str) -> str:
    """The preparation mark of the database at ``dsn`` (any role may read it), if it is this checkout's; else a
    EnvironmentProblem that names the fix. For the cluster, whose superuser has no TCP login: provisioning
    prepares it."""
    with connect(dsn, autocommit=True) as conn:
        row = conn.execute(PREPARED_VERSION_SQL).fetchone()
    found, wanted = (row[0] if row else "") or "", prepare_version()
    if found != wanted:
        said = f"is marked {found!r}" if found else "is not prepared"
        raise EnvironmentProblem(f"the database at {redact(dsn)} {said}, not {wanted!r}; run `careflow-ha provision` "
                       "(it prepares it on the primary over the local socket: the superuser has no TCP login)")
    return found


def prepare_sql(dbname: str = DB_NAME, app_role: str = ROLE_NAMES["app"], ro_role: str = ROLE_NAMES["ro"],
                admin_role: str = ROLE_NAMES["admin"]) -> str:
    """emr-prepare.sql.j2 rendered as provisioning renders it, for these names."""
    import jinja2

    version = prepare_version()
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)  # noqa: S701  # SQL, not HTML
    return env.from_string(PREPARE_SQL.read_text(encoding="utf-8")).render(
        ansible_managed="rendered by careflow_ha.data.db.prepare_database", careflow_database=dbname,
        careflow_app_user=app_role, careflow_ro_user=ro_role, careflow_admin_user=admin_role,
        careflow_bench_user=BENCH_ROLE, __patroni_emr_prepare_version=version,
    )


def prepare_database(
    admin_dsn: str,
    *,
    dbname: str = DB_NAME,
    app_role: str = ROLE_NAMES["app"],
    ro_role: str = ROLE_NAMES["ro"],
    admin_role: str = ROLE_NAMES["admin"],
) -> list[str]:
    """As superuser, over TCP: create the EMR database and run :data:`PREPARE_SQL` in it. Idempotent.

    Creates ``dbname`` owned by ``app_role`` if missing, then what provisioning applies on the cluster: the
    time zone Asia/Seoul, pg_partman in schema ``partman``, pg_cron, pg_stat_statements and hypopg (where
    installed), the grants ``app_role`` needs for partman maintenance and cron scheduling, ``ro_role``'s read
    access to every table the app role creates, and ``admin_role``'s rights (probe tables, the bench role's
    functions). The three roles must already exist. Returns the list of things it changed (empty on a second
    run). Not for the cluster: its superuser has no TCP login (provisioning prepares it).
    """
    changed: list[str] = []
    with connect(admin_dsn, autocommit=True) as conn:
        is_super = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        if not is_super or not is_super[0]:
            raise UsageError("prepare_database needs a superuser DSN (role postgres); pass the admin DSN")
        _check_preload(conn, dbname)  # before changing anything
        for role in (app_role, ro_role, admin_role):
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
                raise EnvironmentProblem(f"role {role} does not exist; create it (LOGIN) before preparing the database")
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is None:
            create = sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(dbname), sql.Identifier(app_role))
            conn.execute(create)
            changed.append(f"created database {dbname}")

    with connect(with_dbname(admin_dsn, dbname), autocommit=True) as conn:
        before = {r[0] for r in conn.execute("SELECT extname FROM pg_extension")}
        # One simple-protocol Query (no parameters): the file's statements run as one implicit transaction.
        conn.execute(prepare_sql(dbname, app_role, ro_role, admin_role))
        after = {r[0] for r in conn.execute("SELECT extname FROM pg_extension")}
        changed += [f"created extension {name}" for name in sorted(after - before)]
    return changed


def _check_preload(conn: psycopg.Connection, dbname: str) -> None:
    """Fail early, naming the setting to fix, if pg_cron cannot work on this server."""
    preload = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()[0]
    if "pg_cron" not in [p.strip() for p in preload.split(",")]:
        raise EnvironmentProblem(
            f"shared_preload_libraries={preload!r} lacks pg_cron; add it (and cron.database_name='{dbname}', "
            "cron.use_background_workers=on) to the server config and restart"
        )
    cron_db = conn.execute("SELECT current_setting('cron.database_name', true)").fetchone()[0]
    if cron_db != dbname:
        raise EnvironmentProblem(f"cron.database_name is {cron_db!r}; set it to '{dbname}' and restart the server")
    workers = conn.execute("SELECT current_setting('cron.use_background_workers', true)").fetchone()[0]
    if workers != "on":
        # Not fatal: the schema installs fine, but every job fails with "connection failed" until this is
        # set (`careflow-ha partitions check` reports it too).
        log.warning("cron.use_background_workers is %r: pg_cron jobs will fail to connect; set it to on and "
                    "restart the server", workers)


def _yoyo_uri(dsn: str, scheme: str | None = None) -> str:
    """yoyo wants a URI with the psycopg 3 scheme; build it from any libpq DSN.

    ``scheme`` travels as the session variable ``careflow.partition_scheme``, which migration 0008 reads.
    """
    from urllib.parse import quote, urlencode

    params = conninfo_to_dict(dsn)
    user = quote(params.pop("user", "") or "", safe="")
    password = params.pop("password", None)
    host = params.pop("host", "127.0.0.1") or "127.0.0.1"
    port = params.pop("port", "5432") or "5432"
    dbname = params.pop("dbname", DB_NAME) or DB_NAME
    if scheme is not None:
        params["options"] = " ".join(filter(None, [params.get("options"), f"-c {SCHEME_GUC}={scheme}"]))
    auth = user + (":" + quote(password, safe="") if password else "")
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"postgresql+psycopg://{auth}@{host}:{port}/{dbname}" + (f"?{query}" if query else "")


#: The session variable that carries ``careflow_partition_scheme`` to migration 0008.
SCHEME_GUC = "careflow.partition_scheme"
#: How long the conversion waits for lab_results' lock before giving up (and leaving the rest for a re-run):
#: a swap that queued behind a long query would make every other query on lab_results queue behind it.
SCHEME_LOCK_TIMEOUT = "10s"


def _layout(conn: psycopg.Connection) -> str | None:
    """lab_results_layout() (migration 0008); before 0008 every lab is per-clinic (0003); None: no lab_results."""
    if conn.execute("SELECT to_regclass('public.lab_results')").fetchone()[0] is None:
        return None
    if conn.execute("SELECT to_regproc('public.lab_results_layout')").fetchone()[0] is None:
        return "per-clinic"
    try:
        with conn.transaction():
            return conn.execute("SELECT lab_results_layout()").fetchone()[0]
    except psycopg.errors.RaiseException:
        return "unexpected"  # for the report only: lab_results_apply_scheme refuses it, naming what it found


def _scheme_error(exc: psycopg.Error, what: str) -> CareflowError:
    """A failed migration or scheme change as a one-line error with the exit code of its cause."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, psycopg.errors.LockNotAvailable | psycopg.errors.DeadlockDetected):
        return NotReady(f"{what} stopped: lab_results stayed locked by another session ({SCHEME_LOCK_TIMEOUT} "
                        "lock timeout, or a deadlock with it); "
                        "months already converted are kept; run `careflow-ha data migrate` again when long "
                        "queries are done")
    if isinstance(exc, psycopg.errors.InvalidParameterValue):
        return UsageError(first)
    return CheckFailed(f"{what} failed: {first}")


def migrate(dsn: str, migrations_dir: Path = MIGRATIONS_DIR, *, scheme: str | None = None,
            progress: Callable[[str], None] | None = None) -> list[str]:
    """Apply pending migrations as the app role (yoyo records them); return what was done.

    ``scheme`` is ``careflow_partition_scheme`` (one of ``settings.PARTITION_SCHEMES``): after the
    migrations, lab_results is brought to it (migration 0008's ``lab_results_apply_scheme``; per-clinic -> months-only
    keeps every row, the reverse is refused). ``None`` leaves the layout as it is. Returns the migration ids
    applied, then ``"lab_results layout: A -> B"`` if the layout changed. Idempotent: a second call does
    nothing and returns ``[]``. Needs :func:`prepare_database` first (pg_partman and pg_cron must exist).
    ``progress`` receives the conversion's per-month lines.
    """
    from yoyo import get_backend, read_migrations

    if scheme is not None:
        check_partition_scheme(scheme)
    with connect(dsn) as conn:
        missing = {"pg_partman", "pg_cron"} - {r[0] for r in conn.execute("SELECT extname FROM pg_extension")}
        before = _layout(conn) if not missing else None
    if missing:
        raise EnvironmentProblem(
            f"extensions {', '.join(sorted(missing))} are missing in {redact(dsn)}; prepare the database first "
            "(on the cluster `careflow-ha provision` does; elsewhere `careflow-ha data prepare --admin-dsn` as "
            "a superuser)"
        )

    def notice(diag: psycopg.errors.Diagnostic) -> None:
        if progress is not None and (diag.message_primary or "").startswith("lab_results"):
            progress(diag.message_primary or "")

    backend = get_backend(_yoyo_uri(dsn, scheme))
    make_copy = backend.copy

    def copy_with_notices():  # yoyo applies each migration on a fresh copy of the backend (its own connection)
        other = make_copy()
        other.connection.add_notice_handler(notice)
        return other

    backend.copy = copy_with_notices
    migrations = read_migrations(str(migrations_dir))
    try:
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
    except psycopg.Error as exc:
        raise _scheme_error(exc, "migration") from exc
    finally:
        backend.connection.close()
    done = [m.id for m in pending]
    with connect(dsn, autocommit=True) as conn:
        if scheme is not None and _layout(conn) is not None:
            # 0008 applied the setting when it ran; this applies a setting changed since (a no-op otherwise).
            conn.add_notice_handler(notice)
            try:
                conn.execute("CALL lab_results_apply_scheme(%s, %s)", (scheme, SCHEME_LOCK_TIMEOUT))
            except psycopg.Error as exc:
                raise _scheme_error(exc, f"changing lab_results to {scheme}") from exc
        after = _layout(conn)
    if after is not None and before != after:
        done.append(f"lab_results layout: {before or 'new'} -> {after}")
    return done
