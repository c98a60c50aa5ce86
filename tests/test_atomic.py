"""Atomic writes: all or nothing, and the permissions a plain write would give (not mkstemp's private 0600)."""

from __future__ import annotations

import os
import stat

import pytest

from lightning_cnn.atomic import atomic_path, write_text


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.md"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_a_new_file_gets_the_umask_permissions_of_a_plain_write(tmp_path):
    old_umask = os.umask(0o022)
    try:
        write_text(tmp_path / "atomic.md", "x")
        (tmp_path / "plain.md").write_text("x")
    finally:
        os.umask(old_umask)
    assert _mode(tmp_path / "atomic.md") == _mode(tmp_path / "plain.md") == 0o644


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    target = tmp_path / "metrics.csv"
    target.write_text("old")
    target.chmod(0o640)
    write_text(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o640
