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


_HAMMER = """
import sys, tempfile
from pathlib import Path
from lightning_cnn.atomic import replace_folder
out, writer = Path(sys.argv[1]), sys.argv[2]
for round in range(300):
    new = Path(tempfile.mkdtemp(prefix=".new.", dir=out.parent))
    for name in ("a", "b"):
        (new / name).write_text(f"{writer} {round}")
    replace_folder(new, out)
"""


def test_folders_replaced_by_racing_processes_each_land_whole(tmp_path):
    """Four processes replacing one folder 300 times each, as fast as they can (the replacements overlap many
    times): none fails, whenever the folder is there it holds one writer's two files, nothing is left beside it."""
    import subprocess
    import sys

    out = tmp_path / "out"
    writers = [subprocess.Popen([sys.executable, "-c", _HAMMER, str(out), str(i)], stderr=subprocess.PIPE,
                                text=True) for i in range(4)]
    looks = 0
    while any(w.poll() is None for w in writers):
        try:
            folder = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue  # not created yet
        try:
            texts = {open(os.open(name, os.O_RDONLY, dir_fd=folder)).read() for name in ("a", "b")}
            assert len(texts) == 1, texts  # one writer's round, never a mix
            looks += 1
        except FileNotFoundError:
            pass  # this handle's folder was swapped out and deleted while being read: the next look is newer
        finally:
            os.close(folder)
    for writer in writers:
        assert writer.returncode == 0, writer.stderr.read()[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"] and looks
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
