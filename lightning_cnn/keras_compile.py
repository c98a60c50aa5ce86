"""Train any ``nn.Module`` (a converted Keras twin) the way its Keras ``model.compile(...)`` says. TF-free.

``KerasCompile.from_config(model.get_compile_config())`` reads the optimizer, the loss and the metrics;
``CompiledTwinModule`` trains the module with them under Lightning, reporting loss and accuracy like
``KerasRecipeModule`` does.

Losses, with integer class labels y (what the data modules here supply):
- sparse_categorical_crossentropy / categorical_crossentropy (y one-hot, label_smoothing as Keras): with
  ``from_logits=True``, cross-entropy on the output. With ``from_logits=False`` the output is probabilities; when
  the twin's last operation is a softmax module, its *input* (the logits) is used instead, as Keras's
  TensorFlow backend does with ``_keras_logits``: the same loss, computed stably, and never softmax twice (also for
  a converted twin's final Dense(softmax) or Activation("softmax")). When it is not (a softmax written inside some
  other module's forward), Keras's probability formula is used: normalise, clip to
  [1e-7, 1 - 1e-7], -sum(y log p).
- binary_crossentropy: y one-hot against the output (one sigmoid per class). Keras reads the logits of whichever
  activation produced the output, a sigmoid *or a softmax* (its ``_get_logits`` checks ``_keras_logits`` only), and
  applies sigmoid cross-entropy to them; so does this, to train what Keras trains. Else clipped probabilities.
- mean_squared_error (mse): mean((one_hot(y) - output)^2).
Accuracy is argmax agreement (the argmax of probabilities is that of logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lightning as L
import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import UserError
from .module import StageMetrics
from .optim import make_keras_optimizer

KERAS_EPSILON = 1e-7  # keras.config.epsilon(): Keras clips probabilities to [eps, 1 - eps] before the log

# Keras loss names and aliases -> (canonical name, the final activations whose input is taken as the logits).
LOSSES = {
    "sparse_categorical_crossentropy": ("sparse_categorical_crossentropy", ("softmax",)),
    "categorical_crossentropy": ("categorical_crossentropy", ("softmax",)),
    "binary_crossentropy": ("binary_crossentropy", ("sigmoid", "softmax")),
    "mean_squared_error": ("mean_squared_error", ()),
    "mse": ("mean_squared_error", ()),
}
_LOSS_CLASSES = {"SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
                 "CategoricalCrossentropy": "categorical_crossentropy",
                 "BinaryCrossentropy": "binary_crossentropy", "MeanSquaredError": "mean_squared_error"}


class UnsupportedCompileError(ValueError, UserError):
    """A Keras compile setting (loss, metric) that training the twin does not support."""


@dataclass(frozen=True)
class KerasCompile:
    """What ``model.compile`` asked for, in the terms the twin is trained with."""

    optimizer: dict | str = "adam"
    loss: str = "sparse_categorical_crossentropy"
    from_logits: bool = False
    label_smoothing: float = 0.0
    metrics: tuple = field(default_factory=lambda: ("accuracy",))

    @classmethod
    def from_config(cls, config: dict | None) -> KerasCompile:
        """From ``model.get_compile_config()`` (or ``compile.json``); None (never compiled): Keras's Adam and
        sparse categorical cross-entropy on the model's output (probabilities unless it ends without softmax)."""
        if not config:
            return cls()
        loss = config.get("loss")
        if isinstance(loss, (list, dict)) and not (isinstance(loss, dict) and "class_name" in loss):
            raise UnsupportedCompileError(f"the model has one loss per output ({loss!r}); training the twin "
                                          "supports a single-output model with one loss")
        if config.get("loss_weights"):
            raise UnsupportedCompileError("loss_weights are not supported (single-output models only)")
        from_logits, smoothing = False, 0.0
        if isinstance(loss, dict):
            loss_config = loss.get("config") or {}
            name = _LOSS_CLASSES.get(loss.get("class_name"))
            from_logits = bool(loss_config.get("from_logits", False))
            smoothing = float(loss_config.get("label_smoothing", 0.0) or 0.0)
            if name is None:
                raise UnsupportedCompileError(f"Keras loss {loss.get('class_name')!r} is not supported; supported: "
                                              f"{', '.join(_LOSS_CLASSES)} (or their string names)")
        elif isinstance(loss, str) and loss in LOSSES:
            name = LOSSES[loss][0]
        else:
            raise UnsupportedCompileError(f"Keras loss {loss!r} is not supported; supported: {', '.join(LOSSES)}")
        metrics = tuple(m if isinstance(m, str) else (m or {}).get("class_name", str(m))
                        for m in (config.get("metrics") or ["accuracy"]))
        unknown = [m for m in metrics if m.lower() not in ("accuracy", "acc", "sparse_categorical_accuracy",
                                                           "categorical_accuracy")]
        if unknown:
            raise UnsupportedCompileError(f"metrics {unknown} are not supported; the twin reports loss and accuracy")
        return cls(optimizer=config.get("optimizer") or "adam", loss=name, from_logits=from_logits,
                   label_smoothing=smoothing, metrics=metrics)

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        return make_keras_optimizer(params, self.optimizer)

    def loss_value(self, output: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of a batch: ``output`` is what the twin returns, ``logits`` the input of its final activation
        when that activation is the one this loss reads logits from (see the module docstring)."""
        output = output.float()
        num_classes = output.shape[-1]
        if self.loss == "sparse_categorical_crossentropy" or self.loss == "categorical_crossentropy":
            smoothing = self.label_smoothing if self.loss == "categorical_crossentropy" else 0.0
            if self.from_logits or logits is not None:
                return F.cross_entropy(output if self.from_logits else logits.float(), y, label_smoothing=smoothing)
            target = F.one_hot(y, num_classes).to(output.dtype)
            target = target * (1 - smoothing) + smoothing / num_classes
            p = (output / output.sum(dim=-1, keepdim=True)).clamp(KERAS_EPSILON, 1 - KERAS_EPSILON)
            return -(target * p.log()).sum(dim=-1).mean()
        target = F.one_hot(y, num_classes).to(output.dtype)
        if self.loss == "binary_crossentropy":
            target = target * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
            if self.from_logits or logits is not None:
                return F.binary_cross_entropy_with_logits(output if self.from_logits else logits.float(), target)
            p = output.clamp(KERAS_EPSILON, 1 - KERAS_EPSILON)
            return -(target * p.log() + (1 - target) * (1 - p).log()).mean()
        return F.mse_loss(output, target)

    @property
    def logits_activations(self) -> tuple:
        """The final activations whose input is the logits this loss wants (empty: it reads the output)."""
        return () if self.from_logits else LOSSES[self.loss][1]


_ACTIVATION_MODULES = {nn.Softmax: "softmax", nn.Sigmoid: "sigmoid"}


def _activation_of(module: nn.Module) -> tuple[str | None, str | None]:
    """(activation name, where it sits): "module" for a pure activation module (its input is the logits),
    "config" for a converted layer with a fused activation (``config["activation"]``, e.g. Dense(softmax))."""
    if type(module) in _ACTIVATION_MODULES:
        return _ACTIVATION_MODULES[type(module)], "module"
    config = getattr(module, "config", None)
    if isinstance(config, dict):
        if isinstance(config.get("activation"), str):
            return config["activation"], "config"
        if isinstance(config.get("name"), str) and not config.get("kwargs"):  # an Activation layer
            return config["name"], "module"
    return None, None


def _output_modules(network: nn.Module) -> list[nn.Module]:
    """The modules whose result can be the network's output: for a converted twin (``torch.fx``), the ones the
    output node reads; for any other module, all of them (a hook only records, and only the last call counts)."""
    graph = getattr(network, "graph", None)
    if isinstance(network, fx.GraphModule) and graph is not None:
        output = next(node for node in graph.nodes if node.op == "output")
        return [network.get_submodule(n.target) for n in output.all_input_nodes if n.op == "call_module"]
    return list(network.modules())


class FinalActivationInput:
    """After a forward, ``logits_for(output)`` is the input of the network's final softmax/sigmoid (of the given
    names) if the network's output *is* that activation's result, else None: Keras's ``_keras_logits``.

    A converted layer with a fused activation (Dense(units, activation="softmax")) is re-run without it to get
    its logits: one more call of the last layer, and the same arithmetic as its own pre-activation.
    """

    def __init__(self, network: nn.Module, activations: tuple):
        self._last = (None, None)
        for module in _output_modules(network):
            name, where = _activation_of(module)
            if name in activations:
                module.register_forward_hook(self._record_input if where == "module" else self._record_fused)

    def _record_input(self, module, args, output):
        self._last = (output, args[0])

    def _record_fused(self, module, args, output):
        activation = module.config["activation"]
        module.config["activation"] = "linear"
        try:
            self._last = (output, module.forward(*args))
        finally:
            module.config["activation"] = activation

    def logits_for(self, output: torch.Tensor) -> torch.Tensor | None:
        last_output, last_input = self._last
        self._last = (None, None)
        return last_input if last_output is output else None


class CompiledTwinModule(L.LightningModule):
    """Trains ``network`` (NCHW images in, one output per class) with a Keras compile config."""

    def __init__(self, network: nn.Module, compile_config: KerasCompile, num_classes: int):
        super().__init__()
        self.network = network
        self.compile_config = compile_config
        self._final_activation = FinalActivationInput(network, compile_config.logits_activations)
        self.train_metrics, self.val_metrics, self.test_metrics = (StageMetrics() for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def _step(self, batch, stage: str):
        x, y = batch
        output = self(x)
        loss = self.compile_config.loss_value(output, y, self._final_activation.logits_for(output))
        getattr(self, f"{stage}_metrics").update(loss, output, y)
        return loss

    def on_train_epoch_start(self):
        self.train_metrics.log_to(self, "train")

    def on_validation_epoch_start(self):
        self.val_metrics.log_to(self, "val")

    def on_test_epoch_start(self):
        self.test_metrics.log_to(self, "test")

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx):
        return self(batch[0] if isinstance(batch, (tuple, list)) else batch)

    def configure_optimizers(self):
        return self.compile_config.make_optimizer([p for p in self.parameters() if p.requires_grad])
