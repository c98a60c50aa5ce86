"""The Keras <-> PyTorch parity layer: weight transfer and PyTorch twins of Keras models.

Public API
----------
- ``copy_weights(src, dst)``: copy every weight from a Keras model to a PyTorch module of the same architecture,
  or back. Works for ``keras_ref.build_model(id)`` <-> ``lightning_cnn.build_model(id)`` for every id, and for
  any model made of the supported layers.
- A PyTorch twin of any Keras model (stock torch modules, weights copied) is ``keras_ref.convert.convert``;
  ``python -m keras_ref.parity MODEL.keras`` checks one against its Keras file.
- ``load_keras_model(path)``: load a user's ``.keras`` / ``.h5`` file *safely* (``safe_mode=True``,
  ``compile=False``): a ``Lambda`` layer's pickled Python code is refused, never run.
- ``walk_keras(model)`` / ``walk_torch(module)``: the flattened, ordered layer lists ``copy_weights`` works from.
- ``ParityError(ValueError)``: an unsupported layer, a shape or weight-count mismatch, or a configuration that
  would make the two sides compute different things; the message names the layer(s) and says why.

How the transfer works (no per-model code): both models are walked to an ordered list of layers (nested Keras
models and torch containers flattened, in call / module order); the weight-carrying ones (Conv2D, Dense,
BatchNormalization <-> Conv2d, Linear, BatchNorm1d/2d) are paired in order, by kind and shape, and one rule per
kind converts the arrays (float32 numpy; a float64 model's weights stay float64):

- Conv2D: kernel HWIO <-> weight OIHW; bias as is. Padding and stride are the module's business
  (``lightning_cnn.nets.layers.Conv2d`` reproduces TensorFlow's asymmetric 'same' padding for stride 2).
- Dense: kernel (in, out) <-> weight (out, in). A Dense fed by a Flatten of an (H, W, C) tensor sees its inputs in
  H,W,C order in Keras and C,H,W order in PyTorch, so its input columns are also permuted (a BatchNormalization
  between the Flatten and the Dense has its per-feature vectors permuted the same way).
- BatchNormalization: gamma, beta, moving_mean, moving_variance <-> weight, bias, running_mean, running_var.
  The two must agree on epsilon (the same value on both sides; Keras's default is 1e-3, torch's 1e-5) and on
  momentum (torch momentum = 1 - Keras momentum: Keras's default 0.99 is torch's 0.01), else ParityError.
  Note: in *training* mode torch updates running_var with the unbiased batch variance, Keras with the biased one;
  inference (what this layer compares) is identical.

Everything is validated and converted before anything is assigned: either all weights transfer or the
destination is left unchanged.

Layout convention of a twin: rank-4 tensors are NHWC in Keras and NCHW in torch; tensors of other ranks have the
same layout on both sides.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ._tf import load_tensorflow

keras = load_tensorflow()  # the guard, then TensorFlow: see _tf.py

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from lightning_cnn.atomic import write_text  # noqa: E402
from lightning_cnn.errors import ConversionError, UserError, exit_on_user_error  # noqa: E402
from lightning_cnn.nets.layers import ACTIVATION_NAMES, SamePad, SamePool  # noqa: E402

__all__ = [
    "ParityError", "copy_weights", "load_keras_model", "walk_keras", "walk_torch",
    "max_abs_diff", "main", "KerasStep", "TorchUnit", "SUPPORTED_KERAS_LAYERS",
]

SUPPORTED_KERAS_LAYERS = (
    "InputLayer", "Conv2D", "Dense", "Flatten", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
    "GlobalMaxPooling2D", "ZeroPadding2D", "Dropout", "Activation", "ReLU", "Softmax", "BatchNormalization",
    "Sequential / linear functional Model (nested)",
)


ParityError = ConversionError
"""The two models cannot be made to compute the same thing; the message says which layer and why (the converter's
rules, TF-free in lightning_cnn, raise the same class)."""


# --- walking the Keras side -----------------------------------------------------------------------------------


@dataclass
class KerasStep:
    """One leaf Keras layer in call order, with the shapes it sees (batch dimension None)."""

    layer: object
    path: str  # e.g. "top_model/dense"
    input_shape: tuple
    output_shape: tuple
    flatten_hwc: tuple | None = None  # (H, W, C) if this layer's 2-D input features are a Flatten of HWC (Keras)
    parents: tuple = field(default_factory=tuple)  # enclosing Keras models, outermost first

    @property
    def kind(self) -> str:
        return type(self.layer).__name__


def _is_keras_model(layer) -> bool:
    return isinstance(layer, keras.Model)


def _shape(shape) -> tuple:
    return tuple(None if d is None else int(d) for d in shape)


def _model_input_shape(model) -> tuple:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ParityError(f"Keras model {model.name!r} is not built: give it an Input (or call build()) first")
    if len(inputs) != 1 or len(model.outputs) != 1:
        raise ParityError(f"Keras model {model.name!r} has {len(inputs)} inputs and {len(model.outputs)} outputs; "
                          "only single-input, single-output linear models are supported")
    return _shape(inputs[0].shape)


def _linear_layers(model) -> list:
    """The layers of a Sequential, or of a functional Model that is a simple chain, in call order."""
    if isinstance(model, keras.Sequential):
        return [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    expected = model.inputs[0]
    for layer in layers:
        # The node of this layer that consumes the previous layer's output (a layer may also be used in other
        # models; a layer called twice in this one breaks the chain and is caught below).
        nodes = [node for node in getattr(layer, "_inbound_nodes", [])
                 if len(node.input_tensors) == 1 and node.input_tensors[0] is expected]
        if len(nodes) != 1:
            raise ParityError(f"layer {layer.name!r} of functional model {model.name!r} does not take the previous "
                              "layer's output: only linear (chain) functional models are supported")
        node = nodes[0]
        if len(node.output_tensors) != 1:
            raise ParityError(f"layer {layer.name!r} of {model.name!r} has {len(node.output_tensors)} outputs")
        expected = node.output_tensors[0]
    if model.outputs[0] is not expected:
        raise ParityError(f"functional model {model.name!r}: its output is not the end of one chain of layers "
                          "(a branch, a merge or a layer called twice): only linear models are supported")
    return layers


def walk_keras(model) -> list[KerasStep]:
    """Every leaf layer of a (possibly nested) linear Keras model, in call order, with its shapes.

    Raises ParityError for layers the parity layer does not support (a Lambda, an LSTM, a merge layer, ...).
    """
    steps: list[KerasStep] = []
    state = {"flatten_hwc": None}

    def visit(container, shape, prefix, parents):
        for layer in _linear_layers(container):
            path = f"{prefix}{layer.name}"
            if _is_keras_model(layer):
                inner = _model_input_shape(layer)
                if inner[1:] != shape[1:]:
                    raise ParityError(f"nested model {path!r} expects input {inner[1:]} but receives {shape[1:]}")
                shape = visit(layer, shape, path + "/", parents + (layer,))
                continue
            _check_supported(layer, shape, path)
            try:
                out = _shape(layer.compute_output_shape(shape))
            except Exception as exc:  # noqa: BLE001  (report which layer, whatever Keras raised)
                raise ParityError(f"layer {path!r}: cannot infer its output shape from input {shape}: {exc}") from exc
            step = KerasStep(layer, path, shape, out, parents=parents)
            kind = step.kind
            if kind == "Dense" or (kind == "BatchNormalization" and len(shape) == 2):
                step.flatten_hwc = state["flatten_hwc"]
            # Track whether 2-D features are still in the HWC order of a Flatten (Dense consumes it).
            if kind == "Flatten":
                state["flatten_hwc"] = shape[1:] if len(shape) == 4 else None
            elif kind in ("Dense", "GlobalAveragePooling2D", "GlobalMaxPooling2D") or len(out) != 2:
                state["flatten_hwc"] = None
            steps.append(step)
            shape = out
        return shape

    if not _is_keras_model(model):
        raise ParityError(f"expected a Keras model, got {type(model).__name__}")
    visit(model, _model_input_shape(model), "", (model,))
    return steps


def _activation_name(fn, path) -> str:
    name = getattr(fn, "__name__", None) or str(fn)
    if name not in ACTIVATION_NAMES:
        raise ParityError(f"layer {path!r}: activation {name!r} is not supported (supported: {ACTIVATION_NAMES})")
    return name


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _check_supported(layer, shape, path) -> None:
    kind = type(layer).__name__
    cfg = layer.get_config()

    def fail(why):
        raise ParityError(f"layer {path!r} ({kind}): {why}")

    if cfg.get("data_format", "channels_last") not in (None, "channels_last"):
        fail(f"data_format={cfg['data_format']!r}; only channels_last is supported")
    if kind == "Conv2D":
        if len(shape) != 4:
            fail(f"expects a rank-4 input, got {shape}")
        kh, kw = _pair(cfg["kernel_size"])
        sh, sw = _pair(cfg["strides"])
        if kh != kw or sh != sw:
            fail(f"kernel {kh}x{kw} / strides {sh}x{sw}: only square kernels and equal strides are supported")
        if _pair(cfg["dilation_rate"]) != (1, 1) or cfg.get("groups", 1) != 1:
            fail("dilation and grouped convolutions are not supported")
        if cfg["padding"] not in ("valid", "same"):
            fail(f"padding {cfg['padding']!r} is not supported")
        _activation_name(layer.activation, path)
    elif kind == "Dense":
        if len(shape) != 2:
            fail(f"Dense on a rank-{len(shape)} input {shape} is not supported (put a Flatten before it)")
        _activation_name(layer.activation, path)
    elif kind in ("MaxPooling2D", "AveragePooling2D"):
        if cfg["padding"] not in ("valid", "same"):
            fail(f"padding {cfg['padding']!r} is not supported")
    elif kind == "Activation":
        _activation_name(layer.activation, path)
    elif kind == "ReLU":
        if cfg.get("max_value") is not None or cfg.get("negative_slope", 0) != 0 or cfg.get("threshold", 0) != 0:
            fail("only ReLU() with default arguments is supported")
    elif kind == "Softmax":
        if cfg.get("axis", -1) not in (-1, len(shape) - 1):
            fail(f"softmax over axis {cfg['axis']} is not supported (only the last axis)")
    elif kind == "BatchNormalization":
        axis = cfg["axis"]
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        if axis not in (-1, len(shape) - 1) or len(shape) not in (2, 4):
            fail(f"only normalisation over the last (channel) axis of a rank-2 or rank-4 input is supported, "
                 f"got axis={cfg['axis']} on {shape}")
        if cfg["center"] != cfg["scale"]:
            fail(f"center={cfg['center']} with scale={cfg['scale']} has no torch BatchNorm counterpart")
    elif kind == "Flatten":
        if len(shape) not in (2, 3, 4):
            fail(f"Flatten of a rank-{len(shape)} input is not supported")
    elif kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D", "ZeroPadding2D"):
        if len(shape) != 4:
            fail(f"expects a rank-4 input, got {shape}")
    elif kind in ("Dropout", "InputLayer"):
        pass
    else:
        fail(f"unsupported layer type for Keras<->PyTorch parity (supported: {', '.join(SUPPORTED_KERAS_LAYERS)})")


# --- walking the torch side -----------------------------------------------------------------------------------

_TORCH_WEIGHTED = {"conv2d": (nn.Conv2d,), "dense": (nn.Linear,), "batchnorm": (nn.BatchNorm1d, nn.BatchNorm2d)}
_TORCH_PLAIN = (
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Flatten,
    nn.ReLU, nn.Sigmoid, nn.Tanh, nn.Softmax, nn.Identity, nn.ZeroPad2d, nn.Upsample, nn.Dropout1d, SamePad,
    SamePool,
)


@dataclass
class TorchUnit:
    """One leaf layer of a torch module, in module (registration) order."""

    name: str  # qualified name, e.g. "features.0"
    module: nn.Module
    kind: str  # conv2d | dense | batchnorm | plain


def walk_torch(module: nn.Module) -> list[TorchUnit]:
    """Leaf layers of ``module`` in module order; containers are flattened, Conv2d/Linear are single units
    (lightning_cnn's fused-activation and same-padding children belong to them). Unknown leaves -> ParityError."""
    units: list[TorchUnit] = []

    def visit(mod, name):
        for kind, classes in _TORCH_WEIGHTED.items():
            if isinstance(mod, classes):
                units.append(TorchUnit(name, mod, kind))
                return
        if isinstance(mod, _TORCH_PLAIN):
            units.append(TorchUnit(name, mod, "plain"))
            return
        children = list(mod.named_children())
        own = list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False))
        if own or not children:
            raise ParityError(f"torch module {name or '<root>'!r} ({type(mod).__name__}) is not a supported layer "
                              f"for Keras<->PyTorch parity" + (f" (it holds {own[0][0]!r})" if own else ""))
        for child_name, child in children:
            visit(child, f"{name}.{child_name}" if name else child_name)

    if not isinstance(module, nn.Module):
        raise ParityError(f"expected a torch.nn.Module, got {type(module).__name__}")
    visit(module, "")
    return units


