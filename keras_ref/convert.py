"""Convert any Keras 3 functional graph to a readable PyTorch twin, save it, and copy weights both ways.

- ``convert(keras_model)``: the twin, a ``torch.fx.GraphModule`` with one named submodule per Keras layer (its
  ``.code`` reads as the Keras graph), weights copied, in eval mode.
- ``save_converted(keras_model, out_dir)``: ``graph.json`` + ``weights.safetensors`` (what
  ``lightning_cnn.load_converted`` reads without TensorFlow), ``parity.json`` (the check that was run) and, for a
  compiled model, ``compile.json``. Written to a temporary folder first: a failed save leaves nothing behind.
- ``copy_weights_to_keras(twin, keras_model)``: the weights back (fine-tune in PyTorch, check in Keras).
- CLI: ``python -m keras_ref.convert MODEL.keras --out FOLDER [--inputs x.npz] [--atol 1e-6]``.

One rule per Keras layer class (``RULES``): the op it becomes (``lightning_cnn.converted.ops.OPS``), a config
extractor that refuses what the op cannot reproduce, and its weight mapping in both directions. Layout: rank-4
tensors are NHWC in Keras and NCHW in the twin; every other rank keeps Keras's layout (see ``LAYOUT_RULE``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ._tf import load_tensorflow

keras = load_tensorflow()  # the guard, then TensorFlow: see _tf.py

import lightning_cnn  # noqa: E402  (its version goes into parity.json)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from keras_ref.parity import ParityError, load_keras_model  # noqa: E402
from lightning_cnn.atomic import write_text  # noqa: E402
from lightning_cnn.converted.graph import (FORMAT, LAYOUT_RULE, VERSION, ConvertedModelError,  # noqa: E402
                                           build_twin, python_name)
from lightning_cnn.converted.ops import ACTIVATIONS  # noqa: E402
from lightning_cnn.errors import exit_on_user_error  # noqa: E402
from keras_ref.tolerance import (ATOL, RULE, float64_inputs, float64_twin, max_abs, tolerance,  # noqa: E402
                                 within)

__all__ = ["convert", "save_converted", "copy_weights_to_keras", "extract_graph", "RULES", "supported_layers",
           "layer_table", "main"]


# --- what one layer call looks like to a rule ------------------------------------------------------------------


@dataclass
class Call:
    """One call of a Keras layer: shapes in Keras layout (batch None), and the context rules may need."""

    layer: object
    path: str  # where it is: "outer_model/inner_model/layer"
    in_shapes: list
    out_shapes: list
    flatten_hwc: tuple | None = None  # Dense fed by a Flatten(order='chw') of an (H, W, C) tensor

    @property
    def kind(self) -> str:
        return type(self.layer).__name__

    @property
    def rank(self) -> int:
        return len(self.in_shapes[0])

    def fail(self, why: str):
        raise ParityError(f"layer {self.path!r} ({self.kind}): {why}")


def twin_dim(axis: int, rank: int) -> int:
    """The twin's dimension for a Keras axis of a rank-``rank`` tensor (NHWC -> NCHW for rank 4)."""
    axis = axis % rank
    return (0, 2, 3, 1)[axis] if rank == 4 else axis


def _pairs(value, n) -> list:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * n


def _activation(call: Call, fn=None) -> str:
    fn = fn if fn is not None else call.layer.activation
    name = getattr(fn, "__name__", None)
    if name not in ACTIVATIONS:
        call.fail(f"activation {name or fn!r} is not supported (supported: {', '.join(sorted(ACTIVATIONS))})")
    return name


def _channels_last(call: Call, cfg: dict):
    if cfg.get("data_format", "channels_last") not in (None, "channels_last"):
        call.fail(f"data_format={cfg['data_format']!r}: only channels_last models are supported")


def _need_rank(call: Call, *ranks):
    if call.rank not in ranks:
        call.fail(f"expects a rank-{'/'.join(map(str, ranks))} input, got shape {call.in_shapes[0]}")


# --- config extractors (Keras layer -> op config); each refuses what its op cannot reproduce ---------------------


def _conv_config(call: Call, cfg: dict) -> dict:
    rank = 1 if call.kind == "Conv1D" else 2
    _need_rank(call, rank + 2)
    _channels_last(call, cfg)
    if cfg["padding"] not in ("valid", "same") + (("causal",) if rank == 1 else ()):
        call.fail(f"padding {cfg['padding']!r} is not supported")
    kernel = _pairs(cfg["kernel_size"], rank)
    in_channels = int(call.in_shapes[0][-1])
    common = dict(kernel_size=kernel, strides=_pairs(cfg["strides"], rank), padding=cfg["padding"],
                  dilation=_pairs(cfg["dilation_rate"], rank), use_bias=bool(cfg["use_bias"]),
                  activation=_activation(call))
    if call.kind == "DepthwiseConv2D":
        mult = int(cfg["depth_multiplier"])
        return dict(rank=2, in_channels=in_channels, filters=in_channels * mult, groups=in_channels, **common)
    if call.kind == "SeparableConv2D":
        return dict(in_channels=in_channels, filters=int(cfg["filters"]), depth_multiplier=int(cfg["depth_multiplier"]),
                    **common)
    return dict(rank=rank, in_channels=in_channels, filters=int(cfg["filters"]), groups=int(cfg.get("groups", 1)),
                **common)


