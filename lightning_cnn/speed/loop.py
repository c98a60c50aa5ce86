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
instead of a new generator-based one for each of the ~30 hook calls a step; the step methods' signatures, which
Lightning reads with ``inspect.getfullargspec`` on every batch, are computed once (and whether ``training_step``
takes ``batch_idx`` is decided once per function); the logger connector's per-batch collection of step-level
values is skipped while nothing is logged with ``on_step=True`` (it would collect nothing); and a batch already on
the device skips the transfer hooks when the module overrides none of them (the default ones return it as it is).
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
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature

_NOTHING = contextlib.nullcontext()
# The hooks between ``training_step`` and the parameter update that the direct step does not call: it applies only
# where each is the default, which does nothing (or, for the last four module hooks, what the direct step does).
_CALLBACK_HOOKS = ("on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step")
_MODULE_HOOKS = (*_CALLBACK_HOOKS, "optimizer_zero_grad", "backward", "configure_gradient_clipping", "optimizer_step")
_TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
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
            result = _closure_result(output)
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


def _closure_result(output) -> ClosureResult:
    """``ClosureResult.from_training_step_output(output)`` for the direct step. A returned loss tensor skips the
    division by ``accumulate_grad_batches`` (1 here: exact) and the copy kept safe from loss scaling (none in
    32-bit): an operation, an autograd node and a copy a step."""
    if type(output) is not torch.Tensor:
        return ClosureResult.from_training_step_output(output)
    result = ClosureResult(None)
    result.closure_loss, result.loss = output, output.detach()
    return result


def use_direct_step(trainer: L.Trainer) -> None:
    """Gives ``trainer``'s fit loop the direct automatic optimization (before it has run: no state to carry)."""
    epoch_loop = trainer.fit_loop.epoch_loop
    epoch_loop.automatic_optimization = DirectAutomaticOptimization(trainer)


def use_quiet_profiler(trainer: L.Trainer) -> None:
    """Swaps the trainer's default profiler for ``QuietProfiler``; a profiler the caller chose is kept."""
    if type(trainer.profiler) is PassThroughProfiler:
        trainer.profiler = QuietProfiler()


def use_lean_step_bookkeeping(trainer: L.Trainer) -> None:
    """Gives ``trainer`` (before it has run) the per-batch shortcuts of ``lean_dispatch`` beyond the profiler; each
    falls back to Lightning's own method whenever its condition does not hold."""
    _skip_empty_step_logging(trainer)
    _decide_batch_idx_once(trainer)
    if type(trainer.strategy) is SingleDeviceStrategy:
        _skip_needless_transfer(trainer.strategy)


def _skip_empty_step_logging(trainer: L.Trainer) -> None:
    """The logger connector's per-batch collection of step-level values, only while something logs on_step."""
    connector = trainer._logger_connector
    on_batch_end, update_train_step_metrics = connector.on_batch_end, connector.update_train_step_metrics

    def logs_on_step(results) -> bool:
        return any(result.meta.on_step for result in results.values())

    def lean_on_batch_end() -> None:
        results = trainer._results
        if logs_on_step(results):
            return on_batch_end()
        results.batch = results.batch_size = None  # what on_batch_end ends with

    def lean_update_train_step_metrics() -> None:
        if logs_on_step(trainer._results):  # else the step's "log" metrics are empty: log_metrics returns at once
            update_train_step_metrics()

    connector.on_batch_end, connector.update_train_step_metrics = lean_on_batch_end, lean_update_train_step_metrics


def _decide_batch_idx_once(trainer: L.Trainer) -> None:
    """The fit loop's step arguments, reading ``training_step``'s signature once per function, not every batch."""
    takes_batch_idx: dict = {}  # training_step function -> whether it takes batch_idx

    def build_kwargs(kwargs, batch, batch_idx):
        kwargs["batch"] = batch
        step = trainer.lightning_module.training_step
        function = getattr(step, "__func__", step)
        if function not in takes_batch_idx:
            takes_batch_idx[function] = is_param_in_hook_signature(step, "batch_idx", min_args=2)
        if takes_batch_idx[function]:
            kwargs["batch_idx"] = batch_idx
        return kwargs

    trainer.fit_loop.epoch_loop._build_kwargs = build_kwargs


def _skip_needless_transfer(strategy: SingleDeviceStrategy) -> None:
    """A batch already on the device goes past the transfer hooks when the module overrides none of them."""
    batch_to_device = strategy.batch_to_device
    default_transfer: dict = {}  # module -> whether it overrides none of the transfer hooks

    def transfers_by_default(module) -> bool:
        if module not in default_transfer:
            default_transfer.clear()  # one module at a time: keep no reference to an earlier one
            default_transfer[module] = not any(is_overridden(hook, module, L.LightningModule)
                                               for hook in _TRANSFER_HOOKS)
        return default_transfer[module]

    def lean_batch_to_device(batch, device=None, dataloader_idx=0):
        module = strategy.lightning_module
        if module is not None and transfers_by_default(module) and _on_device(batch, device or strategy.root_device):
            return batch
        return batch_to_device(batch, device, dataloader_idx)

    strategy.batch_to_device = lean_batch_to_device


def _on_device(batch, device: torch.device) -> bool:
    """Whether ``batch`` is a tensor, or a tuple/list of tensors, all on ``device`` (nothing to move)."""
    parts = batch if type(batch) in (tuple, list) else (batch,)
    return all(type(part) is torch.Tensor and part.device == device for part in parts)
