"""Process settings that make CPU training fast; ``speed.trainer.CPUTuning`` applies them for the length of a CPU run.

Keep freed memory: glibc serves large allocations (over 128 KiB, the threshold adapting up to 32 MiB) with fresh
``mmap`` pages and hands them back to the kernel on free, and returns the top of its heap once more than 128 KiB is
free there. PyTorch's CPU allocator caches nothing (unlike its CUDA one), so every step re-maps and re-faults its
activations: at batch 256 zeroing the 22 MB gradient of ``mnist_cnn_tf_tutorial``'s first max-pool took 4 ms of a
50 ms step, mostly page faults. Serving everything from a heap that is never trimmed makes that memory reused
instead; the price is that the process keeps its peak footprint while the setting holds. ``release_freed_memory``
puts glibc's default values back (its dynamic mmap threshold, which any ``mallopt`` call switches off, stays off).

Check for CUDA once: Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` on import, so that asking whether there is
a GPU does not initialise CUDA (which breaks ``fork``). Until CUDA is initialised, every ``torch.cuda.is_available()``
then loads and queries NVML anew, and torch's optimizers ask on every ``step()``: 0.2-0.5 ms of a 3 ms step of
``mnist_cnn_small`` here. A CPU run has chosen its device already, so for its length torch's default (cached) check
is used; on a machine with a GPU that initialises the CUDA driver, not a GPU context, in this process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's <malloc.h>
_NEVER = 2**31 - 1  # largest value mallopt takes (an int): trim only past 2 GiB of free heap top
# glibc's defaults, or what the process asked for through glibc's own environment variables.
_GLIBC_DEFAULTS = ((_M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", 128 * 1024), (_M_MMAP_MAX, "MALLOC_MMAP_MAX_", 65536))
NVML_CUDA_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"  # set to "1" by ``import lightning``
_retaining = False


def _mallopt():
    """glibc's ``mallopt``, or None off Linux or on a C library without it."""
    if not sys.platform.startswith("linux"):
        return None
    return getattr(ctypes.CDLL(None), "mallopt", None)  # the process's own C library


def retaining_freed_memory() -> bool:
    """Whether ``retain_freed_memory`` is in effect."""
    return _retaining


def retain_freed_memory() -> bool:
    """Tells glibc malloc to keep freed memory for reuse (no trimming, no per-allocation mmap); True if it applied.

    Process-wide and idempotent; imports no Lightning, so the plain-PyTorch benchmark loop can use it too.
    A no-op returning False off Linux or on a C library without ``mallopt``.
    """
    global _retaining
    mallopt = _mallopt()
    if not _retaining and mallopt is not None:
        _retaining = bool(mallopt(_M_TRIM_THRESHOLD, _NEVER)) and bool(mallopt(_M_MMAP_MAX, 0))
    return _retaining


@contextlib.contextmanager
def freed_memory_retained():
    """Holds ``retain_freed_memory`` for a block, e.g. a prediction loop, then puts glibc's settings back unless
    they were already held before it. TensorFlow pools its own CPU memory, so Keras's ``predict`` never pays these
    faults; a prepared copy at batch 32 (1 thread) ran 13-20% faster inside this block (VGG16 39 -> 46 img/s)."""
    retained_here = not retaining_freed_memory() and retain_freed_memory()
    try:
        yield
    finally:
        if retained_here:
            release_freed_memory()


def release_freed_memory() -> None:
    """Undoes ``retain_freed_memory``: glibc trims and maps large allocations with its default thresholds again."""
    global _retaining
    mallopt = _mallopt()
    if _retaining and mallopt is not None:
        for parameter, variable, default in _GLIBC_DEFAULTS:
            mallopt(parameter, int(os.environ.get(variable) or default))
    _retaining = False