def _conv_transpose_config(call: Call, cfg: dict) -> dict:
    _need_rank(call, 4)
    _channels_last(call, cfg)
    if cfg.get("output_padding") is not None:
        call.fail("output_padding is not supported")
    return dict(in_channels=int(call.in_shapes[0][-1]), filters=int(cfg["filters"]),
                kernel_size=_pairs(cfg["kernel_size"], 2), strides=_pairs(cfg["strides"], 2),
                padding=cfg["padding"], dilation=_pairs(cfg["dilation_rate"], 2), use_bias=bool(cfg["use_bias"]),
                activation=_activation(call))


def _dense_config(call: Call, cfg: dict) -> dict:
    return dict(in_features=int(call.in_shapes[0][-1]), units=int(cfg["units"]), use_bias=bool(cfg["use_bias"]),
                activation=_activation(call))


def _one_axis(call: Call, axis) -> int:
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            call.fail(f"normalisation over several axes {axis} is not supported")
        axis = axis[0]
    return int(axis)


def _batch_norm_config(call: Call, cfg: dict) -> dict:
    axis = _one_axis(call, cfg["axis"]) % call.rank
    if axis == 0:
        call.fail("normalisation over the batch axis is not supported")
    if cfg.get("renorm") or cfg.get("synchronized"):
        call.fail("renorm / synchronized batch normalisation is not supported")
    return dict(num_features=int(call.in_shapes[0][axis]), dim=twin_dim(axis, call.rank), eps=float(cfg["epsilon"]),
                momentum=1.0 - float(cfg["momentum"]), center=bool(cfg["center"]), scale=bool(cfg["scale"]))


def _layer_norm_axes(call: Call) -> list:
    axis = call.layer.axis
    axes = sorted({int(a) % call.rank for a in (axis if isinstance(axis, (list, tuple)) else [axis])})
    if 0 in axes:
        call.fail("normalisation over the batch axis is not supported")
    return axes


def _layer_norm_config(call: Call, cfg: dict) -> dict:
    if cfg.get("rms_scaling"):
        call.fail("rms_scaling=True is not supported")
    axes = _layer_norm_axes(call)
    dims = sorted(twin_dim(a, call.rank) for a in axes)
    twin_shape = [int(call.in_shapes[0][next(a for a in axes if twin_dim(a, call.rank) == d)]) for d in dims]
    return dict(dims=dims, shape=twin_shape, eps=float(cfg["epsilon"]), center=bool(cfg["center"]),
                scale=bool(cfg["scale"]))


def _pool_config(call: Call, cfg: dict) -> dict:
    rank = 1 if call.kind.endswith("1D") else 2
    _need_rank(call, rank + 2)
    _channels_last(call, cfg)
    if cfg["padding"] not in ("valid", "same"):
        call.fail(f"padding {cfg['padding']!r} is not supported")
    pool = _pairs(cfg["pool_size"], rank)
    strides = _pairs(cfg["strides"] if cfg["strides"] is not None else cfg["pool_size"], rank)
    return dict(rank=rank, kind="max" if call.kind.startswith("Max") else "avg", pool_size=pool, strides=strides,
                padding=cfg["padding"])


def _global_pool_config(call: Call, cfg: dict) -> dict:
    _need_rank(call, 3 if call.kind.endswith("1D") else 4)
    _channels_last(call, cfg)
    return dict(kind="avg" if "Average" in call.kind else "max", dims=[2, 3] if call.rank == 4 else [1],
                keepdims=bool(cfg.get("keepdims", False)))


def _pad_config(call: Call, cfg: dict) -> dict:
    _need_rank(call, 4)
    _channels_last(call, cfg)
    if call.kind == "ZeroPadding2D":
        (top, bottom), (left, right) = call.layer.padding
        return dict(pads=[int(top), int(bottom), int(left), int(right)])
    (top, bottom), (left, right) = call.layer.cropping
    return dict(pads=[-int(top), -int(bottom), -int(left), -int(right)])


def _upsample_config(call: Call, cfg: dict) -> dict:
    _need_rank(call, 4)
    _channels_last(call, cfg)
    if cfg["interpolation"] not in ("nearest", "bilinear"):
        call.fail(f"interpolation {cfg['interpolation']!r} is not supported (nearest, bilinear)")
    return dict(size=_pairs(cfg["size"], 2), interpolation=cfg["interpolation"])


def _flatten_config(call: Call, cfg: dict) -> dict:
    _channels_last(call, cfg)
    return dict(order="hwc")  # extract_graph switches it to 'chw' when only Dense layers consume it


def _merge_config(call: Call, cfg: dict) -> dict:
    ranks = {len(s) for s in call.in_shapes}
    if len(ranks) != 1:
        call.fail(f"inputs of different ranks {call.in_shapes} (broadcasting across layouts is not supported)")
    return dict(kind=call.kind.lower())


def _concat_config(call: Call, cfg: dict) -> dict:
    return dict(dim=twin_dim(int(cfg["axis"]), call.rank))


def _activation_config(call: Call, cfg: dict) -> dict:
    dim = twin_dim(-1, call.rank)
    if call.kind == "Activation":
        return dict(name=_activation(call), dim=dim)
    if call.kind == "Softmax":
        axis = cfg.get("axis", -1)
        return dict(name="softmax", dim=twin_dim(_one_axis(call, axis), call.rank))
    if call.kind == "ReLU":
        max_value = cfg.get("max_value")
        return dict(name="relu", dim=dim, kwargs=dict(negative_slope=float(cfg.get("negative_slope", 0.0)),
                                                      max_value=None if max_value is None else float(max_value),
                                                      threshold=float(cfg.get("threshold", 0.0))))
    if call.kind == "LeakyReLU":
        return dict(name="leaky_relu", dim=dim, kwargs=dict(negative_slope=float(cfg["negative_slope"])))
    return dict(name="elu", dim=dim, kwargs=dict(alpha=float(cfg.get("alpha", 1.0))))  # ELU


