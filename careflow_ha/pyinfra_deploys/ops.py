"""Custom pyinfra operations and facts the stock ones lack.

Each operation follows pyinfra's contract: at execution time it looks at the
host (facts) and yields commands only when the host differs from the wanted
state, so an operation that yields nothing reports "no change". Waits and
checks poll in the body and yield nothing: like Ansible's ``until:`` tasks
with ``changed_when: false`` they are not changes to the host.
"""

from __future__ import annotations

import io
import json
import shlex
import time
from collections.abc import Callable, Iterator
from typing import Any

from pyinfra import host
from pyinfra.api import FactBase, OperationError, StringCommand, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import Sha1File
from pyinfra.facts.postgres import PostgresRoles
from pyinfra.operations import files, postgres, systemd

from careflow_ha.pyinfra_deploys._data import RoleFile, role_template

#: Where the apt cache's last refresh is recorded (Ubuntu's stamp; pyinfra uses it too).
APT_STAMP = "/var/lib/apt/periodic/update-success-stamp"


def changed_unless(ops: tuple[OperationMeta, ...], unless: OperationMeta) -> Callable[[], bool]:
    """Changed, unless ``unless`` (a start) changed: a service just started already runs the new config."""
    return lambda: any(op.did_change() for op in ops) and not unless.did_change()


def _run(command: str, **kwargs: Any) -> tuple[bool, str]:
    ok, output = host.run_shell_command(StringCommand(command), **kwargs)
    return ok, "\n".join(output.stdout_lines)


class VirtualizationContainer(FactBase[str]):
    """The container technology this host runs in (``none`` on a VM or bare metal)."""

    def command(self) -> str:
        return "systemd-detect-virt --container || true"

    def process(self, output: list[str]) -> str:
        return (output[0].strip() if output else "") or "none"


class PgRoleMember(FactBase[bool]):
    """Whether ``member`` is a member of ``group`` (queried as the postgres OS user)."""

    def command(self, group: str, member: str, port: int) -> str:
        sql = (
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
            f"JOIN pg_roles u ON u.oid = m.member WHERE g.rolname = '{group}' AND u.rolname = '{member}'"
        )
        return f"psql -p {int(port)} -tAXc {shlex.quote(sql)}"

    def process(self, output: list[str]) -> bool:
        return bool(output) and output[0].strip() not in ("", "0")


def http_status(url: str, ca_file: str = "") -> tuple[int, str]:
    """GET ``url`` from the host itself (the node reaches its own API; the control host may not); an https URL
    is verified against ``ca_file``."""
    ca = f"--cacert {shlex.quote(ca_file)} " if ca_file else ""
    _, out = _run(f"curl -s -m 5 {ca}-w '\\n%{{http_code}}' {shlex.quote(url)} || printf '\\n000'")
    body, _, code = out.rpartition("\n")
    return int(code or 0), body


