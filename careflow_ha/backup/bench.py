"""``careflow-ha bench backup``: pgBackRest next to pg_basebackup on the same data, same run, same disk.

One loopback PostgreSQL 15 (durable settings: fsync on) is filled with ``mb`` MB of EMR-like rows, then,
in alternating rounds:

- backup: ``pgbackrest backup --type=full`` (the role's config: zstd level 3, process-max) against
  ``pg_basebackup -Ft -X fetch --compress=client-zstd:3`` (the same algorithm and level, one process);
- restore, timed to the first accepted connection: ``pgbackrest restore --type=immediate`` + start, against
  untarring the pg_basebackup (``tar --zstd``) + start. Both replay WAL only to the backup's end.

The WAL the fill wrote is archived before the first round (in the lab archiving runs continuously).
Reported per tool: median seconds, MB/s of database size, repository/backup bytes, restore seconds per GB,
and the ratios pgBackRest / pg_basebackup. Last, a differential backup after a month of new rows in a table
of its own (old months never change in the partitioned EMR), next to pg_basebackup, which is always full.
Absolute numbers drift between machines; the ratios are the claim.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from careflow_ha.backup.local import LocalRepository, start_local_repository
from careflow_ha.backup.operations import PG_BIN, read_stanza
from careflow_ha.backup.target import RestoreTarget
from careflow_ha.data.localserver import LocalPostgres
from careflow_ha.errors import CommandFailed, UsageError

MB = 1024 * 1024
#: Rows of about 150 bytes: ids, timestamps, hashes (incompressible-ish) and repeated codes (compressible),
#: roughly the mix of a lab_results row, so compression is neither trivial nor hopeless.
_TABLE = """
CREATE TABLE IF NOT EXISTS bench_results (
    id bigint PRIMARY KEY, collected_at timestamptz NOT NULL, pet_id int NOT NULL, test_code text NOT NULL,
    value numeric(10, 3) NOT NULL, flag text, accession text NOT NULL, note text)