def _to_twin_array(array: np.ndarray, rank: int) -> np.ndarray:
    """A constant broadcast against a Keras tensor of ``rank`` (batch axis dropped) in the twin's layout."""
    array = np.asarray(array, dtype=np.float32)
    if rank == 4 and array.ndim >= 1:
        array = array.reshape((1,) * (3 - array.ndim) + array.shape).transpose(2, 0, 1)
    return np.ascontiguousarray(array)


def _from_twin_array(array: np.ndarray, rank: int) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(1, 2, 0)) if rank == 4 and array.ndim == 3 else array


def _prelu_config(call: Call, cfg: dict) -> dict:
    return dict(shape=list(_to_twin_array(np.zeros(call.layer.alpha.shape), call.rank).shape))


def _rescaling_arrays(call: Call):
    cfg = call.layer.get_config()
    return _to_twin_array(cfg["scale"], call.rank), _to_twin_array(cfg["offset"], call.rank)


def _rescaling_config(call: Call, cfg: dict) -> dict:
    scale, offset = _rescaling_arrays(call)
    return dict(kind="rescale", shape=list(np.broadcast_shapes(scale.shape, offset.shape)))


def _normalization_config(call: Call, cfg: dict) -> dict:
    if call.layer.mean is None:
        call.fail("is not adapted (call adapt() or pass mean/variance) ")
    mean = keras.ops.convert_to_numpy(call.layer.mean)
    return dict(kind="normalize", shape=list(_to_twin_array(mean[0], call.rank).shape),
                epsilon=float(keras.config.epsilon()), invert=bool(cfg.get("invert", False)))


def _dropout_config(call: Call, cfg: dict) -> dict:
    kind = {"GaussianNoise": "noise", "GaussianDropout": "gaussian", "SpatialDropout1D": "spatial",
            "SpatialDropout2D": "spatial"}.get(call.kind, "dropout")
    rate = float(cfg["stddev"] if kind == "noise" else cfg["rate"])
    noise_shape = cfg.get("noise_shape") if kind == "dropout" else None
    if noise_shape is not None:
        noise_shape = [None if d is None else int(d) for d in noise_shape]
        noise_shape = [noise_shape[a] for a in (0, 3, 1, 2)] if len(noise_shape) == 4 else noise_shape
    return dict(kind=kind, rate=rate, channel_dim=twin_dim(-1, call.rank), noise_shape=noise_shape)


def _embedding_config(call: Call, cfg: dict) -> dict:
    if cfg.get("mask_zero"):
        call.fail("mask_zero=True is not supported (masking has no twin counterpart)")
    return dict(input_dim=int(cfg["input_dim"]), output_dim=int(cfg["output_dim"]))


def _recurrent_config(call: Call, cfg: dict) -> dict:
    _need_rank(call, 3)
    defaults = dict(activation="tanh", recurrent_activation="sigmoid", use_bias=True, return_state=False,
                    go_backwards=False, stateful=False)
    if call.kind == "GRU":
        defaults["reset_after"] = True
    wrong = {k: cfg.get(k) for k, v in defaults.items() if cfg.get(k, v) != v}
    if wrong:
        call.fail(f"{wrong} is not supported (the twin is torch's {call.kind} with Keras's defaults {defaults})")
    return dict(kind=call.kind.lower(), input_size=int(call.in_shapes[0][-1]), units=int(cfg["units"]),
                return_sequences=bool(cfg["return_sequences"]))


# --- weight mappings: Keras arrays {weight name: array} <-> twin state {parameter name: array} -----------------


def _conv_kernel_k2t(kernel):
    rank = kernel.ndim - 2
    return kernel.transpose(rank + 1, rank, *range(rank))


def _conv_kernel_t2k(weight):
    rank = weight.ndim - 2
    return weight.transpose(*range(2, rank + 2), 1, 0)


def _depthwise_k2t(kernel):  # (kh, kw, in, mult) -> (in*mult, 1, kh, kw): output channel c*mult + m
    kh, kw, cin, mult = kernel.shape
    return kernel.reshape(kh, kw, cin * mult).transpose(2, 0, 1)[:, None]


