"""The wheelhouse archive the nodes get: the same wheels always give the same bytes (so a provisioning
run with nothing new copies nothing), and it holds the wheels only."""

from __future__ import annotations

import os
import tarfile

from careflow_ha.lab.wheelhouse import ARCHIVE_NAME, write_archive


def _wheels(directory, names):
    for name in names:
        (directory / name).write_bytes(name.encode() * 100)


def test_the_same_wheels_give_a_byte_identical_archive_whatever_their_order_and_times(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    _wheels(first, ["a-1-py3-none-any.whl", "b-2-py3-none-any.whl"])
    _wheels(second, ["b-2-py3-none-any.whl", "a-1-py3-none-any.whl"])  # created in the other order
    os.utime(second / "a-1-py3-none-any.whl", (1, 1))
    (second / ".complete-abc").touch()  # the build stamp is not a wheel
    assert write_archive(first).read_bytes() == write_archive(second).read_bytes()


def test_the_archive_holds_every_wheel_and_nothing_else(tmp_path):
    _wheels(tmp_path, ["b-2-py3-none-any.whl", "a-1-py3-none-any.whl"])
    (tmp_path / ".complete-abc").touch()
    with tarfile.open(write_archive(tmp_path)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["a-1-py3-none-any.whl", "b-2-py3-none-any.whl"]
    assert {(m.uid, m.gid, m.mode) for m in members} == {(0, 0, 0o644)}
    assert not (tmp_path / f"{ARCHIVE_NAME}.partial").exists()


def test_a_changed_wheel_changes_the_archive(tmp_path):
    _wheels(tmp_path, ["a-1-py3-none-any.whl"])
    before = write_archive(tmp_path).read_bytes()
    (tmp_path / "a-1-py3-none-any.whl").write_bytes(b"another build")
    assert write_archive(tmp_path).read_bytes() != before
