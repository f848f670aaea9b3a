"""``careflow-ha restore``: the whole Patroni cluster back to a point, from the pgBackRest repository.

The order, and why:

1. **Check before touching anything.** If a primary still runs, force its current WAL segment into the
   repository (``pgbackrest check``), so the restorable range reaches its newest commit. Refuse a time
   outside the range (exit 2). ``pgbackrest verify`` must pass: a damaged backup stops the restore here.
2. **Stop Patroni on every member**, replicas first, so no replica is promoted while the leader stops.
3. **Remove the cluster from the DCS** (``patronictl remove``): the restored data gets a new timeline,
   and a leftover leader key or history would make Patroni treat it as a stale member.
4. **Restore one member** (the old leader, or the first node) with ``pgbackrest restore --delta`` and the
   target, start PostgreSQL by hand until recovery reaches the target and promotes, then stop it. Done
   outside Patroni so the recovery target is honoured exactly once and its end is read from the log.
5. **Start Patroni there.** With no cluster in the DCS and a data directory present, Patroni initializes
   the cluster from that data (as when it adopts a standalone server) and becomes its leader.
6. **Take a full backup** of the restored primary. The old backups belong to the abandoned timeline: a
   replica restored from one taken after the target could never follow the new timeline.
7. **Re-clone the replicas**: empty their data directories and start Patroni, whose
   ``create_replica_methods: [pgbackrest, basebackup]`` restores the fresh backup and streams the rest.
8. **Wait for full health** and say what point was reached.

Every wait is bounded. A failure after step 2 says which step failed and what state each member is in.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from careflow_ha.backup.lab import PG_BIN, PGDATA, BackupRun, LabRepository
from careflow_ha.backup.report import Step
from careflow_ha.backup.repository import RestorableRange
from careflow_ha.backup.target import RestoreTarget
from careflow_ha.cluster.health import wait_healthy
from careflow_ha.cluster.model import ClusterSnapshot
from careflow_ha.cluster.patroni import PatroniApi
from careflow_ha.errors import CareflowError, NotReady
from careflow_ha.settings import PG_NODES, Settings

Progress = Callable[[str], None]
Confirm = Callable[[str], None]
#: patronictl on every node (roles/patroni: the venv's entry point, linked onto the PATH).
PATRONICTL = "patronictl -c /etc/patroni/patroni.yml"
SCOPE = "careflow"
#: The leader's name in ``patronictl list -f json`` (empty when no leader key is left).
_LEADER_FROM_LIST = ("import json, sys; print(next((m['Member'] for m in json.load(sys.stdin) "
                     "if m.get('Role') in ('Leader', 'Standby Leader')), ''))")
#: The log of the by-hand recovery on the restored member (kept: the restore's own record).
RECOVERY_LOG = "/var/log/postgresql/careflow-restore.log"
#: PostgreSQL's end-of-recovery lines: where a target stopped it, and the last transaction replayed.
_STOPPING = re.compile(r"recovery stopping (?:before|after) (?:commit|abort) of transaction (\d+), time ([^\n]+)")
_LAST = re.compile(r"last completed transaction was at log time ([^\n]+)")


@dataclass
class RestoreResult:
    """What ``restore_cluster`` did: its steps (wall clock), the point it reached, the fresh backup."""

    target: RestoreTarget
    member: str
    started_at: float
    span: RestorableRange | None = None
    steps: list[Step] = field(default_factory=list)
    stopped_at: str | None = None  # "transaction 1234, time ..." where a target stopped recovery
    last_transaction: str | None = None  # the newest commit the restored database holds
    fresh_backup: BackupRun | None = None
    finished_at: float | None = None
    healthy: ClusterSnapshot | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at

    def reached(self) -> str:
        if self.stopped_at:
            return f"recovery stopped before {self.stopped_at}; last transaction kept at {self.last_transaction}"
        return f"last transaction replayed at {self.last_transaction or 'unknown'}"


@dataclass(frozen=True)
class RestoreTimeouts:
    stop_s: float = 120
    restore_s: float = 3600
    leader_s: float = 180
    healthy_s: float = 900


class _Steps:
    """Times each step; a failure names the step (and leaves the result's steps for the report)."""

    def __init__(self, result: RestoreResult, log: Progress) -> None:
        self.result, self.log = result, log

    def run(self, name: str, fn: Callable[[], str | None]) -> None:
        step = Step(name, time.time())
        self.result.steps.append(step)
        self.log(f"restore: {name}")
        try:
            step.note = fn() or ""
        except CareflowError as exc:
            step.ended = time.time()
            raise type(exc)(f"restore failed at '{name}': {exc}") from None
        step.ended = time.time()
        self.log(f"restore: {name}: done in {step.seconds:.1f}s" + (f" ({step.note})" if step.note else ""))


def current_leader(api: PatroniApi) -> tuple[str | None, bool]:
    """The member Patroni calls leader, and whether its PostgreSQL runs (a leader key outlives a killed primary)."""
    try:
        snap = api.cluster(timeout=3)
    except (CareflowError, OSError):
        return None, False
    member = snap.member(snap.leader) if snap.leader else None
    return snap.leader, member is not None and member.state == "running"


def preflight(lab: LabRepository, target: RestoreTarget, primary_runs: bool, log: Progress) -> RestorableRange | None:
    """Step 1: nothing is touched yet. Returns the range (None for --latest, which needs none)."""
    if primary_runs:
        log("restore: archiving the primary's current WAL segment (pgbackrest check)")
        try:
            lab.archive_check()
        except CareflowError as exc:  # the range below then ends at what the repository already has
            log(f"restore: could not archive the current segment ({exc}); restoring from what is archived")
    span = None
    if target.kind == "time":
        span = lab.check_target(target)
        log(f"restore: the restorable range is {span} (Asia/Seoul); the target is inside it")
    log("restore: verifying the repository (pgbackrest verify)")
    lab.verify().require_ok()
    return span


def restore_cluster(settings: Settings, target: RestoreTarget, confirm: Confirm, log: Progress,
                    timeouts: RestoreTimeouts = RestoreTimeouts(), nodes: Sequence[str] = PG_NODES) -> RestoreResult:
    """Restore the lab cluster to ``target`` (see the module's docstring for the order)."""
    lab = LabRepository(settings)
    api = PatroniApi(settings, nodes)
    leader, primary_runs = current_leader(api)
    member = leader or nodes[0]
    result = RestoreResult(target, member, time.time())
    result.span = preflight(lab, target, primary_runs, log)
    confirm(f"Restore stops Patroni on {', '.join(nodes)}, removes the cluster from etcd and replaces every "
            f"node's data with {target.describe()} (restored on {member}). Continue?")
    steps = _Steps(result, log)
    root = {n: lab.node(n, "root") for n in nodes}
    replicas = [n for n in nodes if n != member]

    def stop(n: str) -> None:
        root[n](["systemctl", "stop", "patroni"], timeout=timeouts.stop_s, check=False)

    def stop_all() -> str:
        # The replicas first (together), so none can be promoted while the leader stops; then the leader.
        with ThreadPoolExecutor(max_workers=len(replicas) or 1) as pool:
            list(pool.map(stop, replicas))
        stop(member)
        running = [n for n in nodes if _postgres_runs(root[n])]
        if running:
            raise NotReady(f"PostgreSQL still runs on {', '.join(running)} after stopping Patroni")
        return f"stopped on {', '.join([*replicas, member])}"

    def remove_from_dcs() -> str:
        # patronictl asks for the scope, an acknowledgement and, while a leader key is left (a killed leader's
        # lives until its TTL), that leader's name, which it reads from the DCS itself.
        script = (f"leader=$({PATRONICTL} list -f json | python3 -c {shlex.quote(_LEADER_FROM_LIST)}); "
                  f"printf '%s\\n%s\\n%s\\n' {SCOPE} 'Yes I am aware' \"$leader\" | {PATRONICTL} remove {SCOPE}")
        root[member](["sh", "-c", script], timeout=60)
        return f"cluster {SCOPE!r} removed from etcd"

    def restore_member() -> str:
        got = root[member](["sh", "-c", _recovery_script(lab, target, timeouts.restore_s)],
                           timeout=timeouts.restore_s + 120)
        stopped, last = parse_recovery_log(got.stdout)
        result.stopped_at, result.last_transaction = stopped, last
        return result.reached()

    def start_member() -> str:
        root[member](["systemctl", "start", "patroni"], timeout=60)
        _wait_leader(api, member, timeouts.leader_s)
        return f"{member} leads the restored cluster"

    def fresh_backup() -> str:
        run = lab.backup("full", from_standby=False, log=log)
        result.fresh_backup = run
        return f"{run.backup.label}, {run.backup.size / 1e6:.0f} MB in {run.seconds:.1f}s"

    def reclone() -> str:
        for n in replicas:
            root[n](["sh", "-c", f"find {PGDATA} -mindepth 1 -delete"], timeout=300)
            root[n](["systemctl", "start", "patroni"], timeout=60)
        # Full health as status sees it: every replica streaming, a sync standby chosen, HAProxy routing to the
        # new roles (cluster/health.py; bounded by the timeout).
        result.healthy = wait_healthy(settings, log, timeouts.healthy_s).snapshot
        return f"{', '.join(replicas)} streaming from {member}"

    steps.run("stop Patroni on every member", stop_all)
    steps.run("remove the cluster from the DCS", remove_from_dcs)
    steps.run(f"restore {member} to {target.describe()}", restore_member)
    steps.run(f"start Patroni on {member}", start_member)
    steps.run("take a full backup of the restored timeline", fresh_backup)
    steps.run("re-clone the replicas from the repository", reclone)
    result.finished_at = time.time()
    return result


def _postgres_runs(root_runner) -> bool:  # noqa: ANN001 - an SshRunner as root
    got = root_runner(["sh", "-c", f"test -f {PGDATA}/postmaster.pid && "
                                   f"kill -0 $(head -n 1 {PGDATA}/postmaster.pid) 2>/dev/null"],
                      timeout=15, check=False)
    return got.returncode == 0


def _recovery_script(lab: LabRepository, target: RestoreTarget, timeout_s: float) -> str:
    """On the restored member, as root: restore with the target, run recovery by hand, print its log's end."""
    restore = shlex.join(lab.pgbr.restore(target, delta=True) + ["--log-level-console=warn"])
    as_pg = "runuser -u postgres --"
    wait_s = int(timeout_s)
    return "\n".join([
        "set -e",
        f"rm -f {PGDATA}/postmaster.pid",  # a crashed node's stale pid file would stop pg_ctl
        f"{as_pg} {restore}",
        f": > {RECOVERY_LOG} && chown postgres {RECOVERY_LOG}",
        # logging_collector off: the end-of-recovery lines must land in this file, which is read below.
        # ssl off: the restored postgresql.conf names the certificate of the node the backup came from, which
        # this member may not hold; nothing connects over TCP until Patroni restarts it with its own.
        f"{as_pg} {PG_BIN}/pg_ctl -D {PGDATA} -l {RECOVERY_LOG} -w -t {wait_s} "
        "-o '-c logging_collector=off -c log_destination=stderr -c ssl=off' start >/dev/null",
        f"for i in $(seq 1 {wait_s}); do "
        f"[ \"$({as_pg} {PG_BIN}/psql -XAtq -h /var/run/postgresql -d postgres -c 'SELECT pg_is_in_recovery()')\""
        " = f ] && break; sleep 1; done",
        # pgBackRest wrote the target into postgresql.auto.conf; were it left there, this member would stop at
        # the same target again whenever it replays WAL as a replica. Patroni owns every other setting.
        f"{as_pg} {PG_BIN}/psql -XAtq -h /var/run/postgresql -d postgres -c 'ALTER SYSTEM RESET ALL' >/dev/null",
        f"{as_pg} {PG_BIN}/psql -XAtq -h /var/run/postgresql -d postgres -c 'CHECKPOINT' >/dev/null",
        f"{as_pg} {PG_BIN}/pg_ctl -D {PGDATA} -m fast -w stop >/dev/null",
        f"grep -E 'recovery stopping|last completed transaction|database system is ready' {RECOVERY_LOG} || true",
    ])


def parse_recovery_log(text: str) -> tuple[str | None, str | None]:
    """(where a target stopped recovery, the last completed transaction's time) from PostgreSQL's log."""
    stopping = _STOPPING.search(text)
    last = _LAST.findall(text)
    stopped = f"transaction {stopping[1]} ({stopping[2].strip()})" if stopping else None
    return stopped, (last[-1].strip() if last else None)


def _wait_leader(api: PatroniApi, member: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s) + 2):
        if current_leader(api) == (member, True):
            return
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    raise NotReady(f"{member} did not become the leader within {timeout_s:.0f}s; "
                   f"look at 'journalctl -u patroni' on {member}")