def _depthwise_t2k(weight, mult):
    out, _, kh, kw = weight.shape
    return weight[:, 0].transpose(1, 2, 0).reshape(kh, kw, out // mult, mult)


def _conv_k2t(call, w):
    if call.kind == "DepthwiseConv2D":
        out = {"weight": _depthwise_k2t(w["kernel"])}
    elif call.kind == "SeparableConv2D":
        out = {"depthwise.weight": _depthwise_k2t(w["depthwise_kernel"]),
               "pointwise.weight": _conv_kernel_k2t(w["pointwise_kernel"])}
        return out | ({"pointwise.bias": w["bias"]} if "bias" in w else {})
    else:
        out = {"weight": _conv_kernel_k2t(w["kernel"])}
    return out | ({"bias": w["bias"]} if "bias" in w else {})


def _conv_t2k(call, t):
    if call.kind == "DepthwiseConv2D":
        out = {"kernel": _depthwise_t2k(t["weight"], int(call.layer.depth_multiplier))}
    elif call.kind == "SeparableConv2D":
        out = {"depthwise_kernel": _depthwise_t2k(t["depthwise.weight"], int(call.layer.depth_multiplier)),
               "pointwise_kernel": _conv_kernel_t2k(t["pointwise.weight"])}
        return out | ({"bias": t["pointwise.bias"]} if "pointwise.bias" in t else {})
    else:
        out = {"kernel": _conv_kernel_t2k(t["weight"])}
    return out | ({"bias": t["bias"]} if "bias" in t else {})


def _conv_transpose_k2t(call, w):  # Keras (kh, kw, out, in) -> torch (in, out, kh, kw)
    return {"weight": w["kernel"].transpose(3, 2, 0, 1)} | ({"bias": w["bias"]} if "bias" in w else {})


def _conv_transpose_t2k(call, t):
    return {"kernel": t["weight"].transpose(2, 3, 1, 0)} | ({"bias": t["bias"]} if "bias" in t else {})


def _dense_k2t(call, w):
    kernel = w["kernel"]
    if call.flatten_hwc is not None:  # columns from H,W,C (Keras Flatten) to C,H,W (twin Flatten order='chw')
        h, wd, c = call.flatten_hwc
        kernel = kernel.reshape(h, wd, c, -1).transpose(2, 0, 1, 3).reshape(h * wd * c, -1)
    return {"weight": kernel.T} | ({"bias": w["bias"]} if "bias" in w else {})


def _dense_t2k(call, t):
    kernel = t["weight"].T
    if call.flatten_hwc is not None:
        h, wd, c = call.flatten_hwc
        kernel = kernel.reshape(c, h, wd, -1).transpose(1, 2, 0, 3).reshape(h * wd * c, -1)
    return {"kernel": kernel} | ({"bias": t["bias"]} if "bias" in t else {})


_BN_NAMES = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
             ("moving_variance", "running_var"))


def _batch_norm_k2t(call, w):
    return {t: w[k] for k, t in _BN_NAMES if k in w}


def _batch_norm_t2k(call, t):
    return {k: t[tn] for k, tn in _BN_NAMES if tn in t}


def _layer_norm_perm(call) -> list:
    """Axis order taking Keras's gamma (sorted Keras axes) to the twin's (sorted twin dims)."""
    axes = _layer_norm_axes(call)
    return sorted(range(len(axes)), key=lambda i: twin_dim(axes[i], call.rank))


def _layer_norm_k2t(call, w):
    perm = _layer_norm_perm(call)
    return {t: w[k].transpose(perm) for k, t in (("gamma", "weight"), ("beta", "bias")) if k in w}


def _layer_norm_t2k(call, t):
    inverse = np.argsort(_layer_norm_perm(call))
    return {k: t[tn].transpose(inverse) for k, tn in (("gamma", "weight"), ("beta", "bias")) if tn in t}


def _prelu_k2t(call, w):
    return {"alpha": _to_twin_array(w["alpha"], call.rank)}


def _prelu_t2k(call, t):
    return {"alpha": _from_twin_array(t["alpha"], call.rank)}


def _rescaling_k2t(call, w):
    scale, offset = _rescaling_arrays(call)
    shape = np.broadcast_shapes(scale.shape, offset.shape)
    return {"scale": np.broadcast_to(scale, shape), "offset": np.broadcast_to(offset, shape)}


def _normalization_k2t(call, w):  # the twin's buffers: scale = mean, offset = variance (broadcast shapes)
    mean = keras.ops.convert_to_numpy(call.layer.mean)[0]
    variance = keras.ops.convert_to_numpy(call.layer.variance)[0]
    return {"scale": _to_twin_array(mean, call.rank), "offset": _to_twin_array(variance, call.rank)}


def _normalization_t2k(call, t):
    shapes = {w.name: tuple(w.shape) for w in call.layer.weights}
    return {k: _from_twin_array(t[tn], call.rank).reshape(shapes[k])
            for k, tn in (("mean", "scale"), ("variance", "offset")) if k in shapes}


def _embedding_k2t(call, w):
    return {"weight": w["embeddings"]}


def _embedding_t2k(call, t):
    return {"embeddings": t["weight"]}


def _gate_blocks(array, axis, order):
    blocks = np.split(array, 3, axis=axis)
    return np.concatenate([blocks[i] for i in order], axis=axis)


_GRU_TO_TORCH = (1, 0, 2)  # Keras gates z, r, h -> torch r, z, n (the permutation is its own inverse)


def _recurrent_k2t(call, w):
    kernel, recurrent = w["kernel"], w["recurrent_kernel"]
    if call.kind == "LSTM":  # gates i, f, c, o on both sides; one Keras bias = torch b_ih + b_hh
        b_ih, b_hh = w["bias"], np.zeros_like(w["bias"])
    else:
        kernel, recurrent = _gate_blocks(kernel, 1, _GRU_TO_TORCH), _gate_blocks(recurrent, 1, _GRU_TO_TORCH)
        b_ih, b_hh = (_gate_blocks(b, 0, _GRU_TO_TORCH) for b in w["bias"])
    return {"rnn.weight_ih_l0": kernel.T, "rnn.weight_hh_l0": recurrent.T, "rnn.bias_ih_l0": b_ih,
            "rnn.bias_hh_l0": b_hh}


