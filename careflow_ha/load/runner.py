"""Run Locust headless against the EMR and turn the run into a report.

One run = one folder ``reports/load/<UTC timestamp>/`` holding Locust's CSV
and HTML, the per-request logs and our report. Locust runs as a child
process (it monkey-patches for gevent; this process must not be); everything
it needs comes through the environment, so ``--processes`` workers see it too.
Every wait is bounded: a Locust that overruns its duration is stopped.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import psycopg
from psycopg.conninfo import conninfo_to_dict

from careflow_ha.cluster.server_view import LEAD_S, ServerView, collect_lab
from careflow_ha.dsn import redact
from careflow_ha.errors import CommandFailed, EnvironmentProblem, UsageError, first_line
from careflow_ha.load import emr
from careflow_ha.load.analysis import read_requests
from careflow_ha.load.plans import collect as collect_plans
from careflow_ha.load.profiles import PROFILES, get_profile
from careflow_ha.load.report import write_report
from careflow_ha.settings import PROJECT_DIR, Settings

LOCUSTFILE = PROJECT_DIR / "loadtests" / "locustfile.py"
Progress = Callable[[str], None]
MAX_USERS = 5000
MAX_DURATION_S = 6 * 3600
MAX_PROCESSES = 16
MAX_PLANS = len(emr.STATEMENTS) + len(emr.NOT_EXPLAINED)  # every EMR operation


@dataclass(frozen=True)
class LoadConfig:
    """What to run. DSNs carry passwords: they go to Locust's environment only, never to a file."""

    users: int
    spawn_rate: float
    duration_s: float
    dsn_rw: str = field(repr=False)
    dsn_ro: str = field(repr=False)
    reports_dir: Path
    profile: str = "steady"
    processes: int = 1
    think_scale: float = 1.0
    #: The lab cluster (Patroni poller for role changes, node names, read-routing check); None for a plain server.
    cluster: Settings | None = field(default=None, repr=False)
    node_names: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    stop_timeout_s: float = 5.0
    progress_every_s: float = 5.0
    #: How many of the slowest operations the report plans afterwards (load/plans.py); 0: none.
    plans: int = 0

    def validated(self) -> LoadConfig:
        """Check the numbers early, naming the fix."""
        if not 1 <= self.users <= MAX_USERS:
            raise UsageError(f"--users {self.users} is out of range; use 1 to {MAX_USERS}")
        if not 0 < self.spawn_rate <= 1000:
            raise UsageError(f"--spawn-rate {self.spawn_rate} is out of range; use a rate above 0 and up to 1000")
        if not 1 <= self.duration_s <= MAX_DURATION_S:
            raise UsageError(f"--duration {self.duration_s:g}s is out of range; use 1s to {MAX_DURATION_S // 3600}h")
        if not 1 <= self.processes <= MAX_PROCESSES:
            raise UsageError(f"--processes {self.processes} is out of range; use 1 to {MAX_PROCESSES}")
        if not 0 <= self.think_scale <= 100:
            raise UsageError(f"--think-scale {self.think_scale} is out of range; use 0 (no think time) to 100")
        if not 0 <= self.plans <= MAX_PLANS:
            raise UsageError(f"--plans {self.plans} is out of range; use 0 (none) to {MAX_PLANS}")
        get_profile(self.profile)
        for flag, dsn in (("--dsn-rw", self.dsn_rw), ("--dsn-ro", self.dsn_ro)):
            try:
                conninfo_to_dict(dsn)
            except psycopg.ProgrammingError:
                raise UsageError(f"{flag} is not a libpq DSN; use postgresql://user:pass@host:port/db") from None
        return self


def parse_duration(raw: str) -> float:
    """``90``, ``90s``, ``5m``, ``1h30m`` -> seconds; anything else is a UsageError naming the format."""
    text = raw.strip().lower()
    units = {"h": 3600, "m": 60, "s": 1}
    total, num = 0.0, ""
    try:
        if text and text.replace(".", "", 1).isdigit():
            return float(text)
        for ch in text:
            if ch.isdigit() or ch == ".":
                num += ch
            elif ch in units and num:
                total += float(num) * units[ch]
                num = ""
            else:
                raise ValueError
        if num or not text:
            raise ValueError
    except ValueError:
        raise UsageError(f"--duration {raw!r} is not a duration; use seconds or e.g. 90s, 5m, 1h30m") from None
    return total


