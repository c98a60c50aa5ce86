"""An ``.npz`` of arrays as training data: read without pickle, checked against the model, in the twin's layout.

Keys: ``x_train``, ``y_train``; optionally ``x_val``/``y_val`` and ``x_test``/``y_test``. A model with several
inputs takes ``x_<split>_<input name>`` per input (Keras's input names). ``x`` arrays are in Keras layout, any
rank: an (N, H, W, C) image batch becomes the twin's (N, C, H, W), every other rank is kept (the converter's
layout rule); (N, H, W) is taken as one channel when the model wants (H, W, 1). Integer arrays feeding an integer
input or an Embedding stay integer ids; every other array becomes float32, 8-bit arrays scaled as ``--rescale``
says. ``y`` holds integer class indices, (N,) or (N, 1), or one-hot rows (N, classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import read_user_npz
from . import UserDataError
from .model_inputs import InputSpec, ModelInputs

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ArraySplit:
    """The inputs of one split as the model takes them (one tensor per input, in the model's order) and labels."""

    x: tuple[torch.Tensor, ...]
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def _input_array(arrays: dict, split: str, spec: InputSpec, single: bool, where: str) -> np.ndarray | None:
    key = f"x_{split}" if single and f"x_{split}" in arrays else f"x_{split}_{spec.name}"
    if key not in arrays:
        return None
    x = given = arrays[key]
    if len(spec.shape) == 3 and spec.shape[2] == 1 and x.ndim == 3:
        x = x[..., None]  # (N, H, W) grayscale for an (H, W, 1) input, as MNIST ships
    expected = tuple(spec.shape)
    if x.ndim != 1 + len(expected) or any(e is not None and e != n for e, n in zip(expected, x.shape[1:])):
        raise UserDataError(f"{where}: {key} has shape {given.shape} but the model's input {spec.name!r} takes "
                            f"(N, {', '.join('any' if e is None else str(e) for e in expected)}) in Keras layout")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise UserDataError(f"{where}: {key} is {x.dtype}; give numbers")
    return x


def _values(x: np.ndarray, kind: str) -> np.ndarray:
    """float32 values of one input: 8-bit arrays through the data layer's exact lookup tables (x/255 as Keras
    code computes it, or a documented recipe's preprocessing), other arrays x/255 or as they are."""
    from ..data import preprocess

    if x.dtype == np.uint8 and x.size and (kind != "vgg16_caffe" or x.ndim == 4):
        return preprocess(x if kind == "vgg16_caffe" else x.reshape(len(x), -1, 1), kind).reshape(x.shape)
    if kind == "scale_255":
        return (x / 255.0).astype(np.float32)
    return x.astype(np.float32)


def _to_twin(x: np.ndarray, spec: InputSpec, kind: str, key: str, where: str) -> torch.Tensor:
    """One input array as the twin takes it: int64 ids, or float32 values; rank 4 NHWC -> NCHW."""
    if spec.integer_ids:
        if not np.issubdtype(x.dtype, np.integer):
            raise UserDataError(f"{where}: {key} is {x.dtype} but the model's input {spec.name!r} takes integer "
                                "token ids; save it as an integer array")
        t = torch.from_numpy(x.astype(np.int64))
    else:
        t = torch.from_numpy(_values(x, kind))
    return t.permute(0, 3, 1, 2).contiguous() if t.ndim == 4 else t


def _kind(x: np.ndarray, spec: InputSpec, model: ModelInputs, rescale: str) -> str:
    """--rescale auto scales 8-bit arrays only (pixels); other arrays are taken as the user prepared them."""
    if rescale == "auto" and x.dtype != np.uint8:
        return "raw"
    return model.preprocessing(rescale, spec)


def _labels(y: np.ndarray, n: int, key: str, where: str) -> np.ndarray:
    """int64 class indices from integer labels, (N,) or (N, 1), or one-hot rows (N, classes)."""
    if len(y) != n:
        raise UserDataError(f"{where}: {key} has {len(y):,} labels but x has {n:,} samples; give one label each")
    if y.ndim == 2 and y.shape[1] > 1:
        if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
            raise UserDataError(f"{where}: {key} is {y.shape} but not one-hot (every row one 1, the rest 0); "
                                "give class indices (N,) or one-hot rows")
        return y.argmax(axis=1).astype(np.int64)
    if y.ndim not in (1, 2) or not (np.issubdtype(y.dtype, np.integer) or (y == np.round(y)).all()):
        raise UserDataError(f"{where}: {key} is {y.dtype} {y.shape}; give integer class indices (N,) or (N, 1), "
                            "or one-hot rows (N, classes)")
    y = y.reshape(-1).astype(np.int64)
    if len(y) and y.min() < 0:
        raise UserDataError(f"{where}: {key} has a negative class index ({y.min()}); classes are 0, 1, ...")
    return y


def load_npz(path: str | Path, model: ModelInputs, rescale: str, validation_split: float = 0.0) -> dict:
    """{"train": ArraySplit, "val": ArraySplit | None, "test": ArraySplit | None, "num_classes": int}.

    Without ``x_val``, ``validation_split=f`` holds out the last ``n - floor(n * (1 - f))`` training samples,
    before any shuffling: Keras's ``fit(validation_split=f)``. The classes are counted from the training labels
    (one-hot width, or the largest index + 1) and must equal the model's output width.
    """
    path = Path(path)
    where = f"--data {path}"
    arrays = read_user_npz(path, where, UserDataError)
    single = len(model.inputs) == 1
    if "y_train" not in arrays:
        raise UserDataError(f"{where} has no y_train (it has {', '.join(sorted(arrays)) or 'no arrays'}); an .npz "
                            "needs x_train and y_train, optionally x_val/y_val and x_test/y_test")
    splits, widths = {}, {}
    for split in SPLITS:
        xs = [_input_array(arrays, split, spec, single, where) for spec in model.inputs]
        has_y = f"y_{split}" in arrays
        if all(x is None for x in xs) and not has_y:
            splits[split] = None
            continue
        missing = [f"x_{split}" if single else f"x_{split}_{spec.name}" for spec, x in zip(model.inputs, xs)
                   if x is None]
        if missing or not has_y:
            names = [spec.name for spec in model.inputs]
            raise UserDataError(f"{where} lacks {', '.join(missing) or f'y_{split}'} (it has "
                                f"{', '.join(sorted(arrays))}); the model's inputs are {names}: give "
                                + ("x_SPLIT" if single else "x_SPLIT_<input name> per input") + " and y_SPLIT")
        lengths = {len(x) for x in xs}
        if len(lengths) > 1:
            raise UserDataError(f"{where}: the x_{split} arrays differ in length ({sorted(lengths)}); give one "
                                "sample per row in every input")
        y = arrays[f"y_{split}"]
        widths[split] = y.shape[1] if y.ndim == 2 and y.shape[1] > 1 else None
        labels = _labels(y, len(xs[0]), f"y_{split}", where)
        tensors = tuple(_to_twin(x, spec, _kind(x, spec, model, rescale), f"x_{split}", where)
                        for x, spec in zip(xs, model.inputs))
        splits[split] = ArraySplit(tensors, torch.from_numpy(labels))
    train = splits["train"]
    if not len(train):
        raise UserDataError(f"{where}: x_train is empty; give at least one training sample")
    if validation_split:
        if splits["val"] is not None:
            raise UserDataError(f"{where} has x_val and --validation-split {validation_split} was given: use one")
        split_at = int(np.floor(len(train) * (1.0 - validation_split)))  # keras's train_validation_split
        if split_at in (0, len(train)):
            raise UserDataError(f"{where}: --validation-split {validation_split} of {len(train)} samples leaves "
                                "no sample on one side; use a split that leaves samples on both")
        splits["val"] = ArraySplit(tuple(x[split_at:] for x in train.x), train.y[split_at:])
        splits["train"] = train = ArraySplit(tuple(x[:split_at] for x in train.x), train.y[:split_at])
    num_classes = widths["train"] or int(train.y.max()) + 1
    model.check_classes(num_classes, f"{where} (y_train)")
    for split in ("val", "test"):
        part = splits[split]
        if part is not None and len(part) and (int(part.y.max()) >= num_classes
                                               or widths.get(split) not in (None, num_classes)):
            raise UserDataError(f"{where}: y_{split} has classes beyond the {num_classes} of y_train; give "
                                "labels of the training classes")
    return {**splits, "num_classes": num_classes}
