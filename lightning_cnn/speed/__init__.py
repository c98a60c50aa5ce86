"""The speed seam: every trick that makes this project's training or evaluation faster, each behind one switch.

None of them changes what is trained: each is exact (the same numbers bit for bit) or, for the oneDNN evaluation
copy, equal to float32 rounding (tested within 1e-5 of the largest logit). ``KerasRecipeModule(speed=...)`` and
``speed.trainer_callbacks(...)`` are where they are applied; the module itself is written as if none existed.
``docs/performance.md`` ("The speed seam") gives what each one measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

__all__ = ["Speed"]


@dataclass(frozen=True)
class Speed:
    """Which speed tricks a run uses. ``Speed()``: the default set; ``Speed.none()``: the network as written.

    - ``attribute_fast_path``: cheaper re-assignment of the attributes Lightning and torchmetrics set on every
      step (``speed/attributes.py``).
    - ``pool_before_activation``: ReLU after the max-pool that follows it, not before (``speed/pooling.py``).
    - ``channels_last``: networks with convolutions run in NHWC, Keras's own layout, where oneDNN and cuDNN pool
      and convolve faster (a converted twin's entry layout too: off, it runs in NCHW memory throughout).
    - ``fused_optimizers``: torch's one-kernel Adam and SGD on CPU too (torch picks them by itself on CUDA only).
    - ``cpu_tuning``: on a CPU run, glibc keeps freed memory and torch checks for CUDA once
      (``speed/cpu_tuning.py``); put back when the run ends, by teardown or exception. Predictions on the CPU
      (``predict_proba`` with a ``speed``, so ``lightning-cnn-predict``) keep freed memory while they run
      (``freed_memory_retained``).
    - ``inference_copy``: prediction (``lightning-cnn-predict``, ``load_converted(..., for_inference=True)``) runs
      the oneDNN inference copy of the network (``lightning_cnn.converted.prepare_for_inference``: BN folded,
      convolutions fused with their activation and residual add), equal to ``forward`` to float32 rounding;
      networks it cannot take (not float32 on the CPU, not traceable by torch.fx) run as they are.
    - ``direct_step``: an automatic-optimization training step goes straight from ``training_step`` to
      ``zero_grad``, ``backward`` and ``optimizer.step`` when none of the hooks Lightning dispatches on the way is
      overridden (by the module or a callback) and nothing else stands between (one device, 32-bit, no clipping,
      accumulation or profiler); otherwise Lightning's own path (``speed/loop.py``).
    - ``lean_dispatch``: the trainer's default (recording-nothing) profiler hands out one shared no-op context per
      hook call, and the module's step methods keep their signatures, which Lightning re-reads every batch; the
      per-batch collection of step-level logged values is skipped while none is logged with ``on_step=True``, and
      a batch already on the device skips the transfer hooks the module does not override (``speed/loop.py``).
    - ``onednn_evaluation`` (off by default): validation, test and predict on CPU in float32 run an inference copy
      of the network in oneDNN's layout (``speed/onednn.py``), equal to ``forward`` to float32 rounding. Off, the
      reported metrics come from ``forward``, the network that was trained.
    """

    attribute_fast_path: bool = True
    pool_before_activation: bool = True
    channels_last: bool = True
    fused_optimizers: bool = True
    cpu_tuning: bool = True
    inference_copy: bool = True
    direct_step: bool = True
    lean_dispatch: bool = True
    onednn_evaluation: bool = False

    @classmethod
    def none(cls) -> Speed:
        """Every trick off."""
        return cls(**{f.name: False for f in fields(cls)})

    def prepare_network(self, model):
        """Applies the network tricks to ``model`` in place; returns the memory format its inputs should have."""
        from .pooling import pool_before_activation_

        if self.pool_before_activation:
            pool_before_activation_(model)
        return self.apply_memory_format(model)

    def apply_memory_format(self, model):
        """Puts a network with 2-D convolutions channels-last when ``channels_last`` is on; returns the memory
        format its inputs should have (the layout trick alone, for networks the other tricks do not know)."""
        import torch
        from torch import fx

        has_convolutions = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        memory_format = torch.channels_last if self.channels_last and has_convolutions else torch.contiguous_format
        model.to(memory_format=memory_format)
        if isinstance(model, fx.GraphModule):  # a converted twin also sets its inputs' layout on entry
            from ..converted.graph import set_input_memory_format

            set_input_memory_format(model, memory_format)
        return memory_format

    def prepare_module(self, module):
        """Applies the module tricks to a ``LightningModule`` (and its torchmetrics metrics) in place."""
        if self.attribute_fast_path:
            from torchmetrics import Metric

            from .attributes import with_attribute_fast_path

            with_attribute_fast_path(module, (Metric,))
        if self.lean_dispatch:
            from .loop import cache_step_signatures

            cache_step_signatures(module)
        return module

    def prepare_trainer(self, trainer):
        """Applies the loop tricks to a ``lightning.Trainer`` that has not run yet, in place."""
        if self.direct_step or self.lean_dispatch:
            from .loop import use_direct_step, use_lean_step_bookkeeping, use_quiet_profiler

            if self.direct_step:
                use_direct_step(trainer)
            if self.lean_dispatch:
                use_quiet_profiler(trainer)
                use_lean_step_bookkeeping(trainer)
        return trainer

    def evaluation_network(self, model, fallback: Callable | None = None) -> Callable | None:
        """A faster stand-in for ``model`` during one evaluation epoch, or None to evaluate ``model`` itself.
        Inputs it cannot take (not float32 on the CPU, or under autocast) go to ``fallback`` (default ``model``)."""
        if not self.onednn_evaluation:
            return None
        from .onednn import onednn_forward

        return onednn_forward(model, fallback)

    def inference_model(self, model):
        """What predictions run for ``model`` (eval mode): its inference copy (``inference_copy``) where one can
        be made, else ``model`` itself. The copy is built from the weights as they are now."""
        if not self.inference_copy:
            return model
        from torch.fx.proxy import TraceError

        from ..converted.inference import onednn_available, prepare_for_inference

        if not onednn_available(model):
            return model
        try:
            return prepare_for_inference(model)
        except (TraceError, TypeError, NotImplementedError):  # control flow torch.fx cannot trace
            return model

    def trainer_callbacks(self, accelerator="auto") -> list:
        """The Lightning callbacks a Trainer on ``accelerator`` (its name, e.g. ``"cpu"``, or an ``Accelerator``)
        needs for these settings. Each puts back what it changed when the run ends, normally or by an exception."""
        maybe_cpu = not isinstance(accelerator, str) or accelerator in ("auto", "cpu")
        if not (self.cpu_tuning and maybe_cpu):
            return []
        from .trainer import CPUTuning  # acts only if the run's accelerator turns out to be the CPU

        return [CPUTuning()]