# --- conversion rules ---------------------------------------------------------------------------------------


def _np32(value) -> np.ndarray:
    """A weight as a float32 numpy array (float64 stays float64, so float64 models convert losslessly)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.numpy() if value.dtype == torch.float64 else value.to(torch.float32).numpy()
    array = np.asarray(value.numpy() if hasattr(value, "numpy") else keras.ops.convert_to_numpy(value))
    return array if array.dtype == np.float64 else array.astype(np.float32)


def _dense_k2t(kernel: np.ndarray, hwc) -> np.ndarray:
    """Keras Dense kernel (in, out) -> torch Linear weight (out, in), inputs reordered HWC -> CHW if flattened."""
    if hwc is None:
        return np.ascontiguousarray(kernel.T)
    h, w, c = hwc
    return np.ascontiguousarray(kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1))


def _dense_t2k(weight: np.ndarray, hwc) -> np.ndarray:
    if hwc is None:
        return np.ascontiguousarray(weight.T)
    h, w, c = hwc
    return np.ascontiguousarray(weight.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1))


def _features_k2t(vector: np.ndarray, hwc) -> np.ndarray:
    if hwc is None:
        return vector
    h, w, c = hwc
    return np.ascontiguousarray(vector.reshape(h, w, c).transpose(2, 0, 1).reshape(-1))


def _features_t2k(vector: np.ndarray, hwc) -> np.ndarray:
    if hwc is None:
        return vector
    h, w, c = hwc
    return np.ascontiguousarray(vector.reshape(c, h, w).transpose(1, 2, 0).reshape(-1))


def _keras_weight_pairs(step: KerasStep, unit: TorchUnit):
    """[(keras variable, torch tensor, k2t(array), t2k(array), label)] for one paired layer, checking config."""
    layer, mod, hwc = step.layer, unit.module, step.flatten_hwc
    where = f"Keras layer {step.path!r} ({step.kind}) <-> torch module {unit.name!r} ({type(mod).__name__})"
    pairs = []
    if unit.kind == "conv2d":
        pairs.append((layer.kernel, mod.weight, lambda a: a.transpose(3, 2, 0, 1), lambda a: a.transpose(2, 3, 1, 0),
                      "kernel"))
    elif unit.kind == "dense":
        pairs.append((layer.kernel, mod.weight, lambda a: _dense_k2t(a, hwc), lambda a: _dense_t2k(a, hwc), "kernel"))
    if unit.kind in ("conv2d", "dense"):
        has_bias = getattr(layer, "use_bias", True)
        if has_bias != (mod.bias is not None):
            raise ParityError(f"{where}: bias on one side only (Keras use_bias={has_bias}, "
                              f"torch bias={'present' if mod.bias is not None else 'None'})")
        if has_bias:
            pairs.append((layer.bias, mod.bias, lambda a: a, lambda a: a, "bias"))
    if unit.kind == "batchnorm":
        momentum = 1.0 - float(layer.momentum)
        if not math.isclose(float(layer.epsilon), float(mod.eps), rel_tol=1e-6):
            raise ParityError(f"{where}: epsilon differs (Keras {layer.epsilon}, torch eps={mod.eps}); "
                              f"build the torch layer with eps={layer.epsilon}")
        if mod.momentum is None or not math.isclose(momentum, float(mod.momentum), rel_tol=1e-6, abs_tol=1e-12):
            raise ParityError(f"{where}: momentum differs (Keras {layer.momentum} means torch momentum={momentum:g}, "
                              f"torch has {mod.momentum})")
        if bool(layer.scale) != mod.affine:
            raise ParityError(f"{where}: Keras center/scale={layer.scale} but torch affine={mod.affine}")
        named = ([("gamma", "weight"), ("beta", "bias")] if layer.scale else []) + \
            [("moving_mean", "running_mean"), ("moving_variance", "running_var")]
        for keras_name, torch_name in named:
            pairs.append((getattr(layer, keras_name), getattr(mod, torch_name),
                          lambda a: _features_k2t(a, hwc), lambda a: _features_t2k(a, hwc), keras_name))
    expected = len(layer.weights)
    if len(pairs) != expected:
        raise ParityError(f"{where}: weight count mismatch (Keras layer has {expected} weights, "
                          f"the rule for {unit.kind} maps {len(pairs)})")
    return where, pairs


_KERAS_WEIGHTED = {"Conv2D": "conv2d", "Dense": "dense", "BatchNormalization": "batchnorm"}


def _weighted_pairs(keras_model, torch_module):
    steps = [s for s in walk_keras(keras_model) if s.kind in _KERAS_WEIGHTED]
    units = [u for u in walk_torch(torch_module) if u.kind != "plain"]
    for i in range(max(len(steps), len(units))):
        if i >= len(steps):
            raise ParityError(f"weight count mismatch: torch module {units[i].name!r} ({type(units[i].module).__name__})"
                              f" has no Keras counterpart (Keras has {len(steps)} weighted layers, torch {len(units)})")
        if i >= len(units):
            raise ParityError(f"weight count mismatch: Keras layer {steps[i].path!r} ({steps[i].kind}) has no torch "
                              f"counterpart (Keras has {len(steps)} weighted layers, torch {len(units)})")
        if _KERAS_WEIGHTED[steps[i].kind] != units[i].kind:
            raise ParityError(f"layer kinds differ at weighted layer #{i}: Keras {steps[i].path!r} ({steps[i].kind}) "
                              f"vs torch {units[i].name!r} ({type(units[i].module).__name__})")
        yield _keras_weight_pairs(steps[i], units[i])


def copy_weights(src, dst) -> None:
    """Copy all weights from ``src`` to ``dst``: Keras -> torch or torch -> Keras, same architecture.

    All arrays are converted and checked first; nothing is assigned unless everything fits (ParityError otherwise,
    naming the layer). Frozen/trainable flags are not changed.
    """
    src_keras, dst_keras = isinstance(src, keras.Model), isinstance(dst, keras.Model)
    src_torch, dst_torch = isinstance(src, nn.Module), isinstance(dst, nn.Module)
    if src_keras and dst_torch:
        keras_model, torch_module, to_torch = src, dst, True
    elif src_torch and dst_keras:
        keras_model, torch_module, to_torch = dst, src, False
    else:
        raise ParityError(f"copy_weights copies between a Keras model and a torch module, "
                          f"got {type(src).__name__} -> {type(dst).__name__}")
    plan = []  # (assign, array)
    for where, pairs in _weighted_pairs(keras_model, torch_module):
        for variable, tensor, k2t, t2k, label in pairs:
            if to_torch:
                array = k2t(_np32(variable))
                target_shape = tuple(tensor.shape)
            else:
                array = t2k(_np32(tensor))
                target_shape = tuple(variable.shape)
            if array.shape != target_shape:
                src_shape = tuple(variable.shape) if to_torch else tuple(tensor.shape)
                raise ParityError(f"{where}: shape mismatch for {label}: source {src_shape} converts to "
                                  f"{array.shape}, destination is {target_shape}")
            plan.append((tensor if to_torch else variable, np.array(array, order="C", copy=True)))
    # Everything converted and checked: assign. (Should an assignment still fail, e.g. a Keras variable of an
    # unusual dtype, the ones already made are rolled back.)
    done = []
    with torch.no_grad():
        try:
            for target, array in plan:
                if to_torch:
                    previous = target.detach().clone()
                    target.copy_(torch.from_numpy(array))
                else:
                    previous = np.array(target.numpy())
                    target.assign(array)
                done.append((target, previous))
        except Exception as exc:
            for target, previous in reversed(done):
                if to_torch:
                    target.copy_(previous)
                else:
                    target.assign(previous)
            raise ParityError(f"copy_weights: assigning failed ({exc}); the destination was restored") from exc


# --- user models -----------------------------------------------------------------------------------------


MAX_KERAS_CONFIG_BYTES = 64 << 20  # a .keras config.json is the architecture as JSON: ~5 MB for the largest


def keras_config_size(path: Path) -> int:
    """The uncompressed size of a .keras archive's config.json, refused above the bound before it is read (a
    zip entry that inflates to GBs); zipfile never reads past the size the entry declares."""
    try:
        with zipfile.ZipFile(path) as archive:
            size = archive.getinfo("config.json").file_size
    except (zipfile.BadZipFile, KeyError, OSError) as error:
        raise ParityError(f"{path} is not a readable .keras archive ({error}); save the model again with "
                          "model.save()") from None
    if size > MAX_KERAS_CONFIG_BYTES:
        raise ParityError(f"{path}: its config.json inflates to {size:,} bytes, more than the bound "
                          f"{MAX_KERAS_CONFIG_BYTES:,} (a damaged or hostile file); save the model again")
    return size


def load_keras_model(path: str | os.PathLike):
    """Load a Keras model file (``.keras``, ``.h5``/``.hdf5``) without running code from it.

    ``safe_mode=True``: a Lambda layer's serialized Python bytecode is refused (Keras raises), not executed;
    ``compile=False``: no optimizer/loss objects are deserialized. Only built-in layers load (no custom_objects).
    """
    path = Path(path)
    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise ParityError(f"{path}: expected a .keras or .h5 Keras model file")
    if not path.is_file():
        raise ParityError(f"{path} does not exist")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):  # Keras itself would say "File not found"
        raise ParityError(f"{path} is not a .keras archive (not a zip file): it is damaged or was not saved by "
                          "Keras; save the model again with model.save()")
    if path.suffix == ".keras":
        keras_config_size(path)
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # damaged archive, HDF5 error, refused Lambda code: none is a bug of ours
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ParityError(f"cannot load Keras model {path}: {first_line}") from None


def max_abs_diff(keras_model, torch_module: nn.Module, x_nhwc: np.ndarray) -> float:
    """Largest |Keras(x) - torch(x)| on one batch, x given in Keras layout (rank-4 inputs are transposed)."""
    x = np.asarray(x_nhwc, dtype=np.float32)
    expected = _np32(keras_model(x, training=False))
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2) if x.ndim == 4 else x))
    with torch.no_grad():
        got = torch_module.eval()(xt).numpy()
    if got.ndim == 4:
        got = got.transpose(0, 2, 3, 1)
    if got.shape != expected.shape:
        raise ParityError(f"output shapes differ: Keras {expected.shape}, torch {got.shape} (in Keras layout)")
    return float(np.max(np.abs(got - expected)))


class ParityUsageError(ValueError, UserError):
    """A bad argument to ``python -m keras_ref.parity`` (a missing file, inputs of the wrong shape): exit 2."""


def _load_inputs(path: str, arrays: dict, input_shape: tuple, batch: int, classes: int):
    """(x, y or None): the first ``batch`` samples under "x" (or the only array besides "y"), checked against the
    model's input; integer labels 0..classes-1 under "y", optional, one per sample of x."""
    from .cli_checks import model_samples

    y = arrays.pop("y", None)
    if "x" in arrays:
        arrays = {"x": arrays["x"]}
    if len(arrays) != 1:
        raise ParityUsageError(f"--inputs {path}: holds {sorted(arrays)}; put the samples under 'x' (labels, "
                               "optional, under 'y')")
    key = next(iter(arrays))
    [x] = model_samples(path, arrays, [dict(name=key, shape=(None, *input_shape))], take=batch)
    if y is not None:
        n = len(arrays[key])
        if y.dtype.kind not in "iu" or y.reshape(len(y), -1).shape != (n, 1):
            raise ParityUsageError(f"--inputs {path}: 'y' is {y.dtype} {y.shape}; give one integer class index per "
                                   f"sample of {key!r} ({n}), shape ({n},)")
        y = y.reshape(-1)[:batch].astype(np.int64)
        if y.min() < 0 or y.max() >= classes:
            raise ParityUsageError(f"--inputs {path}: 'y' holds class {y.min() if y.min() < 0 else y.max()}; the "
                                   f"model has {classes} outputs: give labels 0 to {classes - 1}")
    return x, y