def _recurrent_t2k(call, t):
    kernel, recurrent = t["rnn.weight_ih_l0"].T, t["rnn.weight_hh_l0"].T
    if call.kind == "LSTM":
        return {"kernel": kernel, "recurrent_kernel": recurrent, "bias": t["rnn.bias_ih_l0"] + t["rnn.bias_hh_l0"]}
    return {"kernel": _gate_blocks(kernel, 1, _GRU_TO_TORCH), "recurrent_kernel": _gate_blocks(recurrent, 1,
                                                                                              _GRU_TO_TORCH),
            "bias": np.stack([_gate_blocks(t[f"rnn.bias_{n}_l0"], 0, _GRU_TO_TORCH) for n in ("ih", "hh")])}


def _no_weights(call, arrays):
    return {}


# --- the registry --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """How one Keras layer class becomes one twin op, and how its weights go each way."""

    op: str
    config: Callable[[Call, dict], dict]
    to_torch: Callable[[Call, dict], dict] = _no_weights
    to_keras: Callable[[Call, dict], dict] = _no_weights


def _rules(names: str, rule: Rule) -> dict:
    return {name: rule for name in names.split()}


RULES: dict[str, Rule] = {
    **_rules("Conv1D Conv2D DepthwiseConv2D", Rule("conv", _conv_config, _conv_k2t, _conv_t2k)),
    "SeparableConv2D": Rule("separable_conv", _conv_config, _conv_k2t, _conv_t2k),
    "Conv2DTranspose": Rule("conv_transpose", _conv_transpose_config, _conv_transpose_k2t, _conv_transpose_t2k),
    "Dense": Rule("dense", _dense_config, _dense_k2t, _dense_t2k),
    "BatchNormalization": Rule("batch_norm", _batch_norm_config, _batch_norm_k2t, _batch_norm_t2k),
    "LayerNormalization": Rule("layer_norm", _layer_norm_config, _layer_norm_k2t, _layer_norm_t2k),
    **_rules("MaxPooling1D MaxPooling2D AveragePooling1D AveragePooling2D", Rule("pool", _pool_config)),
    **_rules("GlobalAveragePooling1D GlobalAveragePooling2D GlobalMaxPooling1D GlobalMaxPooling2D",
             Rule("global_pool", _global_pool_config)),
    **_rules("ZeroPadding2D Cropping2D", Rule("pad2d", _pad_config)),
    "UpSampling2D": Rule("upsample2d", _upsample_config),
    "Flatten": Rule("flatten", _flatten_config),
    "Reshape": Rule("reshape", lambda call, cfg: dict(target_shape=[int(d) for d in cfg["target_shape"]])),
    "Permute": Rule("permute", lambda call, cfg: dict(dims=[int(d) for d in cfg["dims"]])),
    **_rules("Add Subtract Multiply Average Maximum Minimum", Rule("merge", _merge_config)),
    "Concatenate": Rule("concat", _concat_config),
    **_rules("Activation ReLU LeakyReLU ELU Softmax", Rule("activation", _activation_config)),
    "PReLU": Rule("prelu", _prelu_config, _prelu_k2t, _prelu_t2k),
    "Rescaling": Rule("affine", _rescaling_config, _rescaling_k2t),
    "Normalization": Rule("affine", _normalization_config, _normalization_k2t, _normalization_t2k),
    **_rules("Dropout SpatialDropout1D SpatialDropout2D GaussianNoise GaussianDropout",
             Rule("dropout", _dropout_config)),
    "Embedding": Rule("embedding", _embedding_config, _embedding_k2t, _embedding_t2k),
    **_rules("LSTM GRU", Rule("recurrent", _recurrent_config, _recurrent_k2t, _recurrent_t2k)),
}


def supported_layers() -> dict[str, str]:
    """Keras layer class -> twin op."""
    return {name: rule.op for name, rule in sorted(RULES.items())}


def layer_table() -> str:
    """The Markdown table of docs/converting.md (a test keeps the two identical): twin op -> Keras classes."""
    by_op: dict[str, list] = {}
    for name, op in supported_layers().items():
        by_op.setdefault(op, []).append(f"`{name}`")
    lines = ["| twin op (`lightning_cnn.converted.ops.OPS`) | Keras layer classes |", "|---|---|"]
    return "\n".join(lines + [f"| `{op}` | {', '.join(names)} |" for op, names in sorted(by_op.items())])


# --- walking the Keras graph -------------------------------------------------------------------------------------


@dataclass
class Extraction:
    """graph.json's content plus, per twin module, the Keras layer and the call its weight rules need."""

    graph: dict
    modules: dict = field(default_factory=dict)  # module name -> Call (its first call)


def _shape(shape) -> list:
    return [None if d is None else int(d) for d in shape]


def _graph_of(model):
    """The Functional graph behind a model (a built Sequential has one), else ParityError."""
    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    if graph is None or not hasattr(graph, "_nodes_by_depth") or not getattr(graph, "inputs", None):
        raise ParityError(f"Keras model {model.name!r} ({type(model).__name__}) is not built or not functional: "
                          "give it an Input (keras.Input(shape)) first; subclassed models are not supported")
    return graph


