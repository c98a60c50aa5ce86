"""Measurements behind ``lightning-cnn-bench`` (``lightning_cnn.cli.bench``): one contender's training and
inference throughput in this process, and each training loop's own per-step cost.

``measure(settings)`` is one contender (``plain_torch``, ``lightning``, or ``keras`` through
``keras_ref.bench``) on one model, batch size and precision; the command line runs each in its own process and
renders the table. Throughput is images/s of steady-state training: after warm-up steps, the median of several
timed windows; inference is predict over the test images. On a GPU every timestamp waits for the device.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time


CONTENDERS = ("keras", "plain_torch", "lightning")


MEMORY_FORMATS = {"auto": None, "channels_last": True, "contiguous": False}


AUTOCAST_DTYPES = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}


def windows_rate(stamps: list[float], batch_size: int, warmup: int, window: int) -> float:
    """Median images/s over consecutive windows of ``window`` steps after ``warmup`` steps."""
    rates = [window * batch_size / (stamps[i + window] - stamps[i])
             for i in range(warmup, len(stamps) - window, window)]
    return statistics.median(rates)


def grouped_windows(stamps, batch_size, warmup, window, steps_per_execution):
    """``windows_rate`` for stamps taken once per group of ``steps_per_execution`` steps (warm-up and window in steps,
    whole groups: ``measure`` makes them multiples)."""
    k = steps_per_execution
    return windows_rate(stamps, batch_size * k, warmup // k, window // k)


def train_arrays(spec, data_dir, n):
    from lightning_cnn.data import load_dataset, preprocess

    (x, y), (x_test, _) = load_dataset(spec.dataset, data_dir, allow_partial_test=True)
    return preprocess(x[:n], spec.preprocessing), y[:n].reshape(-1).astype("int64"), \
        preprocess(x_test, spec.preprocessing)


def torch_tensors(x, y, x_test, device, channels_last=False):
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    as_nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).to(device).contiguous(memory_format=fmt)  # noqa: E731
    return as_nchw(x), torch.from_numpy(y).to(device), as_nchw(x_test)


def stamp(device) -> float:
    """A timestamp taken once the device has finished the work queued so far (CUDA runs asynchronously)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
    return time.perf_counter()


def predict_warmup(x_test, batch_size):
    """A full batch and the short last one: a compiled network specialises on both shapes before timing starts."""
    return x_test[:batch_size + len(x_test) % batch_size]


def timed_trainer(stamps: list[float], device, **settings):
    """A Trainer that appends a timestamp (synced with the device) to ``stamps`` after every training batch, with
    nothing else that costs time per step: ``make_trainer``'s settings (no logger, checkpointing, progress bar or
    summary), one device, one epoch."""
    import lightning as L

    from lightning_cnn.run.training import make_trainer

    class Stamp(L.Callback):
        def on_train_batch_end(self, *args):
            stamps.append(stamp(device))

    return make_trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=1,
                        callbacks=[Stamp()], **settings)


def bench_plain_torch(spec, x, y, x_test, batch_size, precision, steps, warmup, window, steps_per_execution,
                      channels_last, device, compiled):
    """The loop a PyTorch user writes by hand: slices of in-memory tensors, the recipe's optimizer, no framework.
    ``steps_per_execution`` is not used: the loop has no per-call overhead to spread over several steps."""
    import torch
    import torch.nn.functional as F

    import lightning_cnn
    from lightning_cnn.recipes.optim import make_optimizer
    from lightning_cnn.speed import Speed
    from lightning_cnn.speed.cpu_tuning import retain_freed_memory

    # No Lightning in this process (importing it makes torch re-probe CUDA on every optimizer step, see
    # speed/cpu_tuning.py), but the allocator setting that Lightning CPU runs get from CPUTuning, so the ratio
    # measures the framework only.
    assert "lightning" not in sys.modules
    retain_freed_memory()
    torch.manual_seed(0)
    # The same network, made by the same speed seam, that KerasRecipeModule trains: the ratio measures the framework.
    speed = Speed() if channels_last is None else Speed(channels_last=channels_last)
    model = lightning_cnn.build_model(spec.id, seed=0)
    memory_format = speed.prepare_network(model)
    model = model.to(device)
    xt, yt, xt_test = torch_tensors(x, y, x_test, device, memory_format == torch.channels_last)
    if compiled:
        model.compile()
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], spec.recipe,
                               fused=speed.fused_optimizers)
    autocast = torch.autocast(device.type, dtype=getattr(torch, AUTOCAST_DTYPES.get(precision, "bfloat16")),
                              enabled=precision in AUTOCAST_DTYPES)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")  # float16 needs loss scaling
    stamps = [stamp(device)]
    order = torch.randperm(len(xt), device=device)
    model.train()
    for start in range(0, steps * batch_size, batch_size):
        index = order[start:start + batch_size]
        with autocast:
            loss = F.cross_entropy(model(xt[index]).float(), yt[index])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        stamps.append(stamp(device))
    model.eval()
    warm = predict_warmup(xt_test, batch_size)
    with torch.inference_mode(), autocast:
        for i in range(0, len(warm), batch_size):
            model(warm[i:i + batch_size])
        start = stamp(device)
        for i in range(0, len(xt_test), batch_size):
            torch.softmax(model(xt_test[i:i + batch_size]).float(), dim=1)
    return windows_rate(stamps, batch_size, warmup, window), len(xt_test) / (stamp(device) - start)


