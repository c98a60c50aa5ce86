"""Checkpoints written atomically beside their final name, so a kill or a full disk never leaves half of one.

Lightning's own ``TorchCheckpointIO`` writes through fsspec's transaction: into ``tempfile.mkstemp()`` (in
``$TMPDIR``) and then ``shutil.move`` to the checkpoint folder, which across file systems is a copy. A kill during
that copy leaves a half-written ``last.ckpt`` under its final name, and a kill or a full disk during the first
write leaves a checkpoint-sized orphan in ``$TMPDIR``. Here the bytes go to a temporary file in the checkpoint's own
folder (``atomic.atomic_path``), are flushed to disk, and take the final name in one ``os.replace``.
"""

from __future__ import annotations

import io
import os

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ..atomic import atomic_path
from ..errors import OutputError, describe_write_error


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are all-or-nothing; a full disk or refused write is an OutputError."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()  # torch.save reports a failed write as a RuntimeError; a plain write as OSError
        torch.save(checkpoint, buffer)
        try:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    f.write(buffer.getbuffer())
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as error:
            message = describe_write_error(error, f"checkpoint {path}")
            if message is None:
                raise
            raise OutputError(message) from None
