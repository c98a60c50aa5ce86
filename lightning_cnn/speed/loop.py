"""Lightning's training step with less of its own per-step bookkeeping, for the ``direct_step`` and ``lean_dispatch``
switches of ``Speed``. Each computes what Lightning computes, in the same order; only calls that do nothing go.

``direct_step``: Lightning's automatic optimization runs a step as ``optimizer_step`` hook -> ``LightningOptimizer``
-> strategy -> precision plugin -> ``optimizer.step(closure)`` -> closure -> ``training_step``, ``zero_grad``,
``backward``, each through a hook dispatcher (a debug-log string, a profiler context, two attribute writes), with
eight module hooks and four callback hooks on the way whose default does nothing. When none of them is overridden
and nothing else stands between (one device, 32-bit precision, no clipping or accumulation, no profiler), the step
is what the defaults amount to: ``training_step`` (still through the strategy, so ``_current_fx_name`` and the
strategy's context hold), ``zero_grad()``, ``loss.backward()``, ``optimizer.step()``, with the same progress
counts (checkpoints and resumption see the same loop state). Otherwise Lightning's own path runs.

``lean_dispatch``: the trainer's default profiler, which records nothing, hands out one shared no-op context
instead of a new generator-based one for each of the ~30 hook calls a step; and the step methods' signatures, which
Lightning reads with ``inspect.getfullargspec`` on every batch, are computed once.
"""

from __future__ import annotations

import contextlib
import inspect

import lightning as L
import torch
from lightning.pytorch.loops.optimization.automatic import Closure, ClosureResult, _AutomaticOptimization
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.trainer import call
from lightning.pytorch.utilities.model_helpers import is_overridden

_NOTHING = contextlib.nullcontext()
# The hooks between ``training_step`` and the parameter update that the direct step does not call: it applies only
# where each is the default, which does nothing (or, for the last four module hooks, what the direct step does).
_CALLBACK_HOOKS = ("on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step")
_MODULE_HOOKS = (*_CALLBACK_HOOKS, "optimizer_zero_grad", "backward", "configure_gradient_clipping", "optimizer_step")
STEP_METHODS = ("training_step", "validation_step", "test_step", "predict_step")


class QuietProfiler(PassThroughProfiler):
    """Lightning's ``PassThroughProfiler`` (records nothing) with one shared context instead of a new one per call."""

    def profile(self, action_name: str):
        return _NOTHING


def cache_step_signatures(module: L.LightningModule) -> None:
    """Stores each step method's signature on its function (``__signature__``, which ``inspect`` returns as is):
    the same signature, so Lightning's per-batch ``getfullargspec`` reads the same arguments, ~4x cheaper."""
    for name in STEP_METHODS:
        function = getattr(type(module), name, None)
        if inspect.isfunction(function) and "__signature__" not in function.__dict__:
            function.__signature__ = inspect.signature(function)


class DirectAutomaticOptimization(_AutomaticOptimization):
    """Lightning's automatic optimization; the step goes straight to the optimizer when nothing watches the way."""

    def __init__(self, trainer: L.Trainer) -> None:
        super().__init__(trainer)
        self._checked: tuple | None = None  # what the last decision was made for
        self._direct = False

    def _can_go_direct(self) -> bool:
        trainer = self.trainer
        module = trainer.lightning_module
        key = (module, trainer.strategy, trainer.precision_plugin, trainer.profiler, tuple(trainer.callbacks),
               trainer.accumulate_grad_batches, trainer.gradient_clip_val, self._skip_backward)
        if key != self._checked:
            self._checked = key
            self._direct = (
                type(trainer.strategy) is SingleDeviceStrategy and type(trainer.precision_plugin) is Precision
                and type(trainer.profiler) in (PassThroughProfiler, QuietProfiler)
                and trainer.accumulate_grad_batches == 1 and not trainer.gradient_clip_val and not self._skip_backward
                and module._fabric is None and len(trainer.optimizers) == 1
                and not any(is_overridden(hook, module, L.LightningModule) for hook in _MODULE_HOOKS)
                and not any(is_overridden(hook, callback, L.Callback)
                            for callback in trainer.callbacks for hook in _CALLBACK_HOOKS))
        return self._direct

    def run(self, optimizer, batch_idx, kwargs):
        if not self._can_go_direct():
            return super().run(optimizer, batch_idx, kwargs)
        trainer = self.trainer
        progress = self.optim_progress.optimizer
        progress.step.increment_ready()
        with torch.enable_grad():  # as Lightning's closure, which the optimizer's step calls under no_grad
            output = call._call_strategy_hook(trainer, "training_step", *kwargs.values())
            trainer.strategy.post_training_step()
            result = ClosureResult.from_training_step_output(output)
            if result.closure_loss is None:
                Closure.warning_cache.warn("`training_step` returned `None`. If this was on purpose, ignore this "
                                           "warning...")
            progress.zero_grad.increment_ready()
            progress.zero_grad.increment_started()
            optimizer.zero_grad()  # LightningModule.optimizer_zero_grad
            progress.zero_grad.increment_completed()
            if result.closure_loss is not None:
                result.closure_loss.backward()  # LightningModule.backward without Fabric
        optimizer.step()
        progress.step.increment_completed()
        return {} if result.loss is None else result.asdict()


def use_direct_step(trainer: L.Trainer) -> None:
    """Gives ``trainer``'s fit loop the direct automatic optimization (before it has run: no state to carry)."""
    epoch_loop = trainer.fit_loop.epoch_loop
    epoch_loop.automatic_optimization = DirectAutomaticOptimization(trainer)


def use_quiet_profiler(trainer: L.Trainer) -> None:
    """Swaps the trainer's default profiler for ``QuietProfiler``; a profiler the caller chose is kept."""
    if type(trainer.profiler) is PassThroughProfiler:
        trainer.profiler = QuietProfiler()
