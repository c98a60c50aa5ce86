"""One LightningModule for every documented model: the recipe's loss, optimizer and metrics, Keras-equivalent."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from .models import build_model
from .optim import make_optimizer
from .specs import get_spec


class StageMetrics(torch.nn.Module):
    """Loss, accuracy and sample count for one stage; updated on device, synced across processes at epoch end."""

    def __init__(self, num_classes: int):
        super().__init__()
        # Per-step input checks cost more than these models' small steps on CPU; inputs here are our own tensors.
        self.loss = MeanMetric(nan_strategy="disable")
        self.acc = MulticlassAccuracy(num_classes=num_classes, average="micro", validate_args=False)
        self.samples = SumMetric(nan_strategy="disable")

    def update(self, loss, logits, y):
        n = y.shape[0]
        self.loss.update(loss.detach(), weight=n)
        self.acc.update(logits.detach(), y)
        self.samples.update(torch.tensor(float(n), device=y.device))


class KerasRecipeModule(L.LightningModule):
    """Trains ``build_model(model_id)`` with its documented recipe.

    Keras's softmax + (sparse) categorical cross-entropy is ``F.cross_entropy`` on logits: the same quantity for
    integer and one-hot labels, so the datamodule always supplies integer labels.
    """

    def __init__(self, model_id: str = "mnist_cnn_small", init: str = "keras", seed: int | None = None,
                 channels_last: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.spec = get_spec(model_id)
        self.model = build_model(model_id, init=init, seed=seed)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        classes = self.spec.num_classes
        self.train_metrics, self.val_metrics, self.test_metrics = (StageMetrics(classes) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=self.memory_format))

    def _step(self, batch, stage: str):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(loss, logits, y)
        # Metric objects are logged, not tensors: no host sync per step; Lightning computes and syncs at epoch end.
        self.log(f"{stage}_loss", metrics.loss, on_step=False, on_epoch=True, prog_bar=stage != "test")
        self.log(f"{stage}_acc", metrics.acc, on_step=False, on_epoch=True, prog_bar=stage != "test")
        self.log(f"{stage}_samples", metrics.samples, on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return torch.softmax(self(x).float(), dim=1)

    def configure_optimizers(self):
        return make_optimizer([p for p in self.parameters() if p.requires_grad], self.spec.recipe)

    # Resume must continue to the same result: dropout draws from torch's RNG, so it travels in the checkpoint.
    def on_save_checkpoint(self, checkpoint):
        checkpoint["torch_rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint):
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])