def extract_graph(model) -> Extraction:
    """Walk ``model`` (nested models inlined, in dependency order) into graph.json's structure; ParityError for
    anything the twin cannot reproduce, before anything is built."""
    if not isinstance(model, keras.Model):
        raise ParityError(f"expected a Keras model, got {type(model).__name__}")
    taken: set = set()
    ext = Extraction(graph={})
    module_of: dict[int, str] = {}  # id(layer) -> module name
    modules, nodes = [], []
    consumers: dict[str, list] = {}  # value name -> node dicts that read it

    def trace(submodel, input_values: list, prefix: str) -> list:
        graph = _graph_of(submodel)
        env = {id(t): v for t, v in zip(graph.inputs, input_values)}
        for depth in sorted(graph._nodes_by_depth, reverse=True):
            for node in graph._nodes_by_depth[depth]:
                op = node.operation
                if type(op).__name__ == "InputLayer":
                    continue
                path = f"{prefix}{op.name}"
                ins = [env[id(t)] for t in node.input_tensors]
                if isinstance(op, keras.Model):
                    outs = trace(op, ins, path + "/")
                else:
                    outs = [layer_call(op, path, node, ins)]
                for tensor, value in zip(node.output_tensors, outs):
                    env[id(tensor)] = value
        return [env[id(t)] for t in graph.outputs]

    def layer_call(layer, path, node, ins):
        kind = type(layer).__name__
        call = Call(layer, path, [_shape(t.shape) for t in node.input_tensors],
                    [_shape(t.shape) for t in node.output_tensors])
        if not isinstance(layer, keras.layers.Layer):
            call.fail("a raw keras.ops operation in the graph is not supported; use the equivalent layer")
        rule = RULES.get(kind)
        if rule is None:
            call.fail(f"unsupported layer for the converter (supported: {', '.join(sorted(RULES))})")
        if len(node.output_tensors) != 1:
            call.fail(f"returns {len(node.output_tensors)} tensors; only single-output layers are supported")
        config = rule.config(call, layer.get_config())
        if id(layer) not in module_of:
            name = python_name(path.replace("/", "__"), taken)
            module_of[id(layer)] = name
            ext.modules[name] = call
            modules.append(dict(name=name, op=rule.op, config=config, keras_class=kind, keras_path=path))
        elif ext.modules[module_of[id(layer)]].in_shapes != call.in_shapes:
            call.fail("is called on inputs of different shapes; a shared layer must see one shape")
        name = module_of[id(layer)]
        value = python_name(name, taken) if any(n["module"] == name for n in nodes) else name
        nodes.append(dict(name=value, module=name, inputs=ins))
        for v in ins:
            consumers.setdefault(v, []).append(nodes[-1])
        return value

    inputs = []
    for tensor in _graph_of(model).inputs:
        name = python_name(tensor._keras_history.operation.name, taken)
        inputs.append(dict(name=name, shape=_shape(tensor.shape), dtype=str(tensor.dtype)))
    outputs = trace(model, [i["name"] for i in inputs], "")
    _flatten_before_dense(ext, modules, nodes, consumers, set(outputs))
    ext.graph = dict(format=FORMAT, version=VERSION, name=model.name, layout=LAYOUT_RULE, inputs=inputs,
                     modules=modules, nodes=nodes, outputs=outputs)
    return ext


def _flatten_before_dense(ext, modules, nodes, consumers, outputs) -> None:
    """A Flatten of an (H, W, C) tensor read only by Dense layers (each fed only by it) flattens in the twin's C,H,W
    order and those Dense layers get their input columns permuted instead (no NHWC copy at run time)."""
    by_name = {m["name"]: m for m in modules}
    calls_of = {}
    for node in nodes:
        calls_of.setdefault(node["module"], []).append(node)
    for module in modules:
        call = ext.modules[module["name"]]
        if module["op"] != "flatten" or call.rank != 4 or len(calls_of[module["name"]]) != 1:
            continue
        value = calls_of[module["name"]][0]["name"]
        readers = consumers.get(value, [])
        if value in outputs or not readers or any(by_name[r["module"]]["op"] != "dense" or
                                                  len(calls_of[r["module"]]) != 1 for r in readers):
            continue
        module["config"]["order"] = "chw"
        for reader in readers:
            ext.modules[reader["module"]].flatten_hwc = tuple(call.in_shapes[0][1:])


# --- weights ---------------------------------------------------------------------------------------------------


def _keras_arrays(layer) -> dict:
    return {w.name: np.asarray(keras.ops.convert_to_numpy(w), dtype=np.float32) for w in layer.weights}


def _torch_state(ext: Extraction) -> dict:
    """The twin's full state dict (float32 tensors) from the Keras layers' weights."""
    state = {}
    for name, call in ext.modules.items():
        arrays = RULES[call.kind].to_torch(call, _keras_arrays(call.layer))
        for key, array in arrays.items():
            state[f"{name}.{key}"] = torch.from_numpy(np.array(array, dtype=np.float32, order="C"))
    return state


def _load_state(twin, state: dict, where: str) -> None:
    expected = twin.state_dict()
    problems = sorted(set(expected) ^ set(state)) + [k for k in expected if k in state and
                                                     tuple(expected[k].shape) != tuple(state[k].shape)]
    if problems:
        raise ParityError(f"{where}: weights do not fit the twin ({problems[:5]})")
    twin.load_state_dict(state)


def convert(keras_model) -> torch.nn.Module:
    """The PyTorch twin of ``keras_model`` (a ``torch.fx.GraphModule``), weights copied, in eval mode.

    Inputs/outputs follow ``LAYOUT_RULE``; parameters' ``requires_grad`` follow the Keras layers' ``trainable``.
    """
    ext = extract_graph(keras_model)
    twin = build_twin(ext.graph)
    _load_state(twin, _torch_state(ext), f"model {keras_model.name!r}")
    for name, call in ext.modules.items():
        trainable = bool(call.layer.trainable) and bool(keras_model.trainable)
        for parameter in getattr(twin, name).parameters():
            parameter.requires_grad_(trainable)
    return twin.eval()


