"""One writer per output folder: a run holds ``OUT/.lock`` for its length, so two runs never interleave files.

The lock is ``fcntl.flock`` on a file in the folder: the kernel drops it when the process ends, however it ends
(kill -9 included), so a crashed run never leaves a stale lock behind. While it holds the lock a run is the only
writer, so it also removes what a killed writer left: the temporary ``.NAME.*.part`` files of ``atomic.py``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from ..errors import OutputError, describe_write_error

LOCK_NAME = ".lock"


def _prepare(out: Path) -> None:
    """The folder exists and is writable, else a one-line OutputError saying so."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(describe_write_error(error, f"output folder {out}") or f"cannot create {out}: {error}")
    if not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder: choose a folder for the run's outputs")
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {out} is not writable: choose another --out, or make it writable "
                          f"(chmod u+w {out})")


def _remove_partial_files(out: Path) -> None:
    for folder in (out, out / "checkpoints"):
        for partial in folder.glob(".*.part"):
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()


@contextlib.contextmanager
def run_lock(out: str | os.PathLike):
    """Hold ``OUT/.lock`` while the block runs; another process holding it is an OutputError naming its pid."""
    out = Path(out)
    _prepare(out)
    path = out / LOCK_NAME
    try:
        handle = open(path, "a+")
    except OSError as error:
        raise OutputError(describe_write_error(error, str(path)) or f"cannot open {path}: {error}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise OutputError(
                f"output folder {out} is in use by another run ({holder}): wait for it to finish, or choose "
                "another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        _remove_partial_files(out)
        try:
            yield out
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
