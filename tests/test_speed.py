"""The speed seam: each switch does what it says, off means the network as written, and none changes the numbers."""

from __future__ import annotations

import copy
import pickle
from dataclasses import fields, replace

import pytest
import torch

import lightning_cnn
from lightning_cnn.recipes.module import KerasRecipeModule
from lightning_cnn.speed import Speed
from lightning_cnn.speed.attributes import PlainAttributeFastPath
from lightning_cnn.speed.pooling import PoolThenActivation


def test_none_is_every_switch_off_and_the_default_evaluates_through_forward():
    assert not any(getattr(Speed.none(), f.name) for f in fields(Speed))
    assert Speed().onednn_evaluation is False
    with pytest.raises(AttributeError):  # frozen: a run's settings are fixed once chosen
        Speed().channels_last = False


def test_speed_none_trains_the_network_as_written():
    module = KerasRecipeModule("mnist_cnn_small", seed=0, speed=Speed.none())
    written = lightning_cnn.build_model("mnist_cnn_small", seed=0)
    assert repr(module.model) == repr(written)  # no PoolThenActivation, nothing moved
    assert module.memory_format == torch.contiguous_format
    assert not isinstance(module, PlainAttributeFastPath)
    assert not any(isinstance(m, PlainAttributeFastPath) for m in module.modules())
    optimizer = module.configure_optimizers()
    assert not optimizer.defaults["fused"]


def test_default_speed_applies_each_network_and_module_trick():
    module = KerasRecipeModule("mnist_cnn_small", seed=0)
    assert sum(isinstance(m, PoolThenActivation) for m in module.model.modules()) == 2
    assert module.memory_format == torch.channels_last
    assert isinstance(module, PlainAttributeFastPath) and isinstance(module.train_metrics.acc, PlainAttributeFastPath)
    assert module.configure_optimizers().defaults["fused"]
    # An MLP has no convolution: NHWC would only cost a copy before its Flatten.
    assert KerasRecipeModule("mnist_mlp_128_64", seed=0).memory_format == torch.contiguous_format


def test_the_tricks_change_no_logits_and_no_gradients():
    """Same weights, same images: the default and ``Speed.none()`` agree to float32 rounding. NHWC convolutions sum
    in another order: seen here 3.3e-7 of the largest logit and 1.4e-6 of the largest gradient element; 1e-5 of
    the largest value leaves margin for other CPUs, while a misplaced ReLU or layout moves values by a large
    fraction of themselves."""
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 10
    results = []
    for speed in (Speed(), Speed.none()):
        module = KerasRecipeModule("mnist_cnn_small", seed=0, speed=speed)
        logits = module(x)
        torch.nn.functional.cross_entropy(logits, y).backward()
        results.append((logits.detach(), [p.grad for p in module.parameters()]))
    (fast, fast_grads), (plain, plain_grads) = results
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-5 * plain.abs().max().item())
    for a, b in zip(fast_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * b.abs().max().item())


def test_a_fast_module_pickles_and_copies_as_its_own_class():
    module = KerasRecipeModule("mnist_cnn_small", seed=0)
    for clone in (pickle.loads(pickle.dumps(module)), copy.deepcopy(module)):
        assert type(clone).__name__ == "KerasRecipeModule" and isinstance(clone, KerasRecipeModule)
        assert isinstance(clone, PlainAttributeFastPath)
        assert clone.state_dict().keys() == module.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(clone.state_dict().values(), module.state_dict().values()))


def test_checkpoints_do_not_carry_the_speed_settings():
    module = KerasRecipeModule("mnist_cnn_small", seed=0, speed=Speed.none())
    assert "speed" not in module.hparams


LIGHTNING_WAY = replace(Speed(), direct_step=False, lean_dispatch=False)  # the same network, Lightning's own loop


def _real_batches(data_dir, n=200):
    from lightning_cnn.data import load_dataset, preprocess

    (x, y), _ = load_dataset("mnist", data_dir, allow_partial_test=True)
    return (torch.from_numpy(preprocess(x[:n], "scale_255")).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(y[:n].reshape(-1).astype("int64")))


def _fit(data_dir, speed, callbacks=(), **settings):
    """Two epochs of ``mnist_cnn_dropout`` (dropout: the RNG must be drawn in the same order) on 200 real images,
    the last batch short; returns the module, the trainer and the automatic-optimization loop."""
    import lightning as L

    from lightning_cnn.datamodule import InMemoryLoader
    from lightning_cnn.run.training import make_trainer

    x, y = _real_batches(data_dir)
    L.seed_everything(0, verbose=False)
    module = KerasRecipeModule("mnist_cnn_dropout", seed=0, speed=speed)
    trainer = make_trainer(accelerator="cpu", max_epochs=2, callbacks=list(callbacks), speed=speed, **settings)
    trainer.fit(module, train_dataloaders=InMemoryLoader(x, y, 32, shuffle=True))
    return module, trainer, trainer.fit_loop.epoch_loop.automatic_optimization


