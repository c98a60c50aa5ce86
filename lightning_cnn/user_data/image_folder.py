"""A folder of class subfolders, listed and split exactly as Keras's ``image_dataset_from_directory`` does, and
its images decoded safely, one at a time, for a DataLoader's workers.

Layouts: ``ROOT/<class>/**/<image>`` (class names sorted; files in nested folders belong to their class; hidden
folders skipped), or ``ROOT/train/<class>/...`` with optional ``ROOT/val/`` (or ``validation/``) and
``ROOT/test/`` in the same layout; the classes are those of ``train/``. With ``validation_split`` and ``seed``
the files of one folder are assigned as Keras 3's ``image_dataset_from_directory(validation_split=f, seed=s,
subset="both")`` assigns them (``keras.src.utils.dataset_utils.index_directory`` and
``get_training_or_validation_split``): each class folder walked with ``os.walk`` in sorted order, the whole list
shuffled with ``np.random.RandomState(seed)``, the last ``int(f * n)`` files validation.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from . import UserDataError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # Keras's ALLOWLIST_FORMATS, matched lower-case
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}


@dataclass(frozen=True)
class FileSplit:
    """Image paths and their class indices."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class FolderSplits:
    class_names: tuple[str, ...]
    train: FileSplit
    val: FileSplit | None
    test: FileSplit | None


def class_folders(directory: str) -> list[str]:
    """Keras's class names: the sorted, non-hidden subfolders."""
    return [name for name in sorted(os.listdir(directory))
            if os.path.isdir(os.path.join(directory, name)) and not name.startswith(".")]


def list_images(directory: str, class_names: list[str] | tuple[str, ...]) -> tuple[list[str], list[int]]:
    """Every image under ``directory/<class>/`` in Keras's order (class by class; ``os.walk`` sorted by folder,
    files sorted), with its class index."""
    paths, labels = [], []
    for index, name in enumerate(class_names):
        class_dir = os.path.join(directory, name)
        if not os.path.isdir(class_dir):
            continue
        for root, _, files in sorted(os.walk(class_dir), key=lambda entry: entry[0]):
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    relative = os.path.join(name, os.path.relpath(os.path.join(root, file), class_dir))
                    paths.append(os.path.join(directory, relative))
                    labels.append(index)
    return paths, labels


def keras_split(paths: list[str], labels: list[int], validation_split: float, seed: int,
                where: str) -> tuple[FileSplit, FileSplit | None]:
    """Shuffle with the seed and take the last ``int(validation_split * n)`` files for validation, as Keras does
    (it shuffles the list of paths with ``RandomState(seed)``; the pairs here are shuffled with the same draws)."""
    pairs = list(zip(paths, labels))
    np.random.RandomState(seed).shuffle(pairs)
    paths, labels = [p for p, _ in pairs], np.asarray([label for _, label in pairs], dtype=np.int64)
    if not validation_split:
        return FileSplit(tuple(paths), tuple(labels.tolist())), None
    n_val = int(validation_split * len(paths))
    if n_val == 0 or n_val == len(paths):  # Keras would silently train on nothing ([:-0] is empty)
        raise UserDataError(f"{where}: --validation-split {validation_split} of {len(paths)} images leaves "
                            f"{n_val} for validation; use a split that leaves images on both sides")
    return (FileSplit(tuple(paths[:-n_val]), tuple(labels[:-n_val].tolist())),
            FileSplit(tuple(paths[-n_val:]), tuple(labels[-n_val:].tolist())))


def _split_folders(root: str) -> dict[str, str] | None:
    """{"train": path, "val": path, "test": path} when ROOT holds split folders (and nothing else), else None."""
    names = class_folders(root)
    by_role = {role: os.path.join(root, name) for role, options in SPLIT_FOLDERS.items()
               for name in options if name in names}
    known = {name for options in SPLIT_FOLDERS.values() for name in options}
    if "train" not in by_role or not set(names) <= known:
        return None
    if {"val", "validation"} <= set(names):
        raise UserDataError(f"--data {root}: has both val/ and validation/; keep one")
    return by_role


