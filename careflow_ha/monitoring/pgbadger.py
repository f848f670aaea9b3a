"""``careflow-ha queries report``: pgbadger over PostgreSQL logs, plus our own Markdown and JSON summary.

pgbadger (Debian's package) writes the full HTML report; its JSON output is
read back for the summary of the slowest statements, so the Markdown never
disagrees with the HTML. Logs come from a :class:`LogSource`: files given on
the command line (``--log``), or every database node's log files, fetched
over the lab's SSH into a temporary directory (raw logs can hold literals
such as a password in an ALTER ROLE: they never land in the report folder).
"""

from __future__ import annotations

import io
import json
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from careflow_ha.errors import CommandFailed, EnvironmentProblem, UsageError
from careflow_ha.lab.ssh import ssh_argv
from careflow_ha.monitoring import report_folder
from careflow_ha.settings import Settings

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent
REPORTS_DIR = PROJECT_DIR / "reports" / "queries"
#: The server's log_line_prefix (careflow_postgresql_parameters in inventory/group_vars/all.yml); pgbadger is
#: told it exactly.
LOG_LINE_PREFIX = "%m [%p]: user=%u,db=%d,app=%a,client=%h "


class LogSource(Protocol):
    """Where PostgreSQL logs come from. ``collect`` copies or names them under ``work_dir``."""

    def describe(self) -> str:
        """A human name for messages (never carries credentials)."""

    def collect(self, work_dir: Path) -> list[Path]:
        """Local log files to parse, at least one; raise UsageError/EnvironmentProblem naming the fix."""


@dataclass(frozen=True)
class FileLogs:
    """Log files on this machine (``--log FILE``, repeatable)."""

    paths: tuple[Path, ...]

    def describe(self) -> str:
        return ", ".join(str(p) for p in self.paths)

    def collect(self, work_dir: Path) -> list[Path]:
        if not self.paths:
            raise UsageError("give at least one --log FILE, or none to read every database node's logs")
        for path in self.paths:
            if not path.is_file():
                raise UsageError(f"--log {path}: no such file; give a PostgreSQL log file")
        return list(self.paths)


_LITERAL = re.compile(r"'(?:[^']|'')*'|(?<![\w$.])-?\d+(?:\.\d+)?(?![\w.])")


def anonymise(query: str) -> str:
    """The statement with its string and number literals replaced by ``?``, as pgbadger's --anonymize shows it.

    pgbadger anonymises its HTML only; its JSON keeps the raw text, so the
    summary does this itself and the raw JSON never lands in the report folder.
    """
    return _LITERAL.sub("?", query)


#: Where the server writes its log files: log_directory, relative to the data directory unless absolute.
_LOG_DIR_SQL = ("SELECT CASE WHEN left(current_setting('log_directory'), 1) = '/' "
                "THEN current_setting('log_directory') "
                "ELSE current_setting('data_directory') || '/' || current_setting('log_directory') END")


