"""Run settings checked before any work starts, each refusal a ``UsageError`` naming the flag and a value that works.

Lightning accepts some of these and does something else than asked (``max_epochs=-1`` trains forever, ``0``
trains nothing, ``16-mixed`` on a CPU runs in bfloat16 or fails deep inside), others fail late with a traceback.
"""

from __future__ import annotations

import os

import torch

from ..errors import UsageError


def _on_cpu(accelerator: str) -> bool:
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def check_epochs(epochs: int | None) -> None:
    if epochs is not None and epochs < 1:
        raise UsageError(f"--epochs {epochs}: train for 1 or more epochs (leave it out for the recipe's)")


def check_steps_per_execution(steps: int) -> None:
    if steps < 1:
        raise UsageError(f"--steps-per-execution {steps}: use 1 or more batches per step")


def check_precision(precision: str, accelerator: str) -> None:
    if precision.startswith("16") and _on_cpu(accelerator):
        raise UsageError(f"--precision {precision} needs a CUDA GPU (float16 autocast is a GPU feature); on this "
                         "CPU use --precision bf16-mixed or 32-true")


def check_devices(devices, accelerator: str) -> None:
    """A device count this machine has: CPU processes up to its cores, GPUs up to those CUDA sees."""
    if not str(devices).lstrip("-").isdigit():
        return  # "auto" or a list of ids: Lightning checks those and names the bad id
    count = int(devices)
    if count == -1:
        return  # Lightning's "all of them"
    if _on_cpu(accelerator):
        available, kind = os.cpu_count() or 1, "CPU cores (one process each)"
    else:
        available, kind = torch.cuda.device_count(), "CUDA GPUs"
    if not 1 <= count <= available:
        raise UsageError(f"--devices {devices}: this machine has {available} {kind}; use 1..{available}, "
                         "-1 for all, or auto")


# What a launcher that starts one process group across machines sets: torchrun, SLURM's srun, or by hand.
_MULTI_NODE_LAUNCH = ("TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "NODE_RANK")


def check_num_nodes(num_nodes: int) -> None:
    """Several nodes need a launcher on each of them; without one Lightning would wait for the others forever."""
    if num_nodes < 1:
        raise UsageError(f"--num-nodes {num_nodes}: use 1 or more machines")
    if num_nodes > 1 and not any(key in os.environ for key in _MULTI_NODE_LAUNCH):
        raise UsageError(f"--num-nodes {num_nodes} runs one process group across {num_nodes} machines: start the "
                         "command on each of them with torchrun or srun (docs/usage.md), or set NODE_RANK, "
                         "MASTER_ADDR and MASTER_PORT on each")


def check_batch_size(batch_size: int | None, train_size: int) -> None:
    """``train_size``: the images one epoch trains on (after the recipe's subset and validation split)."""
    if batch_size is None:
        return
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: use 1 or more images per batch")
    if batch_size > train_size:
        raise UsageError(f"--batch-size {batch_size} is larger than the {train_size:,} images this run trains on: "
                         f"use at most {train_size:,} (or more --train-images)")
