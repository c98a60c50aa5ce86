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

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import UserError
from .module import KerasStyleModule
from .optim import make_keras_optimizer, read_keras_optimizer

TWIN_CHECKPOINT_KEY = "keras_model"  # in a --keras-model twin's checkpoints: the Keras model it was trained from
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
    """A Keras compile setting (loss, metric) that training the twin does not support, or a malformed one."""


# model.get_compile_config()'s fields besides optimizer, loss and metrics: what each may hold to train the twin.
_OTHER_FIELDS = {
    "loss_weights": lambda v: v in (None, [], {}),
    "weighted_metrics": lambda v: v in (None, [], {}),
    "run_eagerly": lambda v: isinstance(v, bool),
    "jit_compile": lambda v: isinstance(v, bool) or v == "auto",
    "auto_scale_loss": lambda v: isinstance(v, bool),
    "steps_per_execution": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
}
_ACCURACY_NAMES = ("accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy")


def _loss_of(loss, where: str) -> tuple[str, bool, float]:
    """(canonical loss name, from_logits, label_smoothing) of a compile config's loss, every field checked."""
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise UnsupportedCompileError(f"{where}: loss {loss!r} is not supported; supported: {', '.join(LOSSES)}")
        return LOSSES[loss][0], False, 0.0
    if not isinstance(loss, dict) or "class_name" not in loss:
        raise UnsupportedCompileError(f"{where}: loss is {loss!r}; training the twin needs a single-output model "
                                      "with one loss (a Keras loss name or a serialized loss)")
    name = _LOSS_CLASSES.get(loss["class_name"])
    if name is None:
        raise UnsupportedCompileError(f"{where}: Keras loss {loss['class_name']!r} is not supported; supported: "
                                      f"{', '.join(_LOSS_CLASSES)} (or their string names)")
    config = loss.get("config") or {}
    if not isinstance(config, dict):
        raise UnsupportedCompileError(f"{where}: loss config is {config!r}; expected an object")
    from_logits = config.get("from_logits", False)
    if not isinstance(from_logits, bool):
        raise UnsupportedCompileError(f"{where}: loss field from_logits is {from_logits!r}; expected true or false")
    smoothing = config.get("label_smoothing", 0.0) or 0.0
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0.0 <= smoothing <= 1.0:
        raise UnsupportedCompileError(f"{where}: loss field label_smoothing is {smoothing!r}; expected a number in "
                                      "[0, 1]")
    return name, from_logits, float(smoothing)


def _metrics_of(metrics, where: str) -> tuple:
    if metrics is None:
        return ("accuracy",)
    if not isinstance(metrics, list):
        raise UnsupportedCompileError(f"{where}: metrics is {metrics!r}; expected a list such as [\"accuracy\"]")
    names = tuple(m if isinstance(m, str) else m.get("class_name") if isinstance(m, dict) else repr(m)
                  for m in metrics)
    unknown = [m for m in names if not isinstance(m, str) or m.lower() not in _ACCURACY_NAMES]
    if unknown:
        raise UnsupportedCompileError(f"{where}: metrics {unknown} are not supported; the twin reports loss and "
                                      "accuracy")
    return names or ("accuracy",)


@dataclass(frozen=True)
class KerasCompile:
    """What ``model.compile`` asked for, in the terms the twin is trained with."""

    optimizer: dict | str = "adam"
    loss: str = "sparse_categorical_crossentropy"
    from_logits: bool = False
    label_smoothing: float = 0.0
    metrics: tuple = field(default_factory=lambda: ("accuracy",))

    @classmethod
    def from_config(cls, config: dict | None, where: str = "the compile config") -> KerasCompile:
        """From ``model.get_compile_config()`` (or ``compile.json``), every field checked (types, ranges, names:
        an ``UserError`` naming ``where`` and the field); None (never compiled): Keras's Adam and sparse categorical
        cross-entropy on the model's output (probabilities unless it ends without softmax)."""
        if config is None:
            return cls()
        if not isinstance(config, dict):
            raise UnsupportedCompileError(f"{where}: expected an object of model.compile settings "
                                          f"(model.get_compile_config()), found a {type(config).__name__}")
        known = {"optimizer", "loss", "metrics", *_OTHER_FIELDS}
        unknown = sorted(set(config) - known)
        if unknown:
            raise UnsupportedCompileError(f"{where}: unknown field {unknown[0]!r}; a Keras compile config has "
                                          f"{', '.join(sorted(known))}")
        for key, valid in _OTHER_FIELDS.items():
            if key in config and not valid(config[key]):
                raise UnsupportedCompileError(f"{where}: field {key} is {config[key]!r}, which training the twin "
                                              "does not support (single-output models; no weighted metrics)")
        if not config:
            return cls()
        loss, from_logits, smoothing = _loss_of(config.get("loss", "sparse_categorical_crossentropy"), where)
        optimizer = config.get("optimizer") or "adam"
        read_keras_optimizer(optimizer, where)  # refused now, not at the first training step
        return cls(optimizer=optimizer, loss=loss, from_logits=from_logits, label_smoothing=smoothing,
                   metrics=_metrics_of(config.get("metrics"), where))

    @classmethod
    def from_file(cls, path: Path) -> KerasCompile:
        """From a converted folder's ``compile.json``: JSON only, every field checked when read."""
        try:
            config = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UnsupportedCompileError(f"{path}: not valid JSON ({error}); restore the file python -m "
                                          "keras_ref.convert wrote, or delete it to train with Keras's "
                                          "defaults") from None
        return cls.from_config(config, str(path))

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
_ACTIVATION_FUNCTIONS = {torch.softmax: "softmax", torch.sigmoid: "sigmoid"}


