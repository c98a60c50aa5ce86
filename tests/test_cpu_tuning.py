"""CPU run settings: freed activations are reused, not page-faulted in again; CUDA is not re-probed every step;
both are put back when the run ends, normally or by an exception."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_cnn.speed import Speed
from lightning_cnn.speed.cpu_tuning import NVML_CUDA_CHECK, retaining_freed_memory

# A training step's pattern: activations of several sizes are allocated, filled and freed, step after step; one
# (40 MiB) is over the 32 MiB up to which glibc's own heuristics ever reuse memory. Each probe is a fresh process,
# since the setting is process-wide, and prints the page faults of 20 such steps (count_page_faults) before and
# after a change: glibc's default then the setting applied; during a CPU run then after it. After the run the
# probe's steps take one 96 MiB buffer, larger than all the run freed (64 MiB): the 24 and 40 MiB buffers freed
# during the run stay free chunks in the heap wherever something allocated later sits above them, and glibc's
# default reuses such a chunk without mmap, so whether they fault again after the run depended on the heap's layout
# (seen: 0 faults in some processes, all in others).
APPLIED = """from tests.test_cpu_tuning import count_page_faults
from lightning_cnn.speed.cpu_tuning import retain_freed_memory
default = count_page_faults()
assert retain_freed_memory()
print(default, count_page_faults())"""
DURING_THEN_AFTER_A_CPU_RUN = """from tests.test_cpu_tuning import Probe, count_page_faults, fit_one_cpu_step
faults = []
fit_one_cpu_step(Probe(lambda: faults.append(count_page_faults())))
print(faults[0], count_page_faults(mib=(96,)))"""
# A prediction loop inside ``freed_memory_retained()`` (as lightning-cnn-predict runs), then after it; and a block
# entered while the setting was already held leaves it held.
IN_A_PREDICTION_BLOCK_THEN_AFTER = """from tests.test_cpu_tuning import count_page_faults
from lightning_cnn.speed.cpu_tuning import freed_memory_retained, retain_freed_memory, retaining_freed_memory
with freed_memory_retained():
    during = count_page_faults()
assert not retaining_freed_memory()
after = count_page_faults(mib=(96,))
assert retain_freed_memory()
with freed_memory_retained():
    pass
assert retaining_freed_memory()
print(during, after)"""
REPO = Path(__file__).resolve().parents[1]


def count_page_faults(mib: tuple[int, ...] = (24, 40)) -> int:
    """Page faults of 20 steps of the probe pattern (buffers of ``mib`` MiB), after 5 uncounted ones."""
    import resource

    def step():
        return [torch.ones(size * 2**18) for size in mib]  # float32: 2**18 values per MiB

    for _ in range(5):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


class Probe(L.Callback):
    """Calls ``look()`` after each training batch, i.e. while the run's settings hold."""

    def __init__(self, look):
        self.look = look

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.look()


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_one_cpu_step(*callbacks):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 2)), batch_size=4)
    L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[*Speed().trainer_callbacks("cpu"), *callbacks]).fit(Tiny(), data)


def page_faults(code: str) -> tuple[int, int]:
    """The two counts a probe prints, from a process of its own."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    first, second = done.stdout.split()[-2:]
    return int(first), int(second)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_activations_are_reused_without_page_faults():
    pages = 20 * 40 * 2**20 // 4096  # what 20 fresh 40 MiB buffers fault in: 204,800 pages of 4 KiB
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # each count is its own process's (RUSAGE_SELF)
        probes = pool.map(page_faults, [APPLIED, DURING_THEN_AFTER_A_CPU_RUN])
        (default, applied), (during_a_run, after_a_run) = probes
    # glibc's default maps and unmaps the large buffer every step: each of its pages faults again (the probe can tell).
    assert default > 0.9 * pages, default
    # Retained: the same memory is reused; a few hundred faults of slack for the interpreter's own allocations.
    assert applied < 0.01 * pages, applied
    assert during_a_run < 0.01 * pages, during_a_run
    # glibc's default is back once the run is over: the 96 MiB buffer is mapped and unmapped again every step.
    assert after_a_run > 0.9 * 20 * 96 * 2**20 // 4096, after_a_run


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_prediction_block_holds_the_setting_only_while_it_runs():
    during, after = page_faults(IN_A_PREDICTION_BLOCK_THEN_AFTER)
    assert during < 0.01 * 20 * 40 * 2**20 // 4096, during  # as in the test above
    assert after > 0.9 * 20 * 96 * 2**20 // 4096, after


def test_cuda_is_not_reprobed_during_a_cpu_run_and_lightnings_setting_comes_back():
    seen = []
    assert os.environ.get(NVML_CUDA_CHECK) == "1"  # what ``import lightning`` set
    fit_one_cpu_step(Probe(lambda: seen.append((os.environ.get(NVML_CUDA_CHECK), retaining_freed_memory()))))
    # torch's default check, cached after its first answer, and retained memory while the run steps
    assert seen == [(None, sys.platform.startswith("linux"))]
    assert os.environ.get(NVML_CUDA_CHECK) == "1" and not retaining_freed_memory()


def test_a_failing_run_puts_the_settings_back():
    """Lightning calls no teardown hook when a run raises: the callback's ``on_exception`` restores instead."""
    seen = []

    def fail():
        seen.append((os.environ.get(NVML_CUDA_CHECK), retaining_freed_memory()))
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        fit_one_cpu_step(Probe(fail))
    assert seen == [(None, sys.platform.startswith("linux"))]
    assert os.environ.get(NVML_CUDA_CHECK) == "1" and not retaining_freed_memory()


def test_the_seam_switches_cpu_tuning_off_and_skips_it_off_the_cpu():
    assert Speed(cpu_tuning=False).trainer_callbacks("cpu") == []
    assert Speed().trainer_callbacks("gpu") == []
    assert len(Speed().trainer_callbacks("auto")) == 1
