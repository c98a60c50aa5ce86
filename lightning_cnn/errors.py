"""Errors a user can fix, and the one way every entry point shows them.

Anything a user can cause (a bad flag, a missing or corrupt file, an unknown model id, an unsupported Keras layer)
raises a subclass of ``UserError`` whose ``str()`` is one complete line naming the problem and the fix. Entry points
call ``exit_on_user_error(main)``: such an error becomes that line on stderr and exit status 2, no traceback
(``--debug`` or ``LIGHTNING_CNN_DEBUG=1`` shows it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence


class UserError(Exception):
    """A problem the user can fix; ``str(error)`` is the whole message."""


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
