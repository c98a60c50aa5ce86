"""Errors a user can fix, and the one way every entry point shows them.

Anything a user can cause (a bad flag, a missing or corrupt file, an unknown model id, an unsupported Keras layer,
an output folder that is read-only, full or in use) raises a subclass of ``UserError`` whose ``str()`` is one
complete line naming the problem and the fix. Entry points call ``exit_on_user_error(main)``: such an error becomes
that line on stderr and exit status 2, no traceback (``--debug`` or ``LIGHTNING_CNN_DEBUG=1`` shows it). A full
disk or a refused write that surfaces as a plain ``OSError`` is shown the same way, naming the file; Ctrl-C is one
line too (what was kept, how to continue) and exit status 130.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Sequence


class UserError(Exception):
    """A problem the user can fix; ``str(error)`` is the whole message."""


class UsageError(ValueError, UserError):
    """A bad command-line choice or run setting (a flag value, a combination the machine cannot run)."""


class CheckpointError(ValueError, UserError):
    """A checkpoint that is missing, unreadable, of another model, or holds weights that cannot be used."""


class ConversionError(ValueError, UserError):
    """A Keras model (or one of its layers) the converter cannot reproduce; the message names the layer, its
    class, where it is and what to do (``keras_ref.parity.ParityError`` is this class)."""


class OutputError(UserError):
    """The output folder cannot be used: read-only, full, or in use by another run."""


# Write failures a user fixes by freeing space or choosing another folder, not by changing the code.
_WRITE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file size limit was reached",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def describe_write_error(error: OSError, what: str = "") -> str | None:
    """One line for a write that failed for a reason outside the program (full disk, read-only, no permission)."""
    reason = _WRITE_ERRNOS.get(error.errno)
    if reason is None:
        return None
    target = what or (f"{error.filename}" if error.filename else "a file")
    return (f"cannot write {target}: {reason} ({os.strerror(error.errno)}); free some space or choose a writable "
            "folder, then run again (files written atomically were left as they were)")


def exit_on_user_error(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; a ``UserError`` becomes ``error: <message>`` on stderr and exit status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("LIGHTNING_CNN_DEBUG") == "1"
    if "--debug" in args:
        args.remove("--debug")
    try:
        return int(main(args) or 0)
    except UserError as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        if debug:
            raise
        print(f"interrupted: {error}" if str(error) else "interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, what a shell reports for a program Ctrl-C stopped
    except OSError as error:
        message = describe_write_error(error)
        if debug or message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; ``str(error)`` says what was kept and how to continue."""


class DivergedError(UserError):
    """The training loss became NaN or infinite (``callbacks.TerminateOnNaN`` stopped the run)."""
