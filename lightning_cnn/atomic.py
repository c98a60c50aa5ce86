"""Write files so that a crash or a full disk never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it is renamed over ``path`` in one step.

    The temporary file is private (0600) while it is written; before the rename it gets the permissions the file
    would have had if written in place: those of the file it replaces, else 0666 less the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else _new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def replace_folder(new: str | os.PathLike, out: str | os.PathLike) -> None:
    """Put the complete folder ``new`` at ``out`` in one step and delete the folder it replaces.

    Where ``out`` exists the two are swapped (Linux's renameat2 RENAME_EXCHANGE), so a reader never finds ``out``
    missing or half-replaced; elsewhere the previous folder is first moved aside. Several processes replacing one
    ``out`` at once each land whole, the last to arrive stays: a try that loses a race to another writer retries.
    """
    new, out = Path(new), Path(out)
    while True:
        try:
            os.rename(new, out)  # no out yet (or an empty folder)
            return
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        swapped = _exchange(new, out)
        if swapped:
            shutil.rmtree(new, ignore_errors=True)  # it now holds the previous folder
            return
        if swapped is None:
            continue  # out went away in between: rename again
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        with contextlib.suppress(FileNotFoundError):
            os.rename(out, aside / out.name)
        try:
            os.rename(new, out)
            return
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        finally:
            shutil.rmtree(aside, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool | None:
    """Swap two paths atomically: True; None if ``b`` does not exist; False where the system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_cwd, rename_exchange = -100, 2  # AT_FDCWD (fcntl.h), RENAME_EXCHANGE (linux/fs.h)
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.ENOENT:
        return None
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # a file system or kernel without it
        return False
    raise OSError(code, os.strerror(code), str(b))