"""
_FILL = """
INSERT INTO bench_results
SELECT g, timestamptz '2026-01-01 00:00+09' + g * interval '7 seconds', (g * 7919) %% 200000,
       (ARRAY['CREA', 'ALT', 'BUN', 'GLU', 'WBC', 'HCT'])[1 + g %% 6], round((random() * 500)::numeric, 3),
       CASE WHEN g %% 9 = 0 THEN 'H' WHEN g %% 13 = 0 THEN 'L' END, md5(g::text),
       CASE WHEN g %% 4 = 0 THEN 'repeat sample, haemolysed' END
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
"""
_ROW_BYTES = 150  # on disk with the tuple header and the index entry, measured on PG 15
_BATCH = 200_000


@dataclass(frozen=True)
class ToolFigures:
    tool: str
    backup_s: float
    backup_mb_s: float
    copy_s: float  # pgBackRest: start of the file copy to pg_backup_stop (its log); pg_basebackup: all of it
    copy_mb_s: float
    stored_mb: float
    restore_s: float
    restore_s_per_gb: float


@dataclass(frozen=True)
class BenchResult:
    database_mb: float
    rounds: int
    process_max: int
    pgbackrest: ToolFigures
    pg_basebackup: ToolFigures
    backup_speedup: float  # pg_basebackup seconds / pgBackRest seconds (>1: pgBackRest is faster)
    restore_speedup: float
    stored_ratio: float  # pgBackRest bytes / pg_basebackup bytes
    # A differential after a new month's rows (new files, old months untouched, as in the partitioned EMR):
    diff_new_mb: float  # table data added before the diff
    diff_s: float
    diff_stored_mb: float
    diff_speedup_vs_basebackup: float  # pg_basebackup (always full) seconds / pgBackRest diff seconds


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _fill(repo: LocalRepository, mb: int, log: Callable[[str], None]) -> float:
    rows = mb * MB // _ROW_BYTES
    with repo.connect(autocommit=True) as conn:
        conn.execute(_TABLE)
        for first in range(1, rows + 1, _BATCH):
            conn.execute(_FILL, {"first": first, "last": min(first + _BATCH - 1, rows)})
            log(f"  loaded {min(first + _BATCH - 1, rows):,} / {rows:,} rows")
        conn.execute("CHECKPOINT")
        return conn.execute("SELECT pg_database_size('postgres')").fetchone()[0] / MB


def _as_postgres(argv: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> None:
    cmd = ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CommandFailed(f"{Path(argv[0]).name} failed ({proc.returncode}): {tail[0]}")


def _timed(fn: Callable[[], None]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def _start_and_stop(server: LocalPostgres, repo: LocalRepository) -> None:
    repo.start_restored(server, timeout=600)
    server.stop()


def _basebackup(repo: LocalRepository, dest: Path) -> None:
    conninfo = f"host=127.0.0.1 port={repo.server.port} user=postgres dbname=postgres"
    _as_postgres([str(PG_BIN / "pg_basebackup"), "-d", conninfo, "-D", str(dest), "-Ft", "-X", "fetch",
                  "-c", "fast", "--compress=client-zstd:3", "--no-manifest"],
                 env={"PGPASSFILE": str(repo.base / "etc" / "pgpass")})


def _untar(backup: Path, server: LocalPostgres) -> None:
    data = server.data_dir
    _as_postgres(["mkdir", "-m", "0700", "-p", str(data)])
    _as_postgres(["tar", "--zstd", "-xf", str(backup / "base.tar.zst"), "-C", str(data)])
    if (backup / "pg_wal.tar.zst").exists():  # -X stream writes the WAL apart; -X fetch puts it in base.tar
        _as_postgres(["tar", "--zstd", "-xf", str(backup / "pg_wal.tar.zst"), "-C", str(data / "pg_wal")])


_LOG_TIME = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) P00\s+INFO: "


def copy_seconds(log: str) -> float | None:
    """From ``backup --log-level-console=info`` output: seconds from the copy's start to pg_backup_stop.

    The rest of a pgBackRest backup is the checkpoint before it and, after it, waiting for the stop
    segment to be archived (async push), the manifest and expire.
    """
    start = re.search(_LOG_TIME + r"backup start archive", log, re.MULTILINE)
    stop = re.search(_LOG_TIME + r"execute non-exclusive backup stop", log, re.MULTILINE)
    if not (start and stop):
        return None
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    return (datetime.strptime(stop[1], fmt) - datetime.strptime(start[1], fmt)).total_seconds()


def _pgbackrest_round(repo: LocalRepository, n: int) -> tuple[float, float, float, float]:
    """A full backup, then a restore of exactly that backup (no WAL past its end) up to the first connection."""
    started = time.monotonic()
    out = repo.run([*repo.pgbr.backup("full"), "--log-level-console=info"], timeout=1800)
    backup_s = time.monotonic() - started
    copy_s = copy_seconds(out.output)
    if copy_s is None:
        raise CommandFailed("pgbackrest backup printed no start/stop lines at --log-level-console=info")
    label = read_stanza(repo.run, repo.pgbr).backups[-1].label
    # This backup's own directory: retention (2 fulls) may expire an older one in the same command.
    stored = _du(repo.repo_path / "backup" / repo.pgbr.stanza / label) / MB
    target = repo.restored_server(f"pgbr-{n}")

    def restore() -> None:
        repo.run(repo.pgbr.restore(RestoreTarget("immediate"), pg_path=target.data_dir, set_label=label),
                 timeout=1800)
        _start_and_stop(target, repo)

    try:
        return backup_s, stored, _timed(restore), copy_s
    finally:
        target.remove()


def _basebackup_round(repo: LocalRepository, n: int) -> tuple[float, float, float, float]:
    """pg_basebackup to tar + zstd 3, then untar + start up to the first connection."""
    dest = repo.base / f"basebackup-{n}"
    target = repo.restored_server(f"pgbb-{n}")
    try:
        backup_s = _timed(lambda: _basebackup(repo, dest))
        stored = _du(dest) / MB
        return backup_s, stored, _timed(lambda: (_untar(dest, target), _start_and_stop(target, repo))), backup_s
    finally:
        target.remove()
        shutil.rmtree(dest, ignore_errors=True)


def _diff_after_new_month(repo: LocalRepository, mb: int, log: Callable[[str], None]) -> tuple[float, float]:
    """A month of new rows in a table of its own (a new partition), then a timed differential backup."""
    rows = mb * MB // _ROW_BYTES
    with repo.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_results_new (LIKE bench_results INCLUDING ALL)")
        conn.execute(_FILL.replace("INSERT INTO bench_results", "INSERT INTO bench_results_new"),
                     {"first": 1, "last": rows})
        conn.execute("CHECKPOINT")
    repo.run(repo.pgbr.check(), timeout=1800)  # its WAL archived first, as in the lab
    log(f"differential after {mb} MB of new rows")
    diff_s = _timed(lambda: repo.run(repo.pgbr.backup("diff"), timeout=1800))
    label = read_stanza(repo.run, repo.pgbr).backups[-1].label
    return diff_s, _du(repo.repo_path / "backup" / repo.pgbr.stanza / label) / MB


def run_bench(mb: int = 200, rounds: int = 2, process_max: int = 2,
              log: Callable[[str], None] = lambda _m: None) -> BenchResult:
    """Fill, then ``rounds`` interleaved backup+restore rounds of each tool; medians compared."""
    if not 10 <= mb <= 20_000:
        raise UsageError(f"--mb {mb} is out of range; give 10 to 20000 (MB of table data)")
    for tool in ("pgbackrest", "tar", "zstd"):
        if shutil.which(tool) is None:
            raise UsageError(f"{tool} is not installed; run ./careflow-ha once (it installs the host packages)")
    repo = start_local_repository(durable=True, process_max=process_max)
    figures: dict[str, dict[str, list[float]]] = {t: {"backup": [], "restore": [], "stored": [], "copy": []}
                                                  for t in ("pgbackrest", "pg_basebackup")}
    try:
        log(f"filling {mb} MB on a durable loopback server (port {repo.server.port})")
        size_mb = _fill(repo, mb, log)
        # The fill wrote a few hundred MB of WAL that async archiving is still pushing. In the lab archiving
        # runs all along, so that backlog is no part of a backup's time: wait it out first (check waits
        # until a fresh segment is in the repository, which comes after every older one).
        log("waiting for the WAL archive to catch up")
        repo.run(repo.pgbr.check(), timeout=1800)
        for n in range(1, rounds + 1):
            for name, one_round in (("pgbackrest", _pgbackrest_round), ("pg_basebackup", _basebackup_round)):
                backup_s, stored_mb, restore_s, copy_s = one_round(repo, n)
                figures[name]["copy"].append(copy_s)
                figures[name]["backup"].append(backup_s)
                figures[name]["stored"].append(stored_mb)
                figures[name]["restore"].append(restore_s)
                log(f"round {n}/{rounds}: {name} backup {backup_s:.1f}s ({stored_mb:.1f} MB), restore {restore_s:.1f}s")
        diff_s, diff_stored = _diff_after_new_month(repo, max(1, mb // 30), log)
    finally:
        repo.close()

    def tool(name: str) -> ToolFigures:
        b, r = statistics.median(figures[name]["backup"]), statistics.median(figures[name]["restore"])
        stored, c = statistics.median(figures[name]["stored"]), statistics.median(figures[name]["copy"])
        return ToolFigures(name, round(b, 2), round(size_mb / b, 1), round(c, 2), round(size_mb / c, 1),
                           round(stored, 1), round(r, 2), round(r / (size_mb / 1024), 1))

    pgbr, pgbb = tool("pgbackrest"), tool("pg_basebackup")
    return BenchResult(round(size_mb, 1), rounds, process_max, pgbr, pgbb,
                       round(pgbb.backup_s / pgbr.backup_s, 2), round(pgbb.restore_s / pgbr.restore_s, 2),
                       round(pgbr.stored_mb / pgbb.stored_mb, 2),
                       max(1, mb // 30), round(diff_s, 2), round(diff_stored, 1), round(pgbb.backup_s / diff_s, 2))


def render(result: BenchResult | dict) -> str:
    d = asdict(result) if isinstance(result, BenchResult) else result
    lines = [f"database {d['database_mb']} MB, {d['rounds']} round(s), pgBackRest process-max {d['process_max']}",
             f"{'tool':<14} {'backup s':>9} {'MB/s':>7} {'copy s':>7} {'copy MB/s':>10} {'stored MB':>10} "
             f"{'restore s':>10} {'s/GB':>7}"]
    for name in ("pgbackrest", "pg_basebackup"):
        t = d[name]
        lines.append(f"{t['tool']:<14} {t['backup_s']:>9} {t['backup_mb_s']:>7} {t['copy_s']:>7} {t['copy_mb_s']:>10} "
                     f"{t['stored_mb']:>10} {t['restore_s']:>10} {t['restore_s_per_gb']:>7}")
    lines.append(f"pgBackRest vs pg_basebackup: backup {d['backup_speedup']}x as fast, restore "
                 f"{d['restore_speedup']}x as fast, {d['stored_ratio']}x the bytes stored")
    lines.append(f"pgBackRest diff after {d['diff_new_mb']} MB of new rows: {d['diff_s']} s, {d['diff_stored_mb']} MB "
                 f"stored; {d['diff_speedup_vs_basebackup']}x as fast as pg_basebackup's (always full) backup")
    return "\n".join(lines)

