"""Lightning side of the data layer: the documents' splits as in-memory NCHW tensors, served in Keras order.

The data sets fit in memory, so batches are sliced straight from tensors (no per-sample ``__getitem__``, no
worker processes). Splits follow Keras: ``validation_split`` takes the last fraction of the arrays before any
shuffling; training batches come from a fresh permutation each epoch and keep the last partial batch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import torch

from lightning_cnn.data import CLASS_NAMES, DATASETS, PREPROCESSING, TEST_SIZE, load_dataset, preprocess

if TYPE_CHECKING:
    from lightning_cnn.specs import ModelSpec

# (H, W, C) of each data set's images, as a Keras model's Input sees them.
DATASET_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
_PREPROCESS_CHUNK = 5_000  # images converted at a time, so the float32 NHWC copy never exists in full


def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 64-bit seed for (seed, epoch): no two runs or epochs share a permutation by accident."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


def shard_indices(n: int, *, rank: int = 0, world_size: int = 1, shuffle: bool = False, seed: int = 0,
                  epoch: int = 0, pad: bool = False) -> torch.Tensor:
    """The sample indices one rank visits in one epoch.

    Every rank draws the same permutation; rank r takes ``order[r::world_size]``. With ``pad`` (training) the
    order is first extended by repeating its start to a multiple of ``world_size``, as DistributedSampler does,
    so every rank runs the same number of steps. Without it (evaluation) each sample is seen exactly once.
    """
    if shuffle:
        generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    if world_size > 1:
        if pad and n % world_size:
            total = math.ceil(n / world_size) * world_size
            order = order.repeat(math.ceil(total / n))[:total]
        order = order[rank::world_size]
    return order


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1



def in_groups(batches, size: int):
    """``batches`` as a ``steps_per_execution=size`` step takes them: one by one for 1, else lists of ``size``
    (the last one shorter when the epoch does not divide)."""
    if size == 1:
        yield from batches
        return
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group

class InMemoryLoader:
    """Batches ``(x, y)`` sliced from in-memory tensors; shards by rank when torch.distributed is initialized.

    ``sampler`` is the loader itself, so Lightning's ``_set_sampler_epoch`` (which calls ``set_epoch`` on
    ``dataloader.sampler``) gives each epoch its own permutation, the same one again when a run resumes.
    ``pad_shards`` (default: ``shuffle``, i.e. training) evens out ranks like DistributedSampler; evaluation
    loaders leave shards uneven so that no sample is counted twice.
    ``batches_per_item=k`` yields lists of k consecutive batches (the last list may be shorter), for a module that
    takes k optimizer steps per Lightning step (``KerasRecipeModule(steps_per_execution=k)``); the batches and
    their order are those of ``k=1``. ``x`` may be a tuple of tensors (a model with several inputs): each batch's
    x is then the tuple of their rows.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0,
                 drop_last: bool = False, *, pad_shards: bool | None = None, pin_memory: bool = False,
                 batches_per_item: int = 1):
        if any(len(part) != len(y) for part in (x if isinstance(x, tuple) else (x,))):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if batches_per_item < 1:
            raise ValueError(f"batches_per_item must be at least 1, got {batches_per_item}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.pad_shards = shuffle if pad_shards is None else pad_shards
        self.pin_memory = pin_memory
        self.batches_per_item = batches_per_item
        self.epoch = 0

    batch_sampler = None  # with ``sampler``, what Lightning inspects on anything that looks like a DataLoader

    @property
    def sampler(self) -> InMemoryLoader:
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _samples_on_this_rank(self, rank: int, world_size: int) -> int:
        n = len(self.y)
        return math.ceil(n / world_size) if self.pad_shards else len(range(rank, n, world_size))

    def __len__(self) -> int:
        samples = self._samples_on_this_rank(*_rank_and_world())
        batches = samples // self.batch_size if self.drop_last else math.ceil(samples / self.batch_size)
        return math.ceil(batches / self.batches_per_item)

    def __iter__(self):
        return in_groups(self._batches(), self.batches_per_item)

    def _batches(self):
        rank, world_size = _rank_and_world()
        contiguous = not self.shuffle and world_size == 1  # plain slices: views, no copy
        indices = None if contiguous else shard_indices(
            len(self.y), rank=rank, world_size=world_size, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch,
            pad=self.pad_shards).to(self.y.device)  # data kept on a GPU: index there, no copy per batch
        n = len(self.y) if contiguous else len(indices)
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            rows = slice(start, start + self.batch_size) if contiguous else indices[start:start + self.batch_size]
            xb = tuple(part[rows] for part in self.x) if isinstance(self.x, tuple) else self.x[rows]
            yb = self.y[rows]
            if self.pin_memory:
                xb = tuple(p.pin_memory() for p in xb) if isinstance(xb, tuple) else xb.pin_memory()
                yb = yb.pin_memory()
            yield xb, yb


def _to_nchw(x: np.ndarray, kind: str) -> torch.Tensor:
    """uint8 NHW(C) -> preprocessed float32 NCHW tensor, converted in chunks to bound peak memory."""
    first = preprocess(x[:1], kind)
    out = torch.empty((len(x), first.shape[3], first.shape[1], first.shape[2]), dtype=torch.float32)
    for start in range(0, len(x), _PREPROCESS_CHUNK):
        chunk = preprocess(x[start:start + _PREPROCESS_CHUNK], kind)
        out[start:start + len(chunk)] = torch.from_numpy(chunk).permute(0, 3, 1, 2)
    return out


def _labels(y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(y.reshape(-1).astype(np.int64))


class ArrayDataModule(L.LightningDataModule):
    """A data set split the way a document split it, as NCHW float32 tensors and int64 labels.

    - ``train_subset=N``: train on the first N training images (document 003).
    - ``validation_split=f``: validate on the last ``len - floor(len * (1 - f))`` training images, Keras's exact
      split (after ``train_subset``, before shuffling).
    - ``validation_test_head=N``: validate on the first N test images (document 003's ``validation_data``).
    - neither: no validation; ``val_dataloader()`` returns ``[]``, which Lightning skips.
    - ``splits={"train": (x, y), "val": (x, y) or None, "test": (x, y)}``: these uint8 arrays as they are (e.g.
      the folds of a cross-validation) instead of loading and splitting the data set.
    The test and predict loaders serve the whole test set. ``test_is_partial`` says whether it is shorter than
    the official 10,000 images (only possible with ``allow_partial_test=True``).
    ``device``: where the tensors live. Default: the trainer's device when it is a GPU (the data sets here are at
    most a few hundred MB, so they are copied once instead of once per batch), else CPU. ``pin_memory`` applies
    to data kept on the CPU for a GPU run. ``steps_per_execution=k``: the training loader yields lists of k
    batches, for ``KerasRecipeModule(steps_per_execution=k)``.
    """

    def __init__(self, dataset: str, data_dir=None, batch_size: int = 32, validation_split: float = 0.0,
                 preprocessing: str = "scale_255", train_subset: int | None = None,
                 validation_test_head: int | None = None, seed: int = 0, allow_partial_test: bool = False,
                 download: bool = True, eval_batch_size: int | None = None, pin_memory: bool = False,
                 device: str | torch.device | None = None, steps_per_execution: int = 1,
                 splits: dict | None = None):
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"unknown data set {dataset!r}; known: {', '.join(DATASETS)}")
        if preprocessing not in PREPROCESSING:
            raise ValueError(f"unknown preprocessing {preprocessing!r}; known: {', '.join(PREPROCESSING)}")
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
        if validation_split and validation_test_head:
            raise ValueError("give validation_split or validation_test_head, not both")
        if splits is not None and (validation_split or validation_test_head or train_subset is not None):
            raise ValueError("splits are used as given: leave validation_split, validation_test_head and "
                             "train_subset unset")
        if splits is not None and set(splits) != {"train", "val", "test"}:
            raise ValueError(f"splits needs the keys train, val and test, got {', '.join(sorted(splits))}")
        self.dataset = dataset
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.validation_split = validation_split
        self.preprocessing = preprocessing
        self.train_subset = train_subset
        self.validation_test_head = validation_test_head
        self.seed = seed
        self.allow_partial_test = allow_partial_test
        self.download = download
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.device = None if device is None else torch.device(device)
        self.steps_per_execution = steps_per_execution
        self.splits = splits
        self.num_classes = len(CLASS_NAMES[dataset])
        self.class_names = CLASS_NAMES[dataset]
        self.x_train = self.y_train = self.x_val = self.y_val = self.x_test = self.y_test = None
        self.test_is_partial = False

    @classmethod
    def from_spec(cls, spec: ModelSpec, **overrides) -> ArrayDataModule:
        """The data module for a documented model: its data set, preprocessing and recipe's split and batch size."""
        recipe = spec.recipe
        settings = dict(dataset=spec.dataset, preprocessing=spec.preprocessing, batch_size=recipe.batch_size,
                        validation_split=recipe.validation_split, train_subset=recipe.train_subset,
                        validation_test_head=recipe.validation_test_head)
        return cls(**{**settings, **overrides})

    @property
    def input_shape(self) -> tuple:
        """(H, W, C) of the images, as a Keras model's Input sees them."""
        return DATASET_SHAPES[self.dataset]

    def trained_on(self) -> dict:
        """What checkpoints record of this data for prediction (``trained.DATA_RECORD_KEY``)."""
        return {"class_names": list(self.class_names), "image_shape": list(self.input_shape),
                "preprocessing": self.preprocessing, "dataset": self.dataset}

    test_split = "test"  # what the test loader serves (a UserDataModule may have to test on "val" or nothing)

    @property
    def has_validation(self) -> bool:
        if self.splits is not None:
            return self.splits["val"] is not None
        return bool(self.validation_split or self.validation_test_head)

    def _load(self):
        return load_dataset(self.dataset, self.data_dir, download=self.download,
                            allow_partial_test=self.allow_partial_test)

    def prepare_data(self) -> None:
        """Find, download if needed, and validate the data once, before any other process needs it."""
        if self.splits is None:
            self._load()

    def train_size(self) -> int:
        """Images one training epoch visits: after the recipe's subset and validation split (loads the data)."""
        parts = self.splits if self.splits is not None else self._split(*self._load())
        return len(parts["train"][0])

    def _split(self, train, test) -> dict:
        """The documents' splits as numpy views: {"train": (x, y), "val": (x, y) or None, "test": (x, y)}."""
        (x_train, y_train), (x_test, y_test) = train, test
        if self.train_subset is not None:
            if not 0 < self.train_subset <= len(x_train):
                raise ValueError(f"train_subset={self.train_subset} but there are {len(x_train):,} training images")
            x_train, y_train = x_train[:self.train_subset], y_train[:self.train_subset]
        val = None
        if self.validation_split:
            split_at = int(math.floor(len(x_train) * (1.0 - self.validation_split)))  # keras train_validation_split
            if split_at in (0, len(x_train)):
                raise ValueError(f"{len(x_train)} training images cannot be split by "
                                 f"validation_split={self.validation_split}")
            val = (x_train[split_at:], y_train[split_at:])
            x_train, y_train = x_train[:split_at], y_train[:split_at]
        elif self.validation_test_head:
            if self.validation_test_head > len(x_test):
                raise ValueError(f"validation_test_head={self.validation_test_head} but there are only "
                                 f"{len(x_test):,} test images")
            val = (x_test[:self.validation_test_head], y_test[:self.validation_test_head])
        return {"train": (x_train, y_train), "val": val, "test": (x_test, y_test)}

    def _data_device(self) -> torch.device:
        if self.device is not None:
            return self.device
        root = self.trainer.strategy.root_device if self.trainer is not None else None
        return root if root is not None and root.type == "cuda" else torch.device("cpu")

    def setup(self, stage: str | None = None) -> None:
        """Build the tensors the stage needs (all of them for ``stage=None``); calling again is cheap."""
        device = self._data_device()
        parts = self.splits if self.splits is not None else self._split(*self._load())
        self.test_is_partial = len(parts["test"][0]) < TEST_SIZE
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for part in needed.get(stage, ("train", "val", "test")):
            if getattr(self, f"x_{part}") is None and parts[part] is not None:
                x, y = parts[part]
                setattr(self, f"x_{part}", _to_nchw(x, self.preprocessing).to(device))
                setattr(self, f"y_{part}", _labels(y).to(device))

    def _loader(self, x, y, train: bool) -> InMemoryLoader:
        return InMemoryLoader(x, y, self.batch_size if train else self.eval_batch_size, shuffle=train,
                              seed=self.seed, pin_memory=self.pin_memory and x.device.type == "cpu",
                              batches_per_item=self.steps_per_execution if train else 1)

    def train_dataloader(self) -> InMemoryLoader:
        return self._loader(self.x_train, self.y_train, train=True)

    def val_dataloader(self) -> InMemoryLoader | list:
        return [] if self.x_val is None else self._loader(self.x_val, self.y_val, train=False)

    def test_dataloader(self) -> InMemoryLoader:
        return self._loader(self.x_test, self.y_test, train=False)

    def predict_dataloader(self) -> InMemoryLoader:
        return self._loader(self.x_test, self.y_test, train=False)
