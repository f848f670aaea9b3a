"""pgBackRest and its neighbours on the lab's hosts, over the lab's SSH (``.lab/ssh_config``).

``SshRunner`` has ``LocalRunner``'s signature, so ``operations`` runs the same code against the repository
host (backup1) as the loopback tests run against a tmp repository. Every command runs as the database's OS
user on the far side (``runuser``), so the repository never gets a root-owned file.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from careflow_ha.backup.commands import Result, command_word, last_error
from careflow_ha.backup.operations import PG_BIN
from careflow_ha.errors import CommandFailed, NotReady
from careflow_ha.lab.ssh import ssh_argv
from careflow_ha.settings import Settings

#: ssh's own exit code for "could not connect" (the far command never ran).
SSH_FAILED = 255


@dataclass(frozen=True)
class SshRunner:
    """Runs argv on ``node`` as ``user``; ``on_line`` gets each output line as it comes (progress)."""

    settings: Settings
    node: str
    user: str = "postgres"

    def argv(self, argv: Sequence[str]) -> list[str]:
        far = list(argv) if self.user == "root" else ["runuser", "-u", self.user, "--", *argv]
        # ssh joins its arguments into one shell command line on the far side: quote them once, here.
        return ssh_argv(self.settings, self.node, shlex.join(far))

    def __call__(self, argv: Sequence[str], timeout: float = 600, check: bool = True,
                 on_line: Callable[[str], None] | None = None) -> Result:
        cmd = self.argv(argv)
        if on_line is None:
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                                      stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise NotReady(f"{_what(argv)} on {self.node} did not finish within {timeout:.0f}s") from None
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        else:
            code, out, err = _streamed(cmd, timeout, on_line, f"{_what(argv)} on {self.node}")
        if code == SSH_FAILED:
            raise NotReady(f"cannot reach {self.node} over SSH ({err.strip().splitlines()[-1:] or ['no output']}); "
                           "is the lab up? (careflow-ha lab up)")
        result = Result(tuple(argv), code, out, err)
        if check and code != 0:
            raise CommandFailed(f"{_what(argv)} on {self.node} failed ({code}): {last_error(result)}")
        return result


def _what(argv: Sequence[str]) -> str:
    name = argv[0].rsplit("/", 1)[-1]
    return f"pgbackrest {command_word(argv)}" if name == "pgbackrest" else name


def _streamed(cmd: list[str], timeout: float, on_line: Callable[[str], None], what: str) -> tuple[int, str, str]:
    """Run ``cmd``, handing each stdout line to ``on_line``; killed at ``timeout`` (NotReady)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    timer = threading.Timer(timeout, proc.kill)
    timer.daemon = True
    timer.start()
    lines: list[str] = []
    started = time.monotonic()
    try:
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:  # ends when the process closes stdout (exit or kill)
            lines.append(line)
            on_line(line.rstrip("\n"))
        err = proc.stderr.read()
        code = proc.wait()
    finally:
        timer.cancel()
    if time.monotonic() - started >= timeout and code < 0:
        raise NotReady(f"{what} did not finish within {timeout:.0f}s")
    return code, "".join(lines), err


def remote_wal_reader(runner: SshRunner, stanza: str, pg_bin: str = str(PG_BIN)) -> Callable[[str], str | None]:
    """``operations.WalReader`` on a database node: archive-get one segment into a temporary directory there
    and read it with the node's pg_waldump (the repository host has no PostgreSQL binaries)."""

    def read(segment: str) -> str | None:
        script = (
            'd=$(mktemp -d) && trap \'rm -rf "$d"\' EXIT && '
            f"pgbackrest --stanza={shlex.quote(stanza)} archive-get --no-archive-async {shlex.quote(segment)} "
            f'"$d/{segment}" >/dev/null 2>&1 || exit 3; '
            f'TZ=UTC {shlex.quote(pg_bin)}/pg_waldump --rmgr=Transaction --path="$d" {shlex.quote(segment)} '
            "2>/dev/null; "
            "exit 0"
        )
        got = runner(["sh", "-c", script], timeout=120, check=False)
        return None if got.returncode != 0 else got.stdout

    return read
