"""The command lines: argument parsing, printing, JSON files and exit codes over the library API.

Each module's ``main(argv=None) -> int`` is what ``python scripts/<name>.py`` and the ``[project.scripts]`` entry
points run; an error a user can fix (``lightning_cnn.errors.UserError``) becomes one ``error: ...`` line on stderr
and exit status 2. Modules that train the Keras side import ``keras_ref`` (TensorFlow) only when asked to.
"""

from __future__ import annotations

import logging
import sys


def show_library_messages() -> None:
    """Print the library's ``lightning_cnn`` log messages (model summary, weights used) on stdout, unadorned."""
    logger = logging.getLogger("lightning_cnn")
    if not any(getattr(h, "lightning_cnn_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.lightning_cnn_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
