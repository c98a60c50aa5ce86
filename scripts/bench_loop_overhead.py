"""Per-step cost of plain PyTorch, Lightning, and Lightning without its loop tricks, in one process, interleaved.

``scripts/bench.py`` times each contender in its own process with the wall clock, which a machine shared with other
work throws off by tens of percent. This runs the three training loops on the same real images in one process,
alternating their order each round, with one torch thread, timed by the main thread's CPU time (time the process
waits for a core does not count), and prints each round's per-step milliseconds (25th percentile of the steps after
warm-up) and the Lightning/plain ratios. One thread makes the figures comparable under load, not equal to a 2-thread
run: read the ratios.

    python scripts/bench_loop_overhead.py --data-dir ../shared/data --model mnist_cnn_small --batch-size 32
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F

import lightning_cnn
from lightning_cnn.benchmark import torch_tensors, train_arrays
from lightning_cnn.datamodule import InMemoryLoader
from lightning_cnn.recipes.module import KerasRecipeModule
from lightning_cnn.recipes.optim import make_optimizer
from lightning_cnn.specs import get_spec
from lightning_cnn.speed import Speed
from lightning_cnn.speed.cpu_tuning import NVML_CUDA_CHECK, retain_freed_memory
from lightning_cnn.run.training import make_trainer

WITHOUT_LOOP_TRICKS = dataclasses.replace(Speed(), direct_step=False, lean_dispatch=False)


def step_ms(stamps: list[float]) -> float:
    steps = sorted(b - a for a, b in zip(stamps, stamps[1:]))[len(stamps) // 10:]
    return 1e3 * steps[len(steps) // 4]


def plain(spec, x, y, batch_size, steps):
    """``benchmark.bench_plain_torch``'s training loop (the same network from the speed seam, fused optimizer)."""
    torch.manual_seed(0)
    speed = Speed()
    model = lightning_cnn.build_model(spec.id, seed=0)
    speed.prepare_network(model)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], spec.recipe,
                               fused=speed.fused_optimizers)
    order = torch.randperm(len(x))
    stamps = [time.thread_time()]
    model.train()
    for start in range(0, steps * batch_size, batch_size):
        index = order[start:start + batch_size]
        loss = F.cross_entropy(model(x[index]).float(), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stamps.append(time.thread_time())
    return stamps


def lightning(spec, x, y, batch_size, steps, speed):
    """``benchmark.bench_lightning``'s training: KerasRecipeModule + InMemoryLoader under ``make_trainer``."""
    stamps = [time.thread_time()]

    class Stamp(L.Callback):
        def on_train_batch_end(self, *args):
            stamps.append(time.thread_time())

    L.seed_everything(0, verbose=False)
    module = KerasRecipeModule(spec.id, seed=0, speed=speed)
    trainer = make_trainer(accelerator="cpu", devices=1, max_steps=steps, callbacks=[Stamp()], speed=speed)
    trainer.fit(module, train_dataloaders=InMemoryLoader(x, y, batch_size, shuffle=True))
    return stamps


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--model", default="mnist_cnn_small")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(1)
    retain_freed_memory()
    os.environ.pop(NVML_CUDA_CHECK, None)  # as CPUTuning does for a Lightning run; the plain loop has no Lightning
    spec = get_spec(args.model)
    x, y, x_test = train_arrays(spec, args.data_dir, args.steps * args.batch_size)
    x, y, _ = torch_tensors(x, y, x_test[:1], torch.device("cpu"), channels_last=True)
    loops = {"plain": lambda: plain(spec, x, y, args.batch_size, args.steps),
             "lightning": lambda: lightning(spec, x, y, args.batch_size, args.steps, Speed()),
             "lightning_without_loop_tricks": lambda: lightning(spec, x, y, args.batch_size, args.steps,
                                                                WITHOUT_LOOP_TRICKS)}
    for run in loops.values():
        run()  # warm-up: first-call costs of every path
    ms = {name: [] for name in loops}
    names = list(loops)
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            ms[name].append(step_ms(loops[name]()))
    print(f"{args.model} batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds, 1 thread, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    for name, values in ms.items():
        ratios = [p / v for p, v in zip(ms["plain"], values)]
        print(f"  {name:30s} ms/step {' '.join(f'{v:.3f}' for v in values)}  plain/this median "
              f"{statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
