"""The Lightning side of the CPU process settings in ``cpu_tuning``: a callback that holds them for one run."""

from __future__ import annotations

import os
from contextlib import ExitStack

import lightning as L
from lightning.pytorch.accelerators import CPUAccelerator

from .cpu_tuning import NVML_CUDA_CHECK, freed_memory_retained


class CPUTuning(L.Callback):
    """On a CPU run, in every process: keeps freed memory, and uses torch's cached CUDA check.

    See ``cpu_tuning``: both save page faults or library loads that would otherwise recur on every step. What this
    callback changed is put back when the run ends, by teardown or by an exception; what was already so before the
    run (e.g. memory retained by the caller) is left as it was.
    """

    def __init__(self):
        self._memory = ExitStack()  # holds freed_memory_retained() for the run
        self._nvml_check: str | None = None

    def setup(self, trainer, pl_module, stage):
        if isinstance(trainer.accelerator, CPUAccelerator):
            self._memory.enter_context(freed_memory_retained())
            self._nvml_check = os.environ.pop(NVML_CUDA_CHECK, None)

    def teardown(self, trainer, pl_module, stage):
        self._restore()

    def on_exception(self, trainer, pl_module, exception):
        self._restore()  # Lightning calls no teardown hook when a run fails

    def _restore(self):
        if self._nvml_check is not None:
            os.environ[NVML_CUDA_CHECK] = self._nvml_check
            self._nvml_check = None
        self._memory.close()