def bench_lightning(spec, x, y, x_test, batch_size, precision, steps, warmup, window, steps_per_execution,
                    channels_last, device, compiled):
    """This project's training path: KerasRecipeModule + InMemoryLoader under a Lightning Trainer."""
    import lightning as L
    import torch

    from lightning_cnn.datamodule import InMemoryLoader
    from lightning_cnn.recipes.module import KerasRecipeModule
    from lightning_cnn.speed import Speed

    L.seed_everything(0, verbose=False)
    speed = Speed() if channels_last is None else Speed(channels_last=channels_last)  # NHWC only where there are convs
    module = KerasRecipeModule(spec.id, seed=0, compiled=compiled, steps_per_execution=steps_per_execution,
                               speed=speed)
    xt, yt, xt_test = torch_tensors(x, y, x_test, device, module.memory_format == torch.channels_last)
    stamps: list[float] = []
    trainer = timed_trainer(stamps, device, precision=precision, max_steps=steps)
    stamps.append(stamp(device))
    trainer.fit(module, train_dataloaders=InMemoryLoader(xt, yt, batch_size, shuffle=True,
                                                         batches_per_item=steps_per_execution))
    test_loader = InMemoryLoader(xt_test, torch.zeros(len(xt_test), dtype=torch.long, device=device), batch_size,
                                 shuffle=False)
    warm = predict_warmup(xt_test, batch_size)
    trainer.predict(module, dataloaders=InMemoryLoader(warm, yt[:len(warm)], batch_size, False))
    start = stamp(device)
    trainer.predict(module, dataloaders=test_loader)
    return grouped_windows(stamps, batch_size, warmup, window, steps_per_execution), \
        len(xt_test) / (stamp(device) - start)


def loop_floor_ms(contender: str, steps: int, batch_size: int = 32) -> float:
    """Median milliseconds a step of a loop whose step does no work (one parameter, a batch sliced as usual): what
    the training loop itself costs per step, which no model or module code can take away."""
    import torch

    from lightning_cnn.speed.cpu_tuning import retain_freed_memory

    x = torch.rand(steps * batch_size, 1, 28, 28)
    y = torch.zeros(len(x), dtype=torch.long)
    stamps = [time.perf_counter()]
    if contender == "plain_torch":
        retain_freed_memory()
        weight = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([weight], lr=0.0)
        order = torch.randperm(len(x))
        for start in range(0, len(x), batch_size):
            index = order[start:start + batch_size]
            loss = (weight * x[index][0, 0, 0, 0]).sum() + 0 * y[index][0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            stamps.append(time.perf_counter())
    else:
        import lightning as L

        from lightning_cnn.datamodule import InMemoryLoader

        class NoWork(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.zeros(1))

            def training_step(self, batch, batch_idx):
                xb, yb = batch
                return (self.weight * xb[0, 0, 0, 0]).sum() + 0 * yb[0]

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.0)

        trainer = timed_trainer(stamps, torch.device("cpu"))
        trainer.fit(NoWork(), train_dataloaders=InMemoryLoader(x, y, batch_size, shuffle=True))
    skip = len(stamps) // 10  # warm-up
    return 1e3 * statistics.median(b - a for a, b in zip(stamps[skip:], stamps[skip + 1:]))