def _report(model, twin, x, source: str, atol: float) -> dict:
    """The forward check under ``keras_ref.tolerance.RULE`` (the worst output decides)."""
    from .convert import compare
    from .tolerance import RULE, tolerance, within

    outputs = compare(model, twin, [np.asarray(x, dtype=np.float32)])
    for r in outputs:
        r["tolerance"] = tolerance(r["twin_float32_error"], r["max_abs_output"], atol)
    worst = max(outputs, key=lambda r: r["max_abs_diff"] / r["tolerance"])
    return {"model": model.name, "parameters": sum(p.numel() for p in twin.parameters()), "inputs": source,
            "samples": int(len(x)), "max_abs_diff": worst["max_abs_diff"], "tolerance": worst["tolerance"],
            "twin_float32_error": worst["twin_float32_error"], "atol": atol, "tolerance_rule": RULE,
            "passed": all(within(r, atol) for r in outputs),
            "versions": {"keras": keras.__version__, "torch": torch.__version__, "numpy": np.__version__}}


def main(argv=None) -> int:
    return exit_on_user_error(_main, argv)


def _main(argv) -> int:
    from .cli_checks import (MAX_SAMPLES, MAX_TRAIN_STEPS, check_count, check_seed, check_tolerance,
                             check_train_steps, read_inputs)
    from .convert import compile_config_of_file, convert
    from .step_parity import TRAIN_ATOL, train_step_parity
    from .tolerance import ATOL

    parser = argparse.ArgumentParser(
        prog="python -m keras_ref.parity",
        description="Check a Keras model file against its PyTorch twin (loaded with safe_mode=True: Lambda code "
                    "is never run). Exit status 0 when within tolerance, 1 when not, 2 for bad input.")
    parser.add_argument("model", help=".keras or .h5 file")
    parser.add_argument("--batch", type=int, default=8,
                        help=f"samples compared (the first N of --inputs; 1 to {MAX_SAMPLES}: all run in one batch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--atol", type=float, default=ATOL,
                        help="floor of the tolerance, relative to max(1, largest output); the tolerance is 4x the "
                             "twin's own float32 error (against its float64 run) plus this (keras_ref.tolerance)")
    parser.add_argument("--inputs", metavar="NPZ", help="real samples: array 'x' as the model takes them (Keras "
                        "layout, no scaling applied), optional integer labels 'y' for --train-steps; default: random "
                        "in [0, 1)")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="write the report as JSON to PATH, or to stdout without PATH (then nothing else is "
                        "printed there)")
    parser.add_argument("--train-steps", type=int, default=0, metavar="N",
                        help="also train N steps on both sides with the file's own optimizer and loss (its compile "
                        "config; Adam + sparse categorical cross-entropy if it has none) and compare the weights; "
                        f"at most {MAX_TRAIN_STEPS}: float32 rounding compounds with every step, so past that a "
                        "mismatch no longer tells a wrong optimizer formula from rounding")
    parser.add_argument("--train-atol", type=float, default=TRAIN_ATOL,
                        help=f"max |Δ| of any weight after --train-steps (default {TRAIN_ATOL:g})")
    args = parser.parse_args(argv)
    check_count("--batch", args.batch, "samples")
    check_seed(args.seed)
    check_tolerance("--atol", args.atol)
    check_tolerance("--train-atol", args.train_atol)
    check_train_steps(args.train_steps)
    arrays = read_inputs(args.inputs) if args.inputs else None
    try:
        model = load_keras_model(args.model)
    except (OSError, ValueError) as error:
        raise ParityUsageError(f"{args.model}: cannot load it as a Keras model ({error})") from None
    shape = _model_input_shape(model)[1:]
    if None in shape and not args.inputs:
        raise ParityUsageError(f"{model.name} takes inputs of shape {shape}: random ones need every size; give "
                               "real samples with --inputs")
    rng = np.random.default_rng(args.seed)
    if args.inputs:
        x, y = _load_inputs(args.inputs, arrays, shape, args.batch, int(model.outputs[0].shape[-1]))
    else:
        x, y = rng.random((args.batch, *shape), dtype=np.float32), None
    twin = convert(model)
    report = _report(model, twin, x, args.inputs or "random [0, 1)", args.atol)
    lines = [f"{model.name}: {report['parameters']:,} parameters; max |Keras - PyTorch| on {len(x)} "
             f"{'samples from ' + args.inputs if args.inputs else 'random inputs in [0, 1)'} = "
             f"{report['max_abs_diff']:.3g} (tolerance {report['tolerance']:.3g}: 4 x the twin's float32 error "
             f"{report['twin_float32_error']:.3g} + atol {args.atol:g})"]
    if args.train_steps:
        if y is None:
            y = rng.integers(0, int(model.outputs[0].shape[-1]), len(x))
        steps = train_step_parity(model, x, y, args.train_steps, compile_config_of_file(args.model))
        steps.update(atol=args.train_atol, passed=steps["max_abs_weight_diff"] <= args.train_atol,
                     labels="from --inputs" if args.inputs and y is not None else "random")
        report["train_steps"] = steps
        report["passed"] = report["passed"] and steps["passed"]
        lines.append(f"after {steps['steps']} {steps['optimizer']} steps on {steps['loss']}: max |Δ weight| = "
                     f"{steps['max_abs_weight_diff']:.3g} at {steps['worst_weight']} (atol {args.train_atol:g})")
    if args.json:
        text = json.dumps(report, indent=2) + "\n"
        if args.json == "-":
            print(text, end="")
        else:
            write_text(args.json, text)
    if args.json != "-":
        print("\n".join(lines))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