@operation()
def apt_cache_fresh(max_age_s: int = 3600) -> Iterator[Any]:
    """Refresh the apt cache when older than ``max_age_s``: not a change (the role's changed_when: false)."""
    minutes = max(1, max_age_s // 60)
    fresh, _ = _run(f"test -n \"$(find {APT_STAMP} -mmin -{minutes} 2>/dev/null)\"")
    if fresh:
        host.noop("apt cache is fresh")
        return
    ok, out = _run(f"apt-get update -q && mkdir -p {APT_STAMP.rsplit('/', 1)[0]} && touch {APT_STAMP}")
    if not ok:
        raise OperationError(f"apt-get update failed: {out[-300:]}")
    host.noop("apt cache refreshed")
    yield from ()


@operation()
def validated_file(
    content: str, dest: str, validate: str, user: str, group: str, mode: str
) -> Iterator[Any]:
    """A config file that goes live only once ``validate`` (``%s`` = the candidate) accepts it.

    The candidate is uploaded beside ``dest``, checked, then moved over it, so a
    bad render never replaces a working config (Ansible's ``template: validate:``).
    """
    import hashlib

    wanted = hashlib.sha1(content.encode()).hexdigest()  # noqa: S324  # compared with sha1sum, not security
    if host.get_fact(Sha1File, path=dest) == wanted:
        yield from files.file._inner(path=dest, user=user, group=group, mode=mode)
        return
    candidate = f"{dest}.careflow-new"
    yield from files.put._inner(src=io.BytesIO(content.encode()), dest=candidate, user=user, group=group, mode=mode)
    check = validate.replace("%s", shlex.quote(candidate))
    # The validator's output may quote the file (and its secrets): keep it off the log;
    # on failure the candidate stays (same owner and mode) for `validate` by hand.
    failed = shlex.quote(f"{dest}: the new version failed validation; kept as {candidate}")
    yield StringCommand(f"{check} >/dev/null 2>&1 || {{ echo {failed} >&2; exit 1; }}")
    yield StringCommand(f"mv -f {shlex.quote(candidate)} {shlex.quote(dest)}")


@operation()
def wait_until_ok(command: str, what: str, retries: int, delay: float) -> Iterator[Any]:
    """Poll ``command`` on the host until it succeeds: a check, never a change."""
    for _ in range(int(retries)):
        ok, _ = _run(command)
        if ok:
            host.noop(what)
            return
        time.sleep(float(delay))
    raise OperationError(f"{what}: not true after {retries} tries, {delay}s apart (`{command.split()[0]}`)")
    yield from ()


@operation()
def run_unless_exists(path: str, command: str) -> Iterator[Any]:
    """Ansible's ``command: ... creates: path``: run ``command`` once, until ``path`` exists."""
    exists, _ = _run(f"test -e {shlex.quote(path)}")
    if exists:
        host.noop(f"{path} exists")
        return
    yield StringCommand(command)


@operation()
def patroni_has_leader(api_url: str, retries: int, delay: float, ca_file: str = "") -> Iterator[Any]:
    """Poll Patroni's /cluster until exactly one running leader is listed (the role's until:)."""
    for _ in range(int(retries)):
        code, body = http_status(f"{api_url}/cluster", ca_file)
        if code == 200:
            try:
                members = json.loads(body).get("members", [])
            except ValueError:
                members = []
            if sum(1 for m in members if m.get("role") == "leader" and m.get("state") == "running") == 1:
                host.noop("the cluster has a leader")
                return
        time.sleep(float(delay))
    raise OperationError(f"no running Patroni leader after {retries} tries, {delay}s apart; see journalctl -u patroni")
    yield from ()


def _combine(current: Any, wanted: Any) -> Any:
    """Ansible's ``combine(recursive=True)``."""
    if isinstance(current, dict) and isinstance(wanted, dict):
        out = dict(current)
        for key, value in wanted.items():
            out[key] = _combine(current.get(key), value)
        return out
    return wanted


def dcs_needs_patch(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """True when the running cluster's dynamic configuration lacks something the inventory wants."""
    return _combine(current, wanted) != current


@operation()
def patroni_dynamic_config(api_url: str, config_file: str, wanted: dict[str, Any], ca_file: str = "") -> Iterator[Any]:
    """PATCH the cluster's dynamic (DCS) configuration when it differs from ``wanted``.

    patronictl applies the patch with the credentials of ``config_file`` (its
    ctl section), so no password is ever on a command line.
    """
    code, body = http_status(f"{api_url}/config", ca_file)
    if code != 200:
        raise OperationError(f"GET {api_url}/config answered {code}; is Patroni running?")
    if not dcs_needs_patch(json.loads(body), wanted):
        host.noop("dynamic configuration matches the inventory")
        return
    patch = shlex.quote(json.dumps(wanted))
    yield StringCommand(
        f"printf '%s' {patch} | patronictl -c {shlex.quote(config_file)} edit-config --force --quiet --apply -"
    )


def is_primary(api_url: str, ca_file: str = "") -> Callable[[], bool]:
    """An ``_if=`` condition: this member answers GET /primary with 200 now (Patroni decides, not the inventory)."""
    return lambda: http_status(f"{api_url}/primary", ca_file)[0] == 200


@operation()
def login_role(role: str, password: str, port: int, createdb: bool = False) -> Iterator[Any]:
    """A LOGIN role (never superuser or CREATEROLE); the password is set when the role is created (as the role's
    second run reports no change)."""
    roles = host.get_fact(PostgresRoles, psql_port=port)
    yield from postgres.role._inner(
        role=role,
        password=None if role in roles else password,
        login=True,
        inherit=True,
        superuser=False,
        createrole=False,
        createdb=createdb,
        psql_port=port,
    )


@operation()
def role_membership(group: str, member: str, port: int) -> Iterator[Any]:
    """``member`` belongs to ``group`` (e.g. pg_read_all_data for the read-only role)."""
    if host.get_fact(PgRoleMember, group=group, member=member, port=port):
        host.noop(f"{member} is a member of {group}")
        return
    yield StringCommand(f"psql -p {int(port)} -Xqc {shlex.quote(f'GRANT {group} TO {member}')}")


#: The version marks the role's read tasks compare (a COMMENT, '' when the object is missing).
FUNCTION_COMMENT = "SELECT coalesce(obj_description(to_regprocedure('{}'), 'pg_proc'), '')"
DATABASE_COMMENT = ("SELECT coalesce(shobj_description((SELECT oid FROM pg_database WHERE datname = "
                    "current_database()), 'pg_database'), '')")


class PgQueryValue(FactBase[str]):
    """The one value ``sql`` returns in ``database`` ('' when none), as the postgres OS user."""

    def command(self, sql: str, database: str, port: int) -> str:
        return f"psql -p {int(port)} -d {shlex.quote(database)} -tAXc {shlex.quote(sql)}"

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else ""


@operation()
def sql_versioned(sql: str, version_sql: str, version: str, database: str, port: int) -> Iterator[Any]:
    """Apply ``sql`` in ``database`` unless ``version_sql`` (a COMMENT: FUNCTION_COMMENT, DATABASE_COMMENT) already
    returns ``version`` (the role's read-then-apply pair of postgresql_query tasks)."""
    if host.get_fact(PgQueryValue, sql=version_sql, database=database, port=port) == version:
        host.noop(f"{database} has {version}")
        return
    # A quoted heredoc: the SQL's $$ and quotes reach psql untouched; ON_ERROR_STOP fails the operation.
    yield StringCommand(
        f"psql -p {int(port)} -d {shlex.quote(database)} -Xq -v ON_ERROR_STOP=1 <<'CAREFLOW_SQL'\n{sql}CAREFLOW_SQL"
    )


def put_role_file(name: str, role_file: RoleFile) -> OperationMeta:
    """Write a role's file: through ``validated_file`` when the role validates it, else ``files.put``."""
    f = role_file
    if f.validate:
        return validated_file(
            name=name, content=f.content, dest=f.dest, validate=f.validate, user=f.user, group=f.group, mode=f.mode
        )
    return files.put(
        name=name, src=io.BytesIO(f.content.encode()), dest=f.dest, user=f.user, group=f.group, mode=f.mode
    )


@operation()
def pip_requirements(pip: str, requirements: list[str], extra_args: str = "") -> Iterator[Any]:
    """Requirements (extras included, e.g. ``patroni[etcd3]``) installed with ``pip``.

    pyinfra's pip.packages drops extras when it compares, so pip itself decides:
    ``pip install --dry-run`` lists what it would install, and only then is
    anything installed.
    """
    args = " ".join(shlex.quote(r) for r in requirements)
    ok, out = _run(f"{shlex.quote(pip)} install --dry-run --disable-pip-version-check {extra_args} {args}")
    if ok and "Would install" not in out:
        host.noop("requirements already installed")
        return
    yield StringCommand(f"{shlex.quote(pip)} install --disable-pip-version-check {extra_args} {args}")


@operation()
def patroni_pending_restarts(
    api_url: str, config_file: str, scope: str, settle_s: float, after: OperationMeta, ca_file: str = ""
) -> Iterator[Any]:
    """Restart, one at a time, the members Patroni flags ``pending_restart`` (postmaster-level settings).

    After a dynamic-config change, Patroni needs one HA loop to notice which
    settings need a restart, hence ``settle_s`` then.
    """
    if after.is_complete() and after.did_change():  # in a dry run nothing has executed
        time.sleep(float(settle_s))
    code, body = http_status(f"{api_url}/cluster", ca_file)
    if code != 200:
        raise OperationError(f"GET {api_url}/cluster answered {code}; is Patroni running?")
    pending = [m["name"] for m in json.loads(body).get("members", []) if m.get("pending_restart")]
    if not pending:
        host.noop("no member waits for a restart")
        return
    yield StringCommand(
        f"patronictl -c {shlex.quote(config_file)} restart {shlex.quote(scope)} --pending --force"
    )


@operation()
def each(inner: Any, items: list[dict[str, Any]]) -> Iterator[Any]:
    """A stock operation (``files.put``, ``server.user``, ...) applied to every item, as one operation.

    A role's ``loop:`` task, in pyinfra: the loop's length differs per host (pg1 has two service accounts, lb1
    one), but every host in a play must run the same number of operations, because pyinfra's API mode matches
    operations across hosts by position.
    """
    for kwargs in items:
        yield from inner._inner(**kwargs)


def textfile_timer(role: str, tasks_file: str, unit: str, what: str) -> None:
    """A role's node-exporter textfile timer: its ``<unit>.service`` and ``<unit>.timer`` templates written,
    systemd told only when one changed, and the timer enabled and running (the task names are the role's)."""
    units = [put_role_file(f"Ensure the {what} {kind} is in place",
                           role_template(role, tasks_file, f"{unit}.{kind}.j2")) for kind in ("service", "timer")]
    systemd.daemon_reload(name=f"Ensure systemd has read the {what} units",
                          _if=lambda: any(u.did_change() for u in units))
    systemd.service(name=f"Ensure the {what} timer is enabled and running", service=f"{unit}.timer", running=True,
                    enabled=True)