def copy_weights_to_keras(module: torch.nn.Module, keras_model) -> None:
    """Copy the twin's weights (e.g. after fine-tuning in PyTorch) back into ``keras_model``.

    ``module`` must be ``convert(keras_model)`` or ``load_converted`` of its folder. Everything is converted and
    checked before the first assignment: either every weight is copied or none is (ParityError).
    """
    ext = extract_graph(keras_model)
    state = {k: v.detach().cpu().to(torch.float32).numpy() for k, v in module.state_dict().items()}
    expected = {f"{name}.{key}" for name, call in ext.modules.items()
                for key in RULES[call.kind].to_torch(call, _keras_arrays(call.layer))}
    if set(state) != expected:
        raise ParityError(f"the torch module is not the twin of {keras_model.name!r}: state keys differ "
                          f"({sorted(set(state) ^ expected)[:5]})")
    plan = []
    for name, call in ext.modules.items():
        prefix = f"{name}."
        arrays = RULES[call.kind].to_keras(call, {k[len(prefix):]: v for k, v in state.items()
                                                  if k.startswith(prefix)})
        variables = {w.name: w for w in call.layer.weights}
        for key, array in arrays.items():
            if tuple(array.shape) != tuple(variables[key].shape):
                call.fail(f"weight {key}: the twin's converts to {array.shape}, "
                          f"Keras has {tuple(variables[key].shape)}")
            plan.append((variables[key], np.array(array, dtype=variables[key].dtype, order="C")))
    done = []
    try:
        for variable, array in plan:
            previous = np.array(keras.ops.convert_to_numpy(variable))
            variable.assign(array)
            done.append((variable, previous))
    except Exception as error:  # an unusual variable refusing the value: undo, so Keras is never half-updated
        for variable, previous in reversed(done):
            variable.assign(previous)
        raise ParityError(f"copy_weights_to_keras: assigning failed ({error}); the Keras model was restored") from error
    for call in ext.modules.values():
        if hasattr(call.layer, "finalize_state"):  # Normalization derives its mean/variance tensors from weights
            call.layer.finalize_state()


# --- checking and saving ---------------------------------------------------------------------------------------


def _random_inputs(ext: Extraction, n: int, seed: int) -> list:
    """Uniform [0, 1) floats per input; integer ids below the vocabulary size for inputs read by Embeddings."""
    rng = np.random.default_rng(seed)
    kinds = {m["name"]: m["op"] for m in ext.graph["modules"]}
    arrays = []
    for spec in ext.graph["inputs"]:
        shape = (n, *[d if d is not None else 8 for d in spec["shape"][1:]])
        readers = [ext.modules[node["module"]] for node in ext.graph["nodes"] if spec["name"] in node["inputs"]]
        if readers and all(kinds[node["module"]] == "embedding" for node in ext.graph["nodes"]
                           if spec["name"] in node["inputs"]):
            vocab = min(call.layer.input_dim for call in readers)
            arrays.append(rng.integers(0, vocab, shape).astype("int32" if "int" in spec["dtype"] else "float32"))
        else:
            arrays.append(rng.random(shape, dtype=np.float32))
    return arrays


def to_twin_input(x: np.ndarray) -> torch.Tensor:
    """A Keras-layout batch as the twin takes it (rank-4 NHWC -> NCHW)."""
    x = np.asarray(x)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2) if x.ndim == 4 else x))


def from_twin_output(t: torch.Tensor) -> np.ndarray:
    a = t.detach().cpu().numpy()
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1) if a.ndim == 4 else a)


def compare(keras_model, twin, inputs: list) -> list[dict]:
    """Per output on ``inputs`` (Keras layout): max |Keras - twin|, the largest |Keras output|, the twin's own
    float32 error (max |twin - twin in float64|) and the tolerance ``keras_ref.tolerance`` derives from them."""
    expected = keras_model(inputs if len(inputs) > 1 else inputs[0], training=False)
    expected = [keras.ops.convert_to_numpy(e) for e in (expected if isinstance(expected, (list, tuple))
                                                         else [expected])]
    twin_inputs = [to_twin_input(x) for x in inputs]
    with torch.no_grad():
        got = twin.eval()(*twin_inputs)
        exact = float64_twin(twin)(*float64_inputs(twin_inputs))
    got, exact = ([from_twin_output(g) for g in (out if isinstance(out, tuple) else (out,))] for out in (got, exact))
    report = []
    for name, e, g, x in zip(_output_names(twin), expected, got, exact):
        if e.shape != g.shape:
            raise ParityError(f"output {name!r}: shapes differ (Keras {e.shape}, twin {g.shape} in Keras layout)")
        entry = dict(output=name, max_abs_diff=max_abs(e, g), max_abs_output=float(np.max(np.abs(e))),
                     twin_float32_error=max_abs(g, x))
        report.append(entry | dict(tolerance=tolerance(entry["twin_float32_error"], entry["max_abs_output"])))
    return report


def _output_names(twin) -> list:
    node = next(n for n in twin.graph.nodes if n.op == "output")
    args = node.args[0]
    return [a.name for a in (args if isinstance(args, tuple) else (args,))]