def index_folder(root: str | Path, validation_split: float = 0.0, seed: int = 0) -> FolderSplits:
    """The splits of an image folder (see the module docstring), every class of train present and non-empty."""
    root = str(root)
    folders = _split_folders(root)
    train_dir = folders["train"] if folders else root
    class_names = class_folders(train_dir)
    where = f"--data {train_dir}"
    if not class_names:
        raise UserDataError(f"{where} has no class subfolders; put the images of each class in a folder named "
                            "after it (ROOT/<class>/<image>.png), as for Keras's image_dataset_from_directory")
    paths, labels = list_images(train_dir, class_names)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    empty = [name for name, count in zip(class_names, counts) if count == 0]
    if empty:
        raise UserDataError(f"{where}: class folder {os.path.join(train_dir, empty[0])} holds no images "
                            f"({'/'.join(e.lstrip('.').upper() for e in IMAGE_EXTENSIONS)}); add its images or "
                            "remove the folder")
    val_dir = folders.get("val") if folders else None
    if val_dir and validation_split:
        raise UserDataError(f"--data {root} has a {os.path.basename(val_dir)}/ folder and --validation-split "
                            f"{validation_split} was given: use one of them")
    train, val = keras_split(paths, labels, validation_split, seed, where)
    test = None
    for role in ("val", "test"):
        folder = folders.get(role) if folders else None
        if folder is None:
            continue
        extra = sorted(set(class_folders(folder)) - set(class_names))
        if extra:
            raise UserDataError(f"--data {folder}: class folder {extra[0]!r} is not a class of {train_dir} "
                                f"({', '.join(class_names)}); every split needs the training classes")
        split = FileSplit(*map(tuple, list_images(folder, class_names)))
        if not len(split):
            raise UserDataError(f"--data {folder} holds no images; add images or remove the folder")
        val, test = (split, test) if role == "val" else (val, split)
    return FolderSplits(tuple(class_names), train, val, test)


# --- decoding ---------------------------------------------------------------------------------------------------


def read_image(path: str, height: int, width: int, mode: str) -> np.ndarray:
    """One image file as uint8 (H, W, C): converted to ``mode`` ("L", "RGB", "RGBA"; GIF: its first frame), resized
    with bilinear filtering when its size differs. PIL's decompression-bomb limit is an error here, not a warning
    (a tiny file can declare billions of pixels). Raises ``UnreadableImage`` naming the file."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image = image.convert(mode)
            if image.size != (width, height):
                image = image.resize((width, height), Image.BILINEAR)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UnreadableImage(path, f"refused as a possible decompression bomb ({error})") from None
    except (OSError, ValueError, SyntaxError) as error:  # not an image, truncated, damaged
        raise UnreadableImage(path, str(error).splitlines()[0] if str(error) else type(error).__name__) from None
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


class UnreadableImage(Exception):
    """An image file that cannot be decoded; picklable, so a worker can hand it to the main process as data."""

    def __init__(self, path: str, reason: str):
        super().__init__(path, reason)
        self.path, self.reason = path, reason

    def as_user_error(self) -> UserDataError:
        return UserDataError(f"cannot read image {self.path}: {self.reason}; remove or replace the file")


class ImageFiles(Dataset):
    """Samples ``(float32 (C, H, W) image, int64 label)`` decoded on demand; a file that cannot be decoded is
    returned as its ``UnreadableImage`` (an exception raised in a worker would reach the user as a traceback)."""

    def __init__(self, split: FileSplit, height: int, width: int, mode: str, preprocessing: str):
        self.split, self.height, self.width, self.mode, self.preprocessing = split, height, width, mode, preprocessing

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        from ..data import preprocess

        try:
            pixels = read_image(self.split.paths[index], self.height, self.width, self.mode)
        except UnreadableImage as error:
            return error
        x = preprocess(pixels[None], self.preprocessing)[0]
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), self.split.labels[index]