def _final_activation_of_twin(network: fx.GraphModule) -> tuple[str | None, nn.Module | None]:
    """For a converted twin whose output is ``activation(module(...))`` (Dense(softmax) becomes
    ``torch.softmax(self.probs(x), 1)``): the activation's name and that module, whose output is the logits."""
    output = next(node for node in network.graph.nodes if node.op == "output")
    final = output.args[0]
    if not isinstance(final, fx.Node):
        return None, None
    if final.op == "call_function":
        name = _ACTIVATION_FUNCTIONS.get(final.target)
    elif final.op == "call_module":
        name = _ACTIVATION_MODULES.get(type(network.get_submodule(final.target)))
    else:
        name = None
    source = final.args[0] if final.args else None
    if name is None or not isinstance(source, fx.Node) or source.op != "call_module" or \
            sum(1 for n in network.graph.nodes if n.op == "call_module" and n.target == source.target) != 1:
        return None, None
    return name, network.get_submodule(source.target)


class FinalActivationInput:
    """After a forward, ``logits_for(output)`` is the input of the network's final softmax/sigmoid (of the given
    names) if the network's output *is* that activation's result, else None: Keras's ``_keras_logits``.

    For a plain module the activation module's input is recorded; for a converted twin (``torch.fx``) whose graph
    ends in ``activation(module(...))`` the output of that module (called once) is, the graph being the proof that
    the output is the activation of it.
    """

    def __init__(self, network: nn.Module, activations: tuple):
        self._last = (None, None)
        if isinstance(network, fx.GraphModule):
            name, module = _final_activation_of_twin(network)
            if name in activations:
                module.register_forward_hook(self._record_logits)
            return
        for module in network.modules():
            if _ACTIVATION_MODULES.get(type(module)) in activations:
                module.register_forward_hook(self._record_input)

    def _record_input(self, module, args, output):
        self._last = (output, args[0])

    def _record_logits(self, module, args, output):
        self._last = ("graph", output)

    def logits_for(self, output: torch.Tensor) -> torch.Tensor | None:
        last_output, last_input = self._last
        self._last = (None, None)
        if last_output == "graph":  # the twin's graph ends in the activation of this very value
            return last_input if last_input.shape == output.shape else None
        return last_input if last_output is output else None


class CompiledTwinModule(KerasStyleModule):
    """Trains ``network`` (NCHW images in, one output per class) with a Keras compile config.

    Training runs the twin in training mode, as Keras's ``fit`` calls the model with ``training=True`` (dropout on,
    batch normalization on batch statistics), except the layers Keras froze (``trainable=False``: every weight of
    the module frozen), which Keras 3 runs in inference mode. Lightning keeps these modes through ``fit`` and
    switches to eval for validation and test.
    ``source`` names the Keras model (its path) in every checkpoint, so that a twin's checkpoint and a documented
    model's are never mistaken for each other; ``compiled`` and ``steps_per_execution`` as for
    ``KerasRecipeModule``. ``speed`` (default ``Speed()``): ``channels_last`` runs a network with 2-D convolutions
    in NHWC (inputs converted in ``forward``; the same arithmetic up to float32 summation order, parameters keep
    their shapes and names), ``attribute_fast_path`` as for the documented models.
    """

    def __init__(self, network: nn.Module, compile_config: KerasCompile, *, source: str = "",
                 compiled: bool = False, steps_per_execution: int = 1, speed=None):
        from ..speed import Speed

        super().__init__(steps_per_execution)
        speed = speed or Speed()
        self.network = network.train()
        for module in network.modules():
            weights = list(module.parameters(recurse=False))
            if weights and not any(w.requires_grad for w in weights):
                module.eval()
        self.compile_config = compile_config
        self.source = source
        self._final_activation = FinalActivationInput(network, compile_config.logits_activations)
        self.memory_format = speed.apply_memory_format(network)
        if compiled:
            self.network.compile()
        speed.prepare_module(self)

    def _to_memory_format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x

    def forward(self, x: torch.Tensor | tuple) -> torch.Tensor:
        if isinstance(x, tuple):  # one tensor per input
            return self.network(*(self._to_memory_format(t) for t in x))
        return self.network(self._to_memory_format(x))

    def loss_and_output(self, x, y, stage):
        output = self(x)
        return self.compile_config.loss_value(output, y, self._final_activation.logits_for(output)), output

    def predict_step(self, batch, batch_idx):
        return self(batch[0] if isinstance(batch, (tuple, list)) else batch)

    def configure_optimizers(self):
        return self.compile_config.make_optimizer([p for p in self.parameters() if p.requires_grad])

    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        checkpoint[TWIN_CHECKPOINT_KEY] = self.source