def _assert_same_training(a, b):
    (module_a, trainer_a, loop_a), (module_b, trainer_b, loop_b) = a, b
    assert all(torch.equal(p, q) for p, q in zip(module_a.state_dict().values(), module_b.state_dict().values()))
    state_a, state_b = trainer_a.optimizers[0].state_dict(), trainer_b.optimizers[0].state_dict()
    assert state_a["param_groups"] == state_b["param_groups"]
    assert all(torch.equal(u, v) for s, t in zip(state_a["state"].values(), state_b["state"].values())
               for u, v in zip(s.values(), t.values()))
    assert {k: v.item() for k, v in trainer_a.callback_metrics.items()} == \
        {k: v.item() for k, v in trainer_b.callback_metrics.items()}
    assert loop_a.optim_progress.state_dict() == loop_b.optim_progress.state_dict()  # what a checkpoint saves
    assert trainer_a.global_step == trainer_b.global_step == 14


def test_the_direct_step_trains_bit_for_bit_as_lightnings_own_loop(data_dir):
    from lightning.pytorch.profilers import PassThroughProfiler

    from lightning_cnn.speed.loop import QuietProfiler

    direct, own = _fit(data_dir, Speed()), _fit(data_dir, LIGHTNING_WAY)
    assert direct[2]._direct and type(direct[1].profiler) is QuietProfiler  # the tricks ran
    assert not hasattr(own[2], "_direct") and type(own[1].profiler) is PassThroughProfiler
    _assert_same_training(direct, own)


def test_the_direct_step_steps_aside_for_an_overridden_hook_or_clipping(data_dir):
    """A callback that looks at the gradients, or gradient clipping, needs the hooks the direct step leaves out:
    Lightning's own path runs then, and the hook sees every optimizer step."""
    import lightning as L

    class GradientWatcher(L.Callback):
        def __init__(self):
            self.calls = 0

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.calls += 1

    watcher = GradientWatcher()
    watched = _fit(data_dir, Speed(), callbacks=[watcher])
    assert not watched[2]._direct and watcher.calls == 14
    clipped = _fit(data_dir, Speed(), gradient_clip_val=0.01)
    assert not clipped[2]._direct
    _assert_same_training(clipped, _fit(data_dir, LIGHTNING_WAY, gradient_clip_val=0.01))


def test_lean_bookkeeping_steps_aside_for_step_logging_and_transfer_hooks(data_dir):
    """A module that logs a value on every step, and one whose batch-transfer hook changes the batch: Lightning's
    own per-batch logging and transfer run for them, with the same results as without the loop tricks."""
    import lightning as L

    from lightning_cnn.datamodule import InMemoryLoader
    from lightning_cnn.run.training import make_trainer

    class StepLogging(KerasRecipeModule):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("step_loss", loss, on_step=True, on_epoch=False, prog_bar=True)
            return loss

        def on_after_batch_transfer(self, batch, dataloader_idx):
            self.transfers = getattr(self, "transfers", 0) + 1
            x, y = batch
            return -x, y  # changes what is trained: a skipped hook would show in the weights

    x, y = _real_batches(data_dir)
    runs = []
    for speed in (Speed(), LIGHTNING_WAY):
        L.seed_everything(0, verbose=False)
        module = StepLogging("mnist_cnn_dropout", seed=0, speed=speed)
        trainer = make_trainer(accelerator="cpu", max_epochs=2, speed=speed, log_every_n_steps=1)
        trainer.fit(module, train_dataloaders=InMemoryLoader(x, y, 32, shuffle=True))
        runs.append((module, trainer, trainer.fit_loop.epoch_loop.automatic_optimization))
        assert module.transfers == 14 and "step_loss" in trainer.progress_bar_metrics
    assert runs[0][1].logged_metrics["step_loss"] == runs[1][1].logged_metrics["step_loss"]
    _assert_same_training(*runs)


def test_a_training_step_without_batch_idx_gets_none(data_dir):
    """Whether ``training_step`` takes ``batch_idx`` is read once, from the method the module has."""
    import lightning as L

    from lightning_cnn.datamodule import InMemoryLoader
    from lightning_cnn.run.training import make_trainer

    class BatchOnly(KerasRecipeModule):
        def training_step(self, batch):
            return super().training_step(batch, None)

    x, y = _real_batches(data_dir, n=64)
    L.seed_everything(0, verbose=False)
    trainer = make_trainer(accelerator="cpu", max_epochs=1, speed=Speed())
    trainer.fit(BatchOnly("mnist_cnn_small", seed=0), train_dataloaders=InMemoryLoader(x, y, 32, shuffle=True))
    assert trainer.global_step == 2


def test_cached_step_signatures_are_the_methods_own():
    import inspect

    from lightning_cnn.speed.loop import STEP_METHODS

    module = KerasRecipeModule("mnist_cnn_small", seed=0)
    for name in STEP_METHODS:
        function = getattr(type(module), name)
        assert "__signature__" in function.__dict__
        assert inspect.getfullargspec(function) == inspect.getfullargspec(_uncached(function))


def _uncached(function):
    import types

    return types.FunctionType(function.__code__, function.__globals__, function.__name__, function.__defaults__,
                              function.__closure__)
