"""``careflow-ha test``'s pytest command line: the whole tree by default, only the named paths when given."""

from __future__ import annotations

from careflow_ha.cli.lab import pytest_argv


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