def measure(args) -> dict:
    """One contender in this process, as ``lightning-cnn-bench --worker`` describes it in ``args``; one record."""
    from lightning_cnn.specs import get_spec

    spec = get_spec(args.model)
    args.window = args.window or max(8, 3200 // args.batch_size)  # ~3,200 images a window at any batch size
    whole_groups = lambda n: -(-n // args.steps_per_execution) * args.steps_per_execution  # noqa: E731
    args.window, args.warmup = whole_groups(args.window), whole_groups(args.warmup)
    steps = args.warmup + args.windows * args.window
    x, y, x_test = train_arrays(spec, args.data_dir, steps * args.batch_size)
    common = (spec, x, y, x_test, args.batch_size, args.precision, steps, args.warmup, args.window,
              args.steps_per_execution)
    if args.contender == "keras":
        from keras_ref.bench import bench_keras

        train_rate, predict_rate = bench_keras(*common)
    else:
        import torch

        bench = bench_plain_torch if args.contender == "plain_torch" else bench_lightning
        device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
        train_rate, predict_rate = bench(*common, MEMORY_FORMATS[args.memory_format], device, args.compile)
    flops = train_flops_per_image(spec)
    return {"model": spec.id, "batch_size": args.batch_size, "precision": args.precision,
            "contender": args.contender, "accelerator": args.accelerator, "compiled": args.compile and
            args.contender != "keras", "steps_per_execution": 1 if args.contender == "plain_torch" else
            args.steps_per_execution, "images_per_s": round(train_rate, 1),
            "predict_images_per_s": round(predict_rate, 1),
            "peak_mem_mb": round(peak_mem_mb(args.contender, args.accelerator), 1),
            "gflops_per_s": round(train_rate * flops / 1e9, 2)}


def peak_mem_mb(contender: str, accelerator: str) -> float:
    """Peak memory where training ran: the process's resident set on CPU, the framework's device peak on a GPU."""
    if accelerator == "cpu":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if contender == "keras":
        import tensorflow as tf

        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def train_flops_per_image(spec) -> float:
    """Training FLOPs per image: the forward pass counted by torch's FlopCounterMode, times 3 (fwd + 2x bwd)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import lightning_cnn

    model = lightning_cnn.build_model(spec.id)
    h, w, c = spec.input_shape
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, c, h, w))
    return 3.0 * counter.get_total_flops()


def matmul_peak_gflops(dtype_name: str = "float32", device: str = "cpu", repeats: int = 20,
                       budget_s: float = 1.0) -> float:
    """The device's measured matmul rate (all CPU threads): the ceiling the GFLOP/s column is read against.

    ``torch.mm``, and on a CPU in float32 also oneDNN's product (``mkldnn._linear_pointwise``), whichever is faster:
    torch.mm goes to MKL, whose float32 GEMM runs AVX2 code on AMD CPUs (121 GFLOP/s on an AVX-512 EPYC where
    oneDNN, which convolutions use, reached 248). At most ``repeats`` timed products, fewer where one takes long
    (bf16 on a CPU without bf16 units: ~2-4 s for one 1024-square product) so that the timed part stays near
    ``budget_s``."""
    import torch

    device = torch.device(device)
    n = 1024 if device.type == "cpu" else 8192
    dtype = getattr(torch, dtype_name)
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    products = [lambda: torch.mm(a, b)]
    if device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available():
        products.append(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""))
    rates = []
    for product in products:
        product()  # warm-up: kernel selection, first-touch of the output
        start = stamp(device)
        product()
        once = stamp(device) - start
        timed = max(1, min(repeats, int(budget_s / max(once, 1e-9))))
        start = stamp(device)
        for _ in range(timed):
            product()
        rates.append(2 * n ** 3 * timed / (stamp(device) - start) / 1e9)
    return max(rates)


def paired_ratio(record: dict, other: dict, field: str = "images_per_s") -> float:
    """Median over rounds of one round's ratio: contenders of a round run back to back, under the same VM load,
    so a round's ratio is not thrown off by the machine speeding up or slowing down between rounds."""
    return statistics.median(a / b for a, b in zip(record[f"{field}_runs"], other[f"{field}_runs"]))

