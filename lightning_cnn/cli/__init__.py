"""The command lines: argument parsing, printing, JSON files and exit codes over the library API.

Each module's ``main(argv=None) -> int`` is what ``python scripts/<name>.py`` and the ``[project.scripts]`` entry
points run; an error a user can fix (``lightning_cnn.errors.UserError``) becomes one ``error: ...`` line on stderr
and exit status 2. Modules that train the Keras side import ``keras_ref`` (TensorFlow) only when asked to.
"""

from __future__ import annotations

import logging
import sys


class _CurrentStdout(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a message comes (a caller's redirect or capture), not to the
    stream of the first command run in the process, which may be closed by then."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def show_library_messages() -> None:
    """Print the library's ``lightning_cnn`` log messages (model summary, weights used) on stdout, unadorned."""
    logger = logging.getLogger("lightning_cnn")
    if not any(getattr(h, "lightning_cnn_cli", False) for h in logger.handlers):
        handler = _CurrentStdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.lightning_cnn_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