def _load_inputs(path, ext: Extraction) -> list:
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = dict(npz)
    except (OSError, ValueError) as error:
        raise ParityError(f"--inputs {path}: cannot read it as an .npz of arrays ({error})") from None
    names = [spec["name"] for spec in ext.graph["inputs"]]
    if len(names) == 1 and len(data) == 1:  # one input, one array: its name does not matter
        data = {names[0]: next(iter(data.values()))}
    missing = [n for n in names if n not in data]
    if missing:
        raise ParityError(f"--inputs {path}: no array named {missing} (it has {sorted(data)}); name one array per "
                          f"model input {names}, in Keras layout")
    return [data[n] if "int" in data[n].dtype.name else data[n].astype(np.float32) for n in names]


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def compile_config_of_file(path) -> dict | None:
    """The compile config stored in a .keras file, read as JSON (nothing deserialized); None if absent."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json")).get("compile_config")
    except (zipfile.BadZipFile, KeyError, OSError, json.JSONDecodeError):
        return None


def save_converted(keras_model, out_dir, inputs=None, atol: float = ATOL, *, compile_config=None,
                   n: int = 8, seed: int = 0) -> Path:
    """Convert ``keras_model`` and write the twin's folder (see the module docstring); returns its path.

    ``inputs``: real samples in Keras layout (one array, or a list per model input); else ``n`` random ones.
    parity.json records, per output, max |Keras - twin|, the twin's own float32 error and the tolerance; it passes
    under ``keras_ref.tolerance.RULE`` (``atol`` is its floor, relative to max(1, the largest output)). The
    folder is written even when the check fails (``passed: false``) so it can be inspected.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "graph.json").is_file())):
        raise ConvertedModelError(f"{out} exists and is not a converted model folder; choose another --out")
    started = time.perf_counter()
    ext = extract_graph(keras_model)
    twin = build_twin(ext.graph)
    _load_state(twin, _torch_state(ext), f"model {keras_model.name!r}")
    twin.eval()
    seconds = time.perf_counter() - started
    if inputs is None:
        inputs, source = _random_inputs(ext, n, seed), f"{n} random inputs (seed {seed})"
    else:
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        source = f"{len(inputs[0])} given inputs"
    report = compare(keras_model, twin, [np.asarray(x) for x in inputs])
    for r in report:
        r["tolerance"] = tolerance(r["twin_float32_error"], r["max_abs_output"], atol)
    parity = dict(passed=all(within(r, atol) for r in report), atol=atol, tolerance_rule=RULE,
                  inputs=source, outputs=report, conversion_seconds=round(seconds, 3),
                  versions=dict(keras=keras.__version__, tensorflow=_tf_version(), torch=torch.__version__,
                                lightning_cnn=lightning_cnn.__version__))
    if compile_config is None and getattr(keras_model, "compiled", False):
        compile_config = keras_model.get_compile_config()
    files = {"graph.json": json.dumps(ext.graph, indent=1), "parity.json": json.dumps(parity, indent=1)}
    if compile_config is not None:
        files["compile.json"] = json.dumps(compile_config, indent=1, default=_jsonable)
    _write_folder(out, twin, files)
    return out


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


def _write_folder(out: Path, twin, files: dict) -> None:
    """Everything goes to a temporary sibling folder, which then replaces ``out`` in one rename."""
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old = None
    try:
        save_file({k: v.contiguous() for k, v in twin.state_dict().items()}, tmp / "weights.safetensors")
        for name, text in files.items():
            write_text(tmp / name, text + "\n")
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old / out.name, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- CLI -------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keras_ref.convert",
        description="Convert a Keras model file (loaded with safe_mode=True: Lambda code is never run) to a "
                    "PyTorch twin folder that lightning_cnn.load_converted reads without TensorFlow. Exit 0 when "
                    "the twin matches Keras within the tolerance (keras_ref.tolerance), 1 when it does not, 2 on "
                    "bad input.")
    parser.add_argument("model", help=".keras or .h5 file")
    parser.add_argument("--out", required=True, help="folder to write (replaced if it is a converted folder)")
    parser.add_argument("--inputs", help=".npz with real samples in Keras layout (one array per model input)")
    parser.add_argument("--atol", type=float, default=ATOL,
                        help="floor of the tolerance, relative to max(1, largest output); the tolerance is 4x the "
                             "twin's own float32 error (against its float64 run) plus this (keras_ref.tolerance)")
    parser.add_argument("-n", type=int, default=8, help="number of random inputs when --inputs is not given")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        model = load_keras_model(args.model)
    except (FileNotFoundError, ValueError) as error:
        raise ParityError(f"cannot load {args.model}: {error}") from None
    ext_inputs = None
    if args.inputs:
        ext_inputs = _load_inputs(args.inputs, extract_graph(model))
    out = save_converted(model, args.out, ext_inputs, args.atol, compile_config=compile_config_of_file(args.model),
                         n=args.n, seed=args.seed)
    parity = json.loads((out / "parity.json").read_text())
    for r in parity["outputs"]:
        print(f"{model.name} output {r['output']}: max |Keras - twin| = {r['max_abs_diff']:.3g}, tolerance "
              f"{r['tolerance']:.3g} (twin's float32 error {r['twin_float32_error']:.3g}, largest |output| "
              f"{r['max_abs_output']:.3g}, atol {args.atol:g}) on {parity['inputs']}")
    print(f"{'wrote' if parity['passed'] else 'PARITY FAILED; wrote'} {out} "
          f"(converted in {parity['conversion_seconds']:.2f} s)")
    return 0 if parity["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(exit_on_user_error(main))
