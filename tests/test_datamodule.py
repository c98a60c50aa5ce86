"""The Lightning data module and its in-memory loader: Keras splits, seeded epochs, rank sharding."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch

from lightning_cnn import datamodule as dm_module
from lightning_cnn.data import DataError, load_dataset, preprocess
from lightning_cnn.datamodule import ArrayDataModule, InMemoryLoader, shard_indices
from lightning_cnn.specs import get_spec
from lightning_cnn.run.training import make_trainer


@pytest.fixture(scope="module")
def mnist_raw(data_dir):
    return load_dataset("mnist", data_dir)


@pytest.fixture(scope="module")
def mnist_module(data_dir):
    module = ArrayDataModule("mnist", data_dir)
    module.prepare_data()
    module.setup()
    return module


def toy_loader(n=10, batch_size=4, shuffle=True, **kwargs) -> InMemoryLoader:
    return InMemoryLoader(torch.arange(n, dtype=torch.float32).reshape(n, 1), torch.arange(n), batch_size,
                          shuffle=shuffle, **kwargs)


def epoch_labels(loader: InMemoryLoader, epoch: int) -> list[list[int]]:
    loader.set_epoch(epoch)
    return [y.tolist() for _, y in loader]


# --- tensors and splits ---------------------------------------------------------------------------------------


def test_mnist_tensors_are_nchw_float32_with_int64_labels(mnist_module, mnist_raw):
    (x_train, y_train), (x_test, y_test) = mnist_raw
    m = mnist_module
    assert m.x_train.shape == (60000, 1, 28, 28) and m.x_train.dtype == torch.float32 and m.x_train.is_contiguous()
    assert m.x_test.shape == (10000, 1, 28, 28) and m.y_test.dtype == torch.int64 and m.y_train.shape == (60000,)
    assert torch.equal(m.x_train[:100, 0], torch.from_numpy(x_train[:100] / 255.0).float())
    assert torch.equal(m.y_train, torch.from_numpy(y_train.astype(np.int64)))
    assert torch.equal(m.x_test[-5:, 0], torch.from_numpy(preprocess(x_test[-5:], "scale_255")[..., 0]))
    assert (m.num_classes, m.class_names[:3], m.test_is_partial) == (10, ("0", "1", "2"), False)
    assert m.x_val is None and m.val_dataloader() == []


def test_validation_split_takes_the_last_fraction_before_shuffling(data_dir, mnist_raw):
    (x_train, y_train), _ = mnist_raw
    m = ArrayDataModule.from_spec(get_spec("mnist_cnn_dropout"), data_dir=data_dir)
    m.setup("fit")
    assert (m.batch_size, m.validation_split) == (128, 0.2)
    assert len(m.x_train) == 48000 and len(m.x_val) == 12000
    assert torch.equal(m.x_val[:, 0], torch.from_numpy(preprocess(x_train[48000:], "scale_255")[..., 0]))
    assert torch.equal(m.y_val, torch.from_numpy(y_train[48000:].astype(np.int64)))
    assert torch.equal(m.y_train, torch.from_numpy(y_train[:48000].astype(np.int64)))
    assert m.x_test is None  # "fit" builds only what fitting needs
    assert [y.tolist() for _, y in m.val_dataloader()][0] == y_train[48000:48128].tolist()


@pytest.mark.parametrize("n, fraction", [(1001, 0.3), (999, 0.2), (300, 0.1), (7, 0.5)])
def test_split_index_is_keras_floor(data_dir, n, fraction):
    m = ArrayDataModule("mnist", data_dir, train_subset=n, validation_split=fraction)
    m.setup("fit")
    assert len(m.x_train) == math.floor(n * (1.0 - fraction)) and len(m.x_train) + len(m.x_val) == n


@pytest.mark.keras
def test_split_matches_keras_train_validation_split(data_dir, mnist_raw):
    from keras.src.trainers.data_adapters.array_slicing import train_validation_split

    (x_train, y_train), _ = mnist_raw
    m = ArrayDataModule("mnist", data_dir, train_subset=1001, validation_split=0.3)
    m.setup("fit")
    (_, y_fit), (_, y_val) = train_validation_split((x_train[:1001], y_train[:1001]), validation_split=0.3)
    assert m.y_train.tolist() == np.asarray(y_fit).tolist() and m.y_val.tolist() == np.asarray(y_val).tolist()


def test_cifar10_cnn_recipe_split(data_dir):
    spec = get_spec("cifar10_cnn")
    with pytest.raises(DataError, match="partial"):
        ArrayDataModule.from_spec(spec, data_dir=data_dir).prepare_data()
    m = ArrayDataModule.from_spec(spec, data_dir=data_dir, allow_partial_test=True)
    m.setup()
    (x_train, _), (x_test, y_test) = load_dataset("cifar10", data_dir, allow_partial_test=True)
    assert m.x_train.shape == (300, 3, 32, 32) and m.x_val.shape == (100, 3, 32, 32) and len(m.x_test) == 1000
    assert m.test_is_partial and m.batch_size == 100
    assert torch.equal(m.x_val, torch.from_numpy(x_test[:100].astype(np.float32)).permute(0, 3, 1, 2))  # raw 0..255
    assert torch.equal(m.y_val, torch.from_numpy(y_test[:100, 0].astype(np.int64)))
    assert m.x_train[0, :, 0, 0].tolist() == [59.0, 62.0, 63.0] == x_train[0, 0, 0].tolist()


def test_vgg16_preprocessing_reaches_the_tensors_in_bgr_channel_order(data_dir):
    m = ArrayDataModule.from_spec(get_spec("cifar10_vgg16_transfer"), data_dir=data_dir, train_subset=10,
                                  allow_partial_test=True)
    m.setup("fit")
    assert m.x_train[0, :, 0, 0].tolist() == pytest.approx([63 - 103.939, 62 - 116.779, 59 - 123.68], abs=1e-4)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="not both"):
        ArrayDataModule("mnist", validation_split=0.2, validation_test_head=100)
    with pytest.raises(ValueError, match="preprocessing"):
        ArrayDataModule("mnist", preprocessing="imagenet")
    with pytest.raises(ValueError, match="data set"):
        ArrayDataModule("svhn")
    with pytest.raises(ValueError, match="validation_split"):
        ArrayDataModule("mnist", validation_split=1.0)


def test_from_spec_overrides_and_cpu_pinning(data_dir):
    m = ArrayDataModule.from_spec(get_spec("mnist_cnn_small"), data_dir=data_dir, batch_size=64, eval_batch_size=500,
                                  pin_memory=True)
    assert (m.batch_size, m.eval_batch_size, m.preprocessing) == (64, 500, "scale_255")
    assert m.pin_memory == torch.cuda.is_available()


def test_data_can_live_on_another_device_and_batches_come_from_there(data_dir):
    """Without a GPU, the "meta" device (shapes, no storage) shows the same placement a CUDA run gets by default."""
    m = ArrayDataModule("mnist", data_dir, train_subset=100, validation_split=0.2, batch_size=32, device="meta")
    m.setup("fit")
    assert {t.device.type for t in (m.x_train, m.y_train, m.x_val, m.y_val)} == {"meta"}
    x, y = next(iter(m.train_dataloader()))
    assert (x.device.type, y.device.type, tuple(x.shape)) == ("meta", "meta", (32, 1, 28, 28))


def test_by_default_data_stay_on_the_cpu_for_a_cpu_trainer(data_dir):
    m = ArrayDataModule("mnist", data_dir, train_subset=64)
    m.trainer = make_trainer(accelerator="cpu")
    m.setup("fit")
    assert m.x_train.device.type == "cpu"


# --- the loader -----------------------------------------------------------------------------------------------


def test_shuffle_is_seeded_per_epoch_and_covers_every_sample_once():
    loader = toy_loader(n=10, batch_size=4)
    first = epoch_labels(loader, 0)
    assert [len(b) for b in first] == [4, 4, 2]  # Keras keeps the last partial batch
    assert sorted(sum(first, [])) == list(range(10))
    assert epoch_labels(toy_loader(n=10, batch_size=4), 0) == first  # same seed and epoch: same order (resume)
    assert epoch_labels(loader, 1) != first
    assert epoch_labels(toy_loader(n=10, batch_size=4, seed=1), 0) != first
    assert len(loader) == 3


def test_batches_pair_images_with_their_labels():
    for x, y in toy_loader(n=50, batch_size=8):
        assert torch.equal(x[:, 0].long(), y)


def test_drop_last_and_evaluation_order():
    assert [len(y) for _, y in toy_loader(n=10, batch_size=4, drop_last=True)] == [4, 4]
    assert len(toy_loader(n=10, batch_size=4, drop_last=True)) == 2
    assert [y.tolist() for _, y in toy_loader(n=5, batch_size=2, shuffle=False)] == [[0, 1], [2, 3], [4]]


def test_grouped_batches_are_the_same_batches_in_the_same_order():
    for epoch in (0, 1):
        plain, grouped = toy_loader(n=23, batch_size=4), toy_loader(n=23, batch_size=4, batches_per_item=4)
        plain.set_epoch(epoch)
        grouped.set_epoch(epoch)
        groups = list(grouped)
        assert [len(group) for group in groups] == [4, 2] and len(grouped) == 2  # 6 batches, the last of 3
        flat = [batch for group in groups for batch in group]
        assert [y.tolist() for _, y in flat] == [y.tolist() for _, y in plain]
        assert all(torch.equal(x[:, 0].long(), y) for x, y in flat)
    assert len(toy_loader(n=23, batch_size=4, batches_per_item=2, drop_last=True)) == 3
    with pytest.raises(ValueError, match="batches_per_item must be at least 1"):
        toy_loader(batches_per_item=0)


def test_steps_per_execution_groups_training_batches_only(mnist_module):
    m = ArrayDataModule("mnist", batch_size=32, steps_per_execution=3)
    m.x_train, m.y_train, m.x_test, m.y_test = mnist_module.x_train, mnist_module.y_train, mnist_module.x_test, \
        mnist_module.y_test
    assert m.train_dataloader().batches_per_item == 3 and len(m.train_dataloader()) == math.ceil(1875 / 3)
    assert m.test_dataloader().batches_per_item == 1 and m.predict_dataloader().batches_per_item == 1


def test_lightning_sets_the_epoch_through_the_sampler():
    loader = toy_loader()
    assert loader.sampler is loader
    _set_sampler_epoch(loader, 7)
    assert loader.epoch == 7


@pytest.mark.parametrize("n", [10, 11, 1])
def test_training_shards_are_padded_and_equal_like_distributed_sampler(n):
    shards = [shard_indices(n, rank=r, world_size=2, shuffle=True, seed=3, epoch=2, pad=True) for r in range(2)]
    full = shard_indices(n, shuffle=True, seed=3, epoch=2)
    assert len(shards[0]) == len(shards[1]) == math.ceil(n / 2)
    assert set(torch.cat(shards).tolist()) == set(range(n))
    assert shards[0].tolist() == full.repeat(2)[:2 * math.ceil(n / 2)][0::2].tolist()  # same permutation everywhere


@pytest.mark.parametrize("n", [10, 11])
def test_evaluation_shards_cover_each_sample_exactly_once(n):
    shards = [shard_indices(n, rank=r, world_size=2) for r in range(2)]
    assert sorted(torch.cat(shards).tolist()) == list(range(n))
    assert shards[0].tolist() == list(range(0, n, 2))


@pytest.mark.parametrize("shuffle", [True, False])
def test_loader_reads_rank_and_world_size_when_iterated(monkeypatch, shuffle):
    loader = toy_loader(n=11, batch_size=2, shuffle=shuffle)
    seen = []
    for rank in range(2):
        monkeypatch.setattr(dm_module, "_rank_and_world", lambda rank=rank: (rank, 2))
        batches = epoch_labels(loader, 4)
        assert len(loader) == len(batches) == 3  # 6 or 5 samples in batches of 2
        seen.append(sum(batches, []))
    if shuffle:
        assert len(seen[0]) == len(seen[1]) == 6 and set(seen[0] + seen[1]) == set(range(11))
    else:
        assert (seen[0], seen[1]) == (list(range(0, 11, 2)), list(range(1, 11, 2)))


# --- with a real Lightning Trainer ----------------------------------------------------------------------------


class Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(784, 10)
        self.train_labels: dict[int, list[int]] = {}
        self.val_batches = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.train_labels.setdefault(self.current_epoch, []).extend(y.tolist())
        return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

    def validation_step(self, batch, batch_idx):
        self.val_batches += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.filterwarnings("ignore:Total length of `list` across ranks is zero")
@pytest.mark.parametrize("validation_test_head", [None, 64])
def test_trainer_fit_uses_a_fresh_seeded_order_each_epoch(data_dir, validation_test_head):
    data = ArrayDataModule("mnist", data_dir, batch_size=50, train_subset=200, seed=5,
                           validation_test_head=validation_test_head)
    model = Recorder()
    trainer = make_trainer(max_epochs=2, accelerator="cpu")
    trainer.fit(model, datamodule=data)
    expected = {epoch: sum(epoch_labels(data.train_dataloader(), epoch), []) for epoch in (0, 1)}
    assert model.train_labels == expected and expected[0] != expected[1]
    assert sorted(expected[0]) == sorted(data.y_train.tolist())
    assert model.val_batches == (0 if validation_test_head is None else 2 * 2)
