"""``UserDataModule``: the user's folder of images or ``.npz`` of arrays, as a LightningDataModule.

It stands where ``ArrayDataModule`` stands for the built-in data sets: the same loader contract (``sampler`` with
``set_epoch``, shards by rank, ``steps_per_execution`` groups) and the same questions answered (``train_size()``,
``num_classes``, ``class_names``, ``test_is_partial``). Images are streamed from disk by worker processes; an
``.npz`` is held in memory. The test loader serves ``test/`` or ``x_test`` when given, else the validation data
(``test_split`` says which; None: there is no held-out data and the test loader is empty).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

from ..datamodule import InMemoryLoader
from . import UserDataError
from .arrays import load_npz
from .image_folder import ImageFiles, index_folder
from .loaders import StreamingLoader, default_workers
from .model_inputs import IMAGE_MODES, RESCALE_CHOICES, ModelInputs

log = logging.getLogger("lightning_cnn")


def data_kind(path: str | Path) -> str:
    """"folder" or "npz"; anything else is refused naming the two layouts."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    if path.is_file() and path.suffix == ".npz":
        return "npz"
    what = "does not exist" if not path.exists() else "is neither a folder nor an .npz file"
    raise UserDataError(f"--data {path} {what}; give a folder of class subfolders of images (ROOT/<class>/*.png) "
                        "or an .npz with x_train and y_train (docs/usage.md, \"Your own data\")")


class UserDataModule(L.LightningDataModule):
    """Batches of the user's data for ``model`` (a ``ModelInputs``), checked against it when constructed.

    - ``validation_split``/``seed``: a folder is split as Keras's ``image_dataset_from_directory``, an .npz as
      Keras's ``fit(validation_split=...)`` (the last fraction).
    - ``image_size``: (H, W) for a model that takes any size (default Keras's 256x256); a fixed size must agree.
    - ``rescale``: "auto" (see ``ModelInputs.preprocessing``), "1/255" or "none".
    - ``workers``: processes decoding images (folders only); default one per core but one.
    """

    def __init__(self, path: str | Path, model: ModelInputs, *, batch_size: int = 32, validation_split: float = 0.0,
                 seed: int = 0, image_size: tuple | None = None, rescale: str = "auto", workers: int | None = None,
                 eval_batch_size: int | None = None, pin_memory: bool = False, steps_per_execution: int = 1):
        super().__init__()
        if rescale not in RESCALE_CHOICES:
            raise UserDataError(f"--rescale {rescale!r}: use one of {', '.join(RESCALE_CHOICES)}")
        if not 0.0 <= validation_split < 1.0:
            raise UserDataError(f"--validation-split {validation_split}: give a fraction in [0, 1)")
        if workers is not None and workers < 0:
            raise UserDataError(f"--workers {workers}: give 0 (decode in the training process) or more")
        self.path, self.model, self.kind = Path(path), model, data_kind(path)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.seed, self.steps_per_execution = seed, steps_per_execution
        self.workers = default_workers() if workers is None else workers
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.test_is_partial = False
        if image_size is not None and self.kind == "npz":
            raise UserDataError("--image-size resizes the images of a folder; an .npz is used at its own shape")
        if self.kind == "folder":
            self._init_folder(validation_split, image_size, rescale)
        else:
            self._init_npz(validation_split, rescale)
        self.test_split = "test" if self.splits["test"] is not None else ("val" if self.splits["val"] else None)

    def _init_folder(self, validation_split, image_size, rescale) -> None:
        where = f"--data {self.path}"
        spec = self.model.image_input(where)
        folders = index_folder(self.path, validation_split, self.seed)
        self.class_names, self.num_classes = folders.class_names, len(folders.class_names)
        self.model.check_classes(self.num_classes, f"{where} ({', '.join(folders.class_names)})")
        height, width = self.model.image_size(spec, image_size)
        preprocessing = self.model.preprocessing(rescale, spec)
        mode = IMAGE_MODES[spec.shape[2]]
        self.image_shape, self.preprocessing = (height, width, spec.shape[2]), preprocessing
        self.splits = {role: None if files is None else ImageFiles(files, height, width, mode, preprocessing)
                       for role, files in (("train", folders.train), ("val", folders.val), ("test", folders.test))}
        log.info("--data %s: %s images in %d classes, as %dx%d %s, pixels %s", self.path,
                 " / ".join(f"{len(s):,} {role}" for role, s in self.splits.items() if s is not None),
                 self.num_classes, height, width, mode, _PIXELS[preprocessing])

    def _init_npz(self, validation_split, rescale) -> None:
        loaded = load_npz(self.path, self.model, rescale, validation_split)
        self.num_classes = loaded.pop("num_classes")
        self.class_names = tuple(str(i) for i in range(self.num_classes))
        self.splits = loaded
        first = self.model.inputs[0]  # images given to the model later are 8-bit pixels, scaled as uint8 arrays are
        fixed_image = first.is_image and not first.integer_ids and all(isinstance(n, int) for n in first.shape)
        self.image_shape = first.shape if fixed_image else None
        self.preprocessing = self.model.preprocessing(rescale, first)
        log.info("--data %s: %s samples, %d classes", self.path,
                 " / ".join(f"{len(s):,} {role}" for role, s in self.splits.items() if s is not None),
                 self.num_classes)

    @property
    def input_shape(self) -> tuple:
        """The model's (first) input shape: the data was checked against every input as it was read."""
        return self.model.inputs[0].shape

    @property
    def has_validation(self) -> bool:
        return self.splits["val"] is not None

    def trained_on(self) -> dict:
        """What checkpoints record of this data for prediction (``trained.DATA_RECORD_KEY``)."""
        return {"class_names": list(self.class_names), "preprocessing": self.preprocessing, "dataset": None,
                "image_shape": None if self.image_shape is None else list(self.image_shape)}

    def train_size(self) -> int:
        return len(self.splits["train"])

    def loader(self, split: str, *, train: bool):
        """The loader of one split ("train", "val", "test"): shuffled and grouped by ``steps_per_execution``
        when ``train``."""
        part = self.splits[split]
        batch_size = self.batch_size if train else self.eval_batch_size
        group = self.steps_per_execution if train else 1
        if self.kind == "npz":
            return InMemoryLoader(part.x if len(part.x) > 1 else part.x[0], part.y, batch_size, shuffle=train,
                                  seed=self.seed, pin_memory=self.pin_memory, batches_per_item=group)
        return StreamingLoader(part, batch_size, shuffle=train, seed=self.seed, workers=self.workers,
                               pin_memory=self.pin_memory, batches_per_item=group)

    def train_dataloader(self):
        return self.loader("train", train=True)

    def val_dataloader(self):
        return [] if self.splits["val"] is None else self.loader("val", train=False)

    def test_dataloader(self):
        return [] if self.test_split is None else self.loader(self.test_split, train=False)

    def predict_dataloader(self):
        return self.test_dataloader()


_PIXELS = {"scale_255": "x/255 in [0, 1]", "raw": "0..255 (the model rescales them itself, or --rescale none)",
           "vgg16_caffe": "VGG16's caffe preprocessing (the model's recipe)"}
