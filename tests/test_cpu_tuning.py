"""CPU run settings: freed activations are reused, not page-faulted in again; CUDA is not re-probed every step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_cnn.callbacks import CPUTuning
from lightning_cnn.cpu_tuning import NVML_CUDA_CHECK

# A training step's pattern: activations of several sizes are allocated, filled and freed, step after step; one
# (40 MiB) is over the 32 MiB up to which glibc's own heuristics ever reuse memory. Prints the page faults of 20
# steps after 5 uncounted ones. SETUP runs first, in a fresh process, since the setting is process-wide.
PROBE = """
import resource, torch
{setup}
def step():
    activations = [torch.ones(mib * 2**18) for mib in (24, 40)]  # float32: 2**18 values per MiB
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
FIT_ONE_CPU_STEP = "from tests.test_cpu_tuning import fit_one_cpu_step\nfit_one_cpu_step()"
REPO = Path(__file__).resolve().parents[1]


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
              enable_model_summary=False, callbacks=[CPUTuning(), *callbacks]).fit(Tiny(), data)


def page_faults(setup: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_activations_are_reused_without_page_faults():
    pages = 20 * 40 * 2**20 // 4096  # what 20 fresh 40 MiB buffers fault in: 204,800 pages of 4 KiB
    default = page_faults("")
    applied = page_faults("from lightning_cnn.cpu_tuning import retain_freed_memory\n"
                          "assert retain_freed_memory()")
    through_trainer = page_faults(FIT_ONE_CPU_STEP)
    # glibc's default maps and unmaps the large buffer every step: each of its pages faults again (the probe can tell).
    assert default > 0.9 * pages, default
    # Retained: the same memory is reused; a few hundred faults of slack for the interpreter's own allocations.
    assert applied < 0.01 * pages, applied
    assert through_trainer < 0.01 * pages, through_trainer


def test_cuda_is_not_reprobed_during_a_cpu_run_and_lightnings_setting_comes_back():
    seen = []

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(os.environ.get(NVML_CUDA_CHECK))

    assert os.environ.get(NVML_CUDA_CHECK) == "1"  # what ``import lightning`` set
    fit_one_cpu_step(Probe())
    assert seen == [None]  # torch's default check, cached after its first answer, while the run steps
    assert os.environ.get(NVML_CUDA_CHECK) == "1"
