"""Run the ``careflow-ha`` CLI in-process, exactly as the console script does."""

from __future__ import annotations

import contextlib
import io
from typing import NamedTuple


class CliResult(NamedTuple):
    """Exit code and captured output; unpacks as ``code, out, err``."""

    code: int
    out: str
    err: str


def run_cli(*argv: str) -> CliResult:
    """Call ``careflow_ha.cli.main`` with ``argv``; its SystemExit becomes the exit code."""
    from careflow_ha.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return CliResult(code, out.getvalue(), err.getvalue())
