"""One LightningModule for every documented model: the recipe's loss, optimizer and metrics, Keras-equivalent."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import Metric

from ..nets.models import build_model
from .optim import make_optimizer
from ..specs import get_spec
from ..speed import Speed


class _Ratio(Metric):
    """sum(numerator) / sum(denominator) over an epoch, summed across processes: the weighted mean Keras reports."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("numerator", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("denominator", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, numerator: torch.Tensor, denominator: torch.Tensor | float) -> None:
        self.numerator += numerator
        self.denominator += denominator

    def compute(self) -> torch.Tensor:
        return (self.numerator / self.denominator).float()


class _Fraction(Metric):
    """count / total over an epoch in exact integers, summed across processes. With the correct predictions as
    count and the samples as total it is torchmetrics' ``MulticlassAccuracy(average="micro")``, computed the same
    way (``tp.float() / (tp + fn).float()``), without its per-call input handling and per-class statistics."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, count: torch.Tensor, total: int) -> None:
        self.count += count
        self.total += total

    def compute(self) -> torch.Tensor:
        return self.count.float() / self.total.float()


class _Count(Metric):
    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, n: int) -> None:
        self.total += n

    def compute(self) -> torch.Tensor:
        return self.total


class StageMetrics(torch.nn.Module):
    """Loss, accuracy and sample count for one stage; updated on device, synced across processes at epoch end.

    Kept lean: at batch 32 on CPU a step of these models takes a few milliseconds, so each update is a handful of
    tensor operations (accuracy: the argmax's hits counted in an integer; torchmetrics' ``MulticlassAccuracy``
    cost ~45 µs a step for the same number, ``tests/test_lightning_cnn.py`` checks the logged values against a
    plain recomputation).
    """

    def __init__(self):
        super().__init__()
        self.loss, self.acc, self.samples = _Ratio(), _Fraction(), _Count()

    def update(self, loss, logits, y):
        n = y.shape[0]
        self.loss.update(loss.detach() * n, n)
        self.acc.update((logits.detach().argmax(dim=1) == y).sum(), n)
        self.samples.update(n)

    def log_to(self, module: L.LightningModule, stage: str) -> None:
        """Registers these metric objects with ``module`` once per epoch; Lightning computes, syncs and resets them
        at its end.

        Logging a metric object from every step would redo the same registration each time (over a millisecond a
        step here); once at epoch start is enough because Lightning keeps the object and reads it at epoch end.
        """
        module.log(f"{stage}_loss", self.loss, on_step=False, on_epoch=True, prog_bar=stage != "test")
        module.log(f"{stage}_acc", self.acc, on_step=False, on_epoch=True, prog_bar=stage != "test")
        module.log(f"{stage}_samples", self.samples, on_step=False, on_epoch=True)


class KerasStyleModule(L.LightningModule):
    """What every trained module here shares: the loss, accuracy and sample count Keras reports per epoch, Keras's
    ``steps_per_execution`` and torch's RNG state in checkpoints (dropout draws from it, so a resumed run continues
    to the same result). Subclasses say how a batch becomes ``(loss, output)`` and which optimizer steps.

    ``steps_per_execution=k`` is Keras's ``compile(steps_per_execution=k)``: each training step takes a list of up to
    k batches (``InMemoryLoader(batches_per_item=k)``) and makes one optimizer step per batch, so Lightning's own
    per-step work is paid once per k batches. The arithmetic, the order and ``global_step`` (optimizer steps) are
    those of k=1; callbacks' per-batch hooks see one call per list.
    """

    def __init__(self, steps_per_execution: int = 1):
        super().__init__()
        if steps_per_execution < 1:
            raise ValueError(f"steps_per_execution must be at least 1, got {steps_per_execution}")
        self.automatic_optimization = steps_per_execution == 1  # k > 1: the steps are taken in training_step
        self.train_metrics, self.val_metrics, self.test_metrics = (StageMetrics() for _ in range(3))

    def loss_and_output(self, x: torch.Tensor, y: torch.Tensor, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _step(self, batch, stage: str):
        x, y = batch
        loss, output = self.loss_and_output(x, y, stage)
        getattr(self, f"{stage}_metrics").update(loss, output, y)
        return loss

    def on_train_epoch_start(self):
        self.train_metrics.log_to(self, "train")

    def on_validation_epoch_start(self):
        self.val_metrics.log_to(self, "val")

    def on_test_epoch_start(self):
        self.test_metrics.log_to(self, "test")

    def training_step(self, batch, batch_idx):
        if self.automatic_optimization:
            return self._step(batch, "train")
        optimizer = self.optimizers()
        grouped = isinstance(batch, list) and isinstance(batch[0], (tuple, list))  # not a DataLoader's [x, y]
        for one in batch if grouped else [batch]:
            loss = self._step(one, "train")
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def on_save_checkpoint(self, checkpoint):
        checkpoint["torch_rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint):
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])


class KerasRecipeModule(KerasStyleModule):
    """Trains ``build_model(model_id)`` with its documented recipe.

    Keras's softmax + (sparse) categorical cross-entropy is ``F.cross_entropy`` on logits: the same quantity for
    integer and one-hot labels, so the datamodule always supplies integer labels.
    ``speed`` chooses the speed tricks (``lightning_cnn.speed.Speed``); none changes what is computed, and
    reported metrics come from ``forward`` unless ``Speed(onednn_evaluation=True)`` is asked for. It is a run
    setting, not part of the model: checkpoints do not carry it.
    ``compiled=True`` runs the network through ``torch.compile`` (compiled in place, so parameter names and
    checkpoints are the eager model's). ``steps_per_execution``: see ``KerasStyleModule``.
    """

    def __init__(self, model_id: str = "mnist_cnn_small", init: str = "keras", seed: int | None = None,
                 compiled: bool = False, steps_per_execution: int = 1, speed: Speed | None = None):
        spec = get_spec(model_id)
        super().__init__(steps_per_execution)
        self.save_hyperparameters(ignore=["speed"])
        self.speed = speed or Speed()
        self.spec = spec
        self.model = build_model(model_id, init=init, seed=seed)
        self.memory_format = self.speed.prepare_network(self.model)
        if compiled:
            self.model.compile()
        self._evaluation_network = None  # the speed seam's stand-in for ``forward`` during an evaluation epoch
        self.speed.prepare_module(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=self.memory_format))

    def _evaluation_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self(x) if self._evaluation_network is None else self._evaluation_network(x)

    def _start_evaluation(self):
        compiled = self.hparams.compiled  # torch.compile has its own fusions; keep what the user asked for
        self._evaluation_network = None if compiled else self.speed.evaluation_network(self.model, fallback=self)

    def _end_evaluation(self):
        self._evaluation_network = None  # built from weights that training is about to change

    def loss_and_output(self, x, y, stage):
        logits = self(x) if stage == "train" else self._evaluation_logits(x)
        return F.cross_entropy(logits.float(), y), logits

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._start_evaluation()

    def on_test_epoch_start(self):
        super().on_test_epoch_start()
        self._start_evaluation()

    def on_predict_epoch_start(self):
        self._start_evaluation()

    def on_validation_epoch_end(self):
        self._end_evaluation()

    def on_test_epoch_end(self):
        self._end_evaluation()

    def on_predict_epoch_end(self):
        self._end_evaluation()

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return torch.softmax(self._evaluation_logits(x).float(), dim=1)

    def configure_optimizers(self):
        return make_optimizer([p for p in self.parameters() if p.requires_grad], self.spec.recipe,
                              fused=self.speed.fused_optimizers)
