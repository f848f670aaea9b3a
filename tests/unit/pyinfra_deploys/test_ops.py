"""The custom pyinfra operations, executed for real on this machine (pyinfra's @local connector).

No network and no lab: a file in tmp_path stands in for a config file, and
shell one-liners stand in for validators (``patroni --validate-config``,
``haproxy -c``).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
from pathlib import Path

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops

from careflow_ha.pyinfra_deploys.ops import validated_file, wait_until_ok

#: Owner and group of the files: whoever runs the tests (root on the nodes and in CI).
USER = pwd.getpwuid(os.geteuid()).pw_name
GROUP = grp.getgrgid(os.getegid()).gr_name


def run_local(op, **kwargs) -> str:
    """Run one operation on @local; return 'changed', 'unchanged' or 'failed'."""
    state = State(Inventory((["@local"], {})), Config(), check_for_changes=False)
    connect_all(state)
    meta = next(iter(add_op(state, op, name="under test", **kwargs).values()))
    with contextlib.suppress(PyinfraError):  # "No hosts remaining!" once the only host failed
        run_ops(state)
    if not meta.is_complete() or meta.did_error():
        return "failed"
    return "changed" if meta.did_change() else "unchanged"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "app.cfg"
    path.write_text("old = 1\n")
    path.chmod(0o600)
    return path


def put(path: Path, content: str, validate: str = "grep -q '^valid' %s") -> str:
    return run_local(validated_file, content=content, dest=str(path), validate=validate,
                     user=USER, group=GROUP, mode="600")


def test_a_rejected_config_never_replaces_the_live_one(config):
    assert put(config, "broken = 1\n") == "failed"
    assert config.read_text() == "old = 1\n"
    candidate = config.with_name("app.cfg.careflow-new")
    assert candidate.read_text() == "broken = 1\n"  # kept for inspection...
    assert candidate.stat().st_mode & 0o777 == 0o600  # ...as private as the real file


def test_an_accepted_config_goes_live_once(config):
    assert put(config, "valid = 1\n") == "changed"
    assert config.read_text() == "valid = 1\n"
    assert config.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in config.parent.iterdir()) == ["app.cfg"]
    assert put(config, "valid = 1\n") == "unchanged"  # the no-op case


def test_same_content_with_a_loose_mode_is_tightened_without_validation(config):
    assert put(config, "valid = 1\n") == "changed"
    config.chmod(0o644)
    assert put(config, "valid = 1\n", validate="false %s") == "changed"  # no new content: validator not needed
    assert config.stat().st_mode & 0o777 == 0o600


def test_a_missing_file_is_created_through_validation(tmp_path):
    path = tmp_path / "sub" / "new.cfg"
    assert put(path, "valid = 2\n") == "changed"
    assert path.read_text() == "valid = 2\n"


@pytest.mark.parametrize("command,outcome", [("true", "unchanged"), ("false", "failed")])
def test_a_wait_is_a_check_never_a_change(command, outcome):
    assert run_local(wait_until_ok, command=command, what="ready", retries=2, delay=0) == outcome