@dataclass(frozen=True)
class NodeLogs:
    """Every listed node's PostgreSQL log files (log_filename ``postgresql-%a.log``), over the lab's SSH.

    The server says where its logs are (so a changed data or log directory is
    followed); one ``tar`` per node brings them all. A node that cannot be
    read is skipped with a line on ``log``; none readable is an error.
    """

    settings: Settings
    nodes: tuple[str, ...]
    pg_port: int = 5432
    log: Callable[[str], None] = lambda _: None
    timeout_s: float = 120.0

    def describe(self) -> str:
        return f"the PostgreSQL logs of {', '.join(self.nodes)} (over SSH)"

    def remote_script(self) -> str:
        psql = ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-h", "/var/run/postgresql", "-p",
                str(self.pg_port), "-d", "postgres", "-c", _LOG_DIR_SQL]
        return f'set -e; cd "$({shlex.join(psql)})"; tar -cf - postgresql-*.log'

    def collect(self, work_dir: Path) -> list[Path]:
        found: list[Path] = []
        for node in self.nodes:
            try:
                proc = subprocess.run(ssh_argv(self.settings, node, self.remote_script()), capture_output=True,
                                      timeout=self.timeout_s, check=False, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                self.log(f"queries: {node} skipped: its logs did not arrive within {self.timeout_s:.0f}s")
                continue
            if proc.returncode != 0:
                why = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
                self.log(f"queries: {node} skipped: {why}")
                continue
            target = work_dir / node
            target.mkdir(parents=True, exist_ok=True)
            try:
                with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
                    tar.extractall(target, filter="data")  # plain files only, nothing outside target
            except tarfile.TarError as exc:
                self.log(f"queries: {node} skipped: its log archive is unreadable ({exc})")
                continue
            found += sorted(p for p in target.glob("postgresql-*.log") if p.is_file())
        if not found:
            raise EnvironmentProblem(f"no PostgreSQL log could be read from {', '.join(self.nodes)}; is the lab up "
                                     "(careflow-ha status)? Or give files with --log FILE")
        return found


def run_pgbadger(logs: Sequence[Path], html: Path, js: Path, *, prefix: str = LOG_LINE_PREFIX,
                 timeout: float = 600) -> None:
    """Write pgbadger's HTML report (literals anonymised) to ``html`` and its raw JSON data to ``js``."""
    exe = shutil.which("pgbadger")
    if exe is None:
        raise EnvironmentProblem("pgbadger not found; install Debian's pgbadger package (scripts/bootstrap.sh does)")
    # --anonymize: literals in logged statements can be owners' names and phone numbers, or a password
    # in an ALTER ROLE; the report shows statement shapes and timings, never the values.
    cmd = [exe, "--quiet", "--no-progressbar", "--anonymize", "--format", "stderr", "--prefix", prefix, "--jobs", "1",
           "-o", str(html), "-o", str(js), *map(str, logs)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise CommandFailed(f"pgbadger did not finish within {timeout:.0f}s") from None
    if proc.returncode != 0 or not js.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise CommandFailed(f"pgbadger failed ({proc.returncode}): {' | '.join(tail) or 'no output'}")


def _ms(value: Any) -> float:
    try:
        return round(float(value), 3)
    except (TypeError, ValueError):
        return 0.0


def _per_instance(value: Any) -> list[Any]:
    """pgbadger 12 keys most sections by log instance (``{"postgres": ...}``); the values, in key order."""
    if not isinstance(value, dict):
        return []
    return [value[k] for k in sorted(value) if isinstance(value[k], dict | list)]


def summarise(badger: dict[str, Any], limit: int = 10) -> dict[str, Any]:
    """The slowest single statements and the most expensive normalised ones, from pgbadger's JSON."""
    slowest = []
    for entries in _per_instance(badger.get("top_slowest")):
        for entry in entries or []:
            # pgbadger 12: [duration_ms, timestamp, query, database, user, client, application, ...]
            if isinstance(entry, list) and len(entry) >= 3:
                slowest.append({"duration_ms": _ms(entry[0]), "at": entry[1], "query": anonymise(str(entry[2])),
                                "database": entry[3] if len(entry) > 3 else None,
                                "user": entry[4] if len(entry) > 4 else None})
    slowest.sort(key=lambda e: e["duration_ms"], reverse=True)
    normalised = []
    for queries in _per_instance(badger.get("normalyzed_info")):
        for query, info in (queries or {}).items():
            if not isinstance(info, dict):
                continue
            count = int(info.get("count", 0) or 0)
            duration = _ms(info.get("duration"))
            if count:
                normalised.append({"query": query, "count": count, "total_ms": duration,
                                   "mean_ms": round(duration / count, 3), "max_ms": _ms(info.get("max"))})
    normalised.sort(key=lambda e: e["total_ms"], reverse=True)
    logged, total_ms, first, last = 0, 0.0, [], []
    for overall in _per_instance(badger.get("overall_stat")):
        if not isinstance(overall, dict):
            continue
        logged += int(overall.get("queries_number", 0) or 0)
        durations = overall.get("queries_duration")
        total_ms += sum(_ms(v) for v in durations.values()) if isinstance(durations, dict) else _ms(durations)
        first += [overall["first_log_ts"]] if overall.get("first_log_ts") else []
        last += [overall["last_log_ts"]] if overall.get("last_log_ts") else []
    return {"queries_logged": logged, "queries_total_ms": round(total_ms, 3),
            "first_log": min(first, default=None), "last_log": max(last, default=None),
            "slowest": slowest[:limit], "by_total_time": normalised[:limit]}


def _cell(text: str, width: int = 110) -> str:
    flat = " ".join(str(text).split()).replace("|", "\\|")
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def render_markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [f"# Query report ({report['generated_at']})", "", f"Logs: {report['source']}", "",
             f"{s['queries_logged']} statements logged (log_min_duration_statement and auto_explain decide which), "
             f"{s['queries_total_ms']} ms in total, from {s['first_log']} to {s['last_log']}.", "",
             "## Slowest statements", ""]
    if s["slowest"]:
        lines += ["| ms | at | database | user | statement |", "|---:|---|---|---|---|"]
        lines += [f"| {e['duration_ms']} | {e['at']} | {e['database'] or ''} | {e['user'] or ''} | "
                  f"`{_cell(e['query'])}` |" for e in s["slowest"]]
    else:
        lines.append("None logged: set log_min_duration_statement (careflow_postgresql_parameters in "
                     "inventory/group_vars/all.yml).")
    lines += ["", "## Most time in total (normalised)", ""]
    if s["by_total_time"]:
        lines += ["| total ms | count | mean ms | max ms | statement |", "|---:|---:|---:|---:|---|"]
        lines += [f"| {e['total_ms']} | {e['count']} | {e['mean_ms']} | {e['max_ms']} | `{_cell(e['query'])}` |"
                  for e in s["by_total_time"]]
    else:
        lines.append("None.")
    lines += ["", "Literals are replaced by `?`: logged statements can carry owners' names, phone numbers or a "
              "password.", "", "## Files", "", "- `pgbadger.html`: pgbadger's full report (open in a browser)",
              "- `report.json`: this summary", ""]
    return "\n".join(lines)


def write_report(source: LogSource, out_dir: Path | None = None, *, limit: int = 10,
                 log: Callable[[str], None] = lambda _: None) -> tuple[Path, dict[str, Any]]:
    """Collect logs, run pgbadger, write report.md + report.json next to its HTML; return (folder, report)."""
    with tempfile.TemporaryDirectory(prefix="careflow-pgbadger-") as tmp:
        logs = source.collect(Path(tmp) / "logs")  # bad input fails before the report folder exists
        folder = report_folder(out_dir or REPORTS_DIR)
        log(f"queries: pgbadger over {len(logs)} log file(s)")
        js = Path(tmp) / "pgbadger.json"
        run_pgbadger(logs, folder / "pgbadger.html", js)
        try:
            badger = json.loads(js.read_text(errors="replace"))
        except ValueError as exc:
            raise CommandFailed(f"pgbadger wrote unreadable JSON ({exc})") from None
        names = [str(p.relative_to(tmp)) if p.is_relative_to(tmp) else str(p) for p in logs]
    report = {"generated_at": datetime.now(UTC).isoformat(timespec="seconds"), "source": source.describe(),
              "logs": names, "summary": summarise(badger, limit)}
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (folder / "report.md").write_text(render_markdown(report))
    return folder, report
