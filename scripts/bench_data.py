"""Does the folder loader keep a CPU training step fed? images/s of training steps fed by ``--data FOLDER``
(PNG files decoded by DataLoader workers) vs the same images from memory (``InMemoryLoader``), same model, batch
and sample order.

    python scripts/bench_data.py [--images 1024] [--rounds 5] [--workers N] [--model cifar10_cnn] [--out FILE.md]

Writes N real CIFAR-10 training images as PNGs into a temporary class-subfolder tree, then alternates the two
contenders in one process (the order flips every round), one epoch each per round, after one warm-up epoch each
(the workers start there). Prints the median images/s of each and the median of the per-round ratios
folder/memory; also the folder loader's decode rate alone (no training step), the headroom it has.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lightning_cnn.data import load_dataset
from lightning_cnn.datamodule import InMemoryLoader
from lightning_cnn.nets.models import build_model
from lightning_cnn.specs import get_spec
from lightning_cnn.user_data.datamodule import UserDataModule
from lightning_cnn.user_data.loaders import default_workers
from lightning_cnn.user_data.model_inputs import ModelInputs


def write_pngs(root: Path, n: int) -> None:
    (x, y), _ = load_dataset("cifar10", allow_partial_test=True)
    for i in range(n):
        folder = root / f"class_{int(y[i, 0])}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(folder / f"{i:05d}.png")


def epoch_rate(loader, model, optimizer, train: bool = True) -> float:
    """images/s of one epoch of training steps (or, with ``train=False``, of just drawing the batches)."""
    seen, started = 0, time.perf_counter()
    for x, y in loader:
        if train:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        seen += len(y)
    return seen / (time.perf_counter() - started)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=default_workers())
    p.add_argument("--model", default="cifar10_cnn", help="a documented model; the CIFAR-10 PNGs are converted to "
                   "its input (grayscale 28x28 for an MNIST model)")
    p.add_argument("--out", help="also write the result as Markdown here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    spec = get_spec(args.model)
    model = build_model(spec.id)
    optimizer = torch.optim.Adam(model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        write_pngs(Path(tmp), args.images)
        folder = UserDataModule(tmp, ModelInputs.of_spec(spec), batch_size=args.batch_size, workers=args.workers)
        streamed = folder.train_dataloader()
        everything = [b for b in folder.loader("train", train=False)]
        memory = InMemoryLoader(torch.cat([b[0] for b in everything]), torch.cat([b[1] for b in everything]),
                                args.batch_size, shuffle=True, seed=0)
        contenders = {"memory": memory, "folder": streamed}
        rates = {name: [] for name in contenders}
        for name, loader in contenders.items():  # warm-up: allocator, oneDNN kernels, worker start
            epoch_rate(loader, model, optimizer)
        for round_ in range(args.rounds):
            order = list(contenders) if round_ % 2 == 0 else list(contenders)[::-1]
            for name in order:
                contenders[name].sampler.set_epoch(round_ + 1)
                rates[name].append(epoch_rate(contenders[name], model, optimizer))
        decode = statistics.median(epoch_rate(streamed, None, None, train=False) for _ in range(3))
    ratios = [f / m for f, m in zip(rates["folder"], rates["memory"])]
    lines = [
        f"model {spec.id}, batch {args.batch_size}, {args.images} real CIFAR-10 images (PNG), "
        f"{args.workers} worker(s), {args.rounds} interleaved rounds",
        f"in-memory loader: {statistics.median(rates['memory']):,.0f} images/s (median)",
        f"folder loader:    {statistics.median(rates['folder']):,.0f} images/s (median)",
        f"folder / memory:  {statistics.median(ratios):.2f}x (median of per-round ratios "
        f"{', '.join(f'{r:.2f}' for r in ratios)})",
        f"folder loader alone (decode only, no step): {decode:,.0f} images/s",
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}",
    ]
    print("\n".join(lines))
    if args.out:
        from lightning_cnn.atomic import write_text

        command = " ".join(["python", "scripts/bench_data.py", *(argv if argv is not None else sys.argv[1:])])
        write_text(args.out, "# Folder loader vs in-memory loader\n\n`" + command + "`\n\n"
                   + "\n".join(f"- {line}" for line in lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