def passwords(*dsns: str) -> list[str]:
    out = []
    for dsn in dsns:
        with contextlib.suppress(psycopg.ProgrammingError):
            if pw := conninfo_to_dict(dsn).get("password"):
                out.append(str(pw))
    return out


def run_folder(reports_dir: Path, started: float) -> Path:
    base = reports_dir / "load"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    for n in range(100):
        folder = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise EnvironmentProblem(f"cannot create a run folder under {base}; remove old runs")


def check_targets(cfg: LoadConfig) -> None:
    """Fail before Locust starts if the data is missing or a server is unreachable."""
    for flag, dsn in (("read-write", cfg.dsn_rw), ("read-only", cfg.dsn_ro)):
        try:
            emr.load_ids(dsn, sample=10)
        except emr.NoData as exc:
            raise EnvironmentProblem(f"{exc} (at {redact(dsn)})") from None
        except psycopg.Error as exc:
            first = first_line(exc)
            raise EnvironmentProblem(f"cannot reach the {flag} target {redact(dsn)}: {first}") from None


class _CpuMeter:
    """CPU seconds used by Locust and its worker processes (sampled while they live)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._root = psutil.Process(pid)
        self._seen: dict[int, float] = {}

    def sample(self) -> None:
        import psutil

        try:
            procs = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                self._seen[p.pid] = max(self._seen.get(p.pid, 0.0), t.user + t.system)

    @property
    def seconds(self) -> float:
        return sum(self._seen.values())


@dataclass
class LoadResult:
    folder: Path
    report: dict
    exit_code: int


class LoadRun:
    """One Locust run: ``start()``, then ``wait()`` (or ``stop()`` early), then ``finish()`` for the report."""

    def __init__(self, cfg: LoadConfig, progress: Progress = lambda _: None) -> None:
        self.cfg = cfg.validated()
        self.say = progress
        self.folder: Path | None = None
        #: Set by :func:`background` once the report is written.
        self.result: LoadResult | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.poller = None
        self.node_names = dict(cfg.node_names)
        self._cpu: _CpuMeter | None = None
        self._log_fh = None
        self._last_progress = 0.0

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> Path:
        cfg = self.cfg
        check_targets(cfg)
        if cfg.cluster is not None:
            self._start_cluster_watch(cfg.cluster)
        self.started = time.time()
        self.folder = run_folder(cfg.reports_dir, self.started)
        env = {
            **os.environ,
            "CAREFLOW_LOAD_DSN_RW": cfg.dsn_rw,
            "CAREFLOW_LOAD_DSN_RO": cfg.dsn_ro,
            "CAREFLOW_LOAD_RUN_DIR": str(self.folder),
            "CAREFLOW_LOAD_PROFILE": cfg.profile,
            "CAREFLOW_LOAD_THINK_SCALE": str(cfg.think_scale),
            "CAREFLOW_LOAD_NODES": ",".join(f"{a}={n}" for a, n in self.node_names.items()),
        }
        cmd = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "-u", str(cfg.users), "-r", f"{cfg.spawn_rate:g}", "-t", f"{math.ceil(cfg.duration_s)}s",
            "--stop-timeout", f"{cfg.stop_timeout_s:g}",
            "--csv", str(self.folder / "locust"), "--csv-full-history", "--html", str(self.folder / "locust.html"),
            "--only-summary", "--loglevel", "INFO",
        ]
        if cfg.processes > 1:
            cmd += ["--processes", str(cfg.processes)]
        self._log_fh = (self.folder / "locust.log").open("wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log_fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, cwd=PROJECT_DIR)
        self._cpu = _CpuMeter(self.proc.pid)
        self.say(f"load: Locust started ({cfg.users} users, profile {cfg.profile}, {cfg.duration_s:g} s, "
                 f"{cfg.processes} process(es)) -> {self.folder}")
        return self.folder

    def _start_cluster_watch(self, settings: Settings) -> None:
        from careflow_ha.cluster.nodes import node_addresses
        from careflow_ha.cluster.patroni import PatroniApi
        from careflow_ha.cluster.watch import ClusterPoller
        from careflow_ha.settings import PG_NODES

        if not self.node_names:
            self.node_names = node_addresses({n: settings.node_dsn(n) for n in PG_NODES})
        bound = self.cfg.duration_s + self.cfg.stop_timeout_s + 180
        self.poller = ClusterPoller(PatroniApi(settings).cluster, interval_s=1.0, max_seconds=bound,
                                    on_change=lambda line: self.say(f"cluster: {line}"))
        self.poller.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tick(self) -> None:
        """Sample CPU; print a progress line every ``progress_every_s``."""
        if self._cpu is not None:
            self._cpu.sample()
        now = time.monotonic()
        if now - self._last_progress >= self.cfg.progress_every_s:
            self._last_progress = now
            line = self._progress_line()
            if line:
                self.say(line)

    def _progress_line(self) -> str | None:
        assert self.folder is not None
        path = self.folder / "locust_stats_history.csv"
        try:
            with path.open(newline="") as fh:
                last = None
                for row in csv.DictReader(fh):
                    if row.get("Name") == "Aggregated":
                        last = row
        except OSError:
            return None
        if not last:
            return None
        elapsed = time.time() - self.started
        return (f"load: {elapsed:4.0f}/{self.cfg.duration_s:g} s · {last['User Count']} users · "
                f"{float(last['Requests/s']):.1f} req/s · {float(last['Failures/s']):.1f} failed/s · "
                f"p95 {last['95%']} ms · total {last['Total Request Count']} ({last['Total Failure Count']} failed)")

    def wait(self, deadline_s: float | None = None) -> int:
        """Wait for Locust to end by itself (bounded: duration + stop timeout + a margin), then return its code."""
        assert self.proc is not None
        limit = time.monotonic() + (deadline_s if deadline_s is not None
                                    else self.cfg.duration_s + self.cfg.stop_timeout_s + 60)
        while self.running() and time.monotonic() < limit:
            self.tick()
            time.sleep(0.5)
        if self.running():
            self.say("load: Locust overran its duration; stopping it")
            return self.stop()
        return self.proc.returncode

    def stop(self, grace_s: float | None = None) -> int:
        """Ask Locust to stop now; it still writes its CSV and HTML. Escalate if it does not end.

        SIGINT, not SIGTERM: a headless run with a shape installs its SIGTERM
        handler only after the shape ends, but handles Ctrl+C at any time.
        """
        assert self.proc is not None
        grace = grace_s if grace_s is not None else self.cfg.stop_timeout_s + 30
        for sig, whole_group, wait_s in ((signal.SIGINT, False, grace), (signal.SIGTERM, True, 10.0),
                                         (signal.SIGKILL, True, 10.0)):
            if not self.running():
                break
            with contextlib.suppress(ProcessLookupError):
                if whole_group:
                    os.killpg(self.proc.pid, sig)
                else:
                    os.kill(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait_s)
        return self.proc.returncode

    def finish(self) -> LoadResult:
        """Stop the cluster watch and write the report (Locust must have ended)."""
        assert self.proc is not None and self.folder is not None
        code = self.proc.returncode if self.proc.returncode is not None else self.stop()
        finished = time.time()
        if self._log_fh is not None:
            self._log_fh.close()
        events: list[dict] = []
        events_note = ""
        if self.poller is not None:
            from careflow_ha.cluster.watch import role_change_events

            self.poller.stop()
            events = [{"at": e.at, "kind": e.kind, "detail": e.detail}
                      for e in role_change_events(self.poller.snapshots) if self.started - 5 <= e.at <= finished]
            if self.poller.missed:
                events_note = f"None seen ({self.poller.missed} polls of Patroni's /cluster got no answer)."
        elif self.cfg.cluster is None:
            events_note = "Not watched: the targets were given as DSNs, not the lab cluster."
        if code not in (0, 1):  # 1 = the run had failed requests: that is data, not a crash
            tail = (self.folder / "locust.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise CommandFailed(f"Locust exited with {code}: {' | '.join(tail)}")
        rows = read_requests(self.folder)
        cpu_s = self._cpu.seconds if self._cpu else 0.0
        cfg = self.cfg
        prof = PROFILES[cfg.profile]
        meta = {
            "run_id": self.folder.name,
            "started_at": self.started,
            "finished_at": finished,
            "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started)),
            "users": cfg.users, "spawn_rate": cfg.spawn_rate, "duration_s": cfg.duration_s,
            "profile": cfg.profile, "profile_description": prof.description, "shape": prof.shape,
            "weights": dict(prof.weights), "processes": cfg.processes, "think_scale": cfg.think_scale,
            "target_rw": redact(cfg.dsn_rw), "target_ro": redact(cfg.dsn_ro),
            "nodes": dict(self.node_names),
            "locust_exit_code": code,
            "locust_cpu_seconds": round(cpu_s, 2),
            "locust_cpu_cores": round(cpu_s / max(finished - self.started, 1e-9), 2),
            "host_cpus": os.cpu_count(),
            "check_routing": cfg.cluster is not None,
            "routing_note": (
                "HAProxy's read-only port has no fallback to the primary (roles/haproxy): a read answered by a "
                "primary there is a routing fault, except for the seconds around a role change."
                if cfg.cluster is not None else
                "Targets were given as DSNs: reads went where --dsn-ro points, so routing is not checked."),
            "events_note": events_note,
        }
        t0 = self.started
        t1 = max([finished, *[r.done for r in rows]]) if rows else finished
        server = (collect_lab(cfg.cluster, t0 - LEAD_S, t1) if cfg.cluster is not None
                  else ServerView(t0, t1, 1.0, unavailable="the targets were given as DSNs, not the lab cluster"))
        if server.note:
            self.say(f"load: {server.note}")
        # After Locust has ended, on the targets it used (they answered check_targets before the run).
        collector = functools.partial(collect_plans, dsn_rw=cfg.dsn_rw, dsn_ro=cfg.dsn_ro, n=cfg.plans,
                                      progress=self.say) if cfg.plans else None
        rep = write_report(self.folder, rows, meta, events, t0, t1,
                           secrets=passwords(cfg.dsn_rw, cfg.dsn_ro) + _lab_secrets(cfg.cluster), server=server,
                           plans=collector)
        self.say(f"load: report {self.folder / 'report.md'}")
        return LoadResult(self.folder, rep, code)


def _lab_secrets(settings: Settings | None) -> list[str]:
    return [] if settings is None else [v for v in settings.secrets.values() if v]


def run_load(cfg: LoadConfig, progress: Progress = lambda _: None) -> LoadResult:
    """Run Locust for ``cfg.duration_s`` and write the report; on Ctrl+C, stop Locust, report, then re-raise."""
    run = LoadRun(cfg, progress)
    run.start()
    interrupted = False
    try:
        run.wait()
    except KeyboardInterrupt:
        interrupted = True
        progress("load: interrupted; stopping Locust and writing the report of what ran")
    finally:
        if run.running():
            run.stop()
    result = run.finish()
    if interrupted:
        raise KeyboardInterrupt
    return result


@contextlib.contextmanager
def background(cfg: LoadConfig, progress: Progress = lambda _: None) -> Iterator[LoadRun]:
    """Run Locust for as long as the block lasts (``cfg.duration_s`` is only the upper bound); then report."""
    import threading

    run = LoadRun(cfg, progress)
    run.start()
    halt = threading.Event()

    def ticker() -> None:
        while not halt.wait(0.5) and run.running():
            run.tick()

    thread = threading.Thread(target=ticker, name="load-progress", daemon=True)
    thread.start()
    try:
        yield run
    finally:
        halt.set()
        thread.join(5)
        run.tick()
        run.stop()
        try:
            run.result = run.finish()  # the caller reads it after the block (a drill counts failed requests)
        except Exception as exc:  # noqa: BLE001 - a report problem must not hide what the block raised
            progress(f"load: report failed: {exc}")
