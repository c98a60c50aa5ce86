"""A training run leaves the process as it found it, however it ends.

Lightning changes process-wide state during ``fit`` and does not always put it back: ``seed_everything`` sets
``PL_GLOBAL_SEED`` and ``PL_SEED_WORKERS``, launchers set ``MASTER_ADDR``/``MASTER_PORT``/``LOCAL_RANK``, and on
Ctrl-C it ignores SIGINT from then on (``signal.signal(SIGINT, SIG_IGN)``) before ``sys.exit(1)``: a notebook or a
program that catches that exit would never see another Ctrl-C. ``preserved_process_state`` snapshots the
environment, the signal handlers of SIGINT and SIGTERM and torch's intra-op thread count, and restores them on the way out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import torch

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def preserved_process_state():
    environment = dict(os.environ)
    in_main_thread = threading.current_thread() is threading.main_thread()  # handlers are set there only
    handlers = {sig: signal.getsignal(sig) for sig in _SIGNALS} if in_main_thread else {}
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        for key in set(os.environ) - set(environment):
            del os.environ[key]
        os.environ.update({k: v for k, v in environment.items() if os.environ.get(k) != v})
        for sig, handler in handlers.items():
            if handler is not None and signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
