"""``careflow-ha test``'s pytest command line: the whole tree by default, only the named paths when given."""

from __future__ import annotations

from careflow_ha.cli.lab import pytest_argv, pytest_environment
from tests.cli import run_cli


def test_no_arguments_run_the_whole_tree():
    assert pytest_argv(False, ())[3:] == ["tests"]


def test_a_selection_by_keyword_still_runs_over_the_whole_tree():
    assert pytest_argv(False, ("-k", "tls_cluster"))[3:] == ["tests", "-k", "tls_cluster"]


def test_named_paths_replace_the_tree():
    args = ("tests/cluster/test_tls_cluster.py",
            "tests/unit/cli/test_test_command.py::test_no_arguments_run_the_whole_tree")
    assert pytest_argv(False, args)[3:] == list(args)


def test_quick_keeps_its_marker_filter():
    assert pytest_argv(True, ())[3:5] == ["tests", "-m"]


def test_long_selects_the_long_drill_suite_and_nothing_else_changes():
    assert pytest_environment(True, {"PATH": "/bin"}) == {
        "PATH": "/bin", "PYTHONUNBUFFERED": "1", "CAREFLOW_DRILL_SUITE": "long"}
    assert "CAREFLOW_DRILL_SUITE" not in pytest_environment(False, {"PATH": "/bin"})


def test_quick_and_long_together_is_a_usage_error_before_anything_runs():
    code, out, err = run_cli("test", "--quick", "--long")
    assert code == 2
    assert "give one of them" in err and "Traceback" not in err + out
