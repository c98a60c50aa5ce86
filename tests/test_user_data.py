"""``--data PATH``: the user's own image folders and .npz arrays, checked on real CIFAR-10 and MNIST pixels.

Folder listing and splitting are compared with Keras's own ``image_dataset_from_directory`` (in a subprocess, so
this process stays free of TensorFlow); decoding, channel conversion, resizing and scaling with the pixels the
files hold; every refusal is one ``UserDataError`` line naming the file or array and the fix.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_cnn.data import load_dataset
from lightning_cnn.specs import get_spec
from lightning_cnn.user_data import UserDataError
from lightning_cnn.user_data.datamodule import UserDataModule
from lightning_cnn.user_data.image_folder import index_folder
from lightning_cnn.user_data.model_inputs import InputSpec, ModelInputs
from tests.png import png

REPO = Path(__file__).resolve().parents[1]
CIFAR_MODEL = ModelInputs((InputSpec("image", (32, 32, 3)),), 10)  # a twin's inputs: (32, 32, 3) in, 10 out
MNIST_MODEL = ModelInputs.of_spec(get_spec("mnist_mlp_t9_1"))  # (28, 28, 1) in, 10 out, x/255
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="module")
def cifar(data_dir):
    (x, y), _ = load_dataset("cifar10", data_dir, download=False, allow_partial_test=True)
    return x[:120], y[:120, 0].astype(np.int64)


def whole(data: UserDataModule, split: str = "train") -> tuple:
    """(x, y) of a split in file order (not shuffled), one batch."""
    batches = list(data.loader(split, train=False))
    if isinstance(batches[0][0], tuple):
        return tuple(torch.cat([b[0][i] for b in batches]) for i in range(len(batches[0][0]))), \
            torch.cat([b[1] for b in batches])
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def file_order(data: UserDataModule, split: str = "train") -> np.ndarray:
    """Indices that put a folder split's files (one per class, named by class) in class order."""
    return np.argsort([CLASSES.index(Path(p).parent.name) for p in data.splits[split].split.paths])


def write_folder(root: Path, x, y, names=CLASSES, suffix=".png") -> list[Path]:
    paths = []
    for i, (image, label) in enumerate(zip(x, y)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        paths.append(folder / f"img_{i:04d}{suffix}")
        Image.fromarray(image).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def cifar_folder(cifar, tmp_path_factory):
    """120 real CIFAR-10 training images as ROOT/<class>/img_NNNN.png, plus what Keras ignores (a hidden folder,
    a .txt), and one image in a nested folder (Keras counts it for its class)."""
    root = tmp_path_factory.mktemp("cifar_folder")
    write_folder(root, *cifar)
    (root / ".cache").mkdir()
    Image.fromarray(cifar[0][0]).save(root / ".cache" / "hidden.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / "more").mkdir()
    Image.fromarray(cifar[0][0]).save(root / "cat" / "more" / "NESTED.PNG")
    return root


def test_class_subfolders_are_listed_as_keras_lists_them(cifar_folder, cifar):
    splits = index_folder(cifar_folder)
    assert splits.class_names == CLASSES  # sorted; .cache skipped
    assert len(splits.train) == len(cifar[1]) + 1 and splits.val is None and splits.test is None  # + NESTED.PNG
    for path, label in zip(splits.train.paths, splits.train.labels):
        assert Path(path).relative_to(cifar_folder).parts[0] == CLASSES[label]
    assert not any(p.endswith(".txt") for p in splits.train.paths)


def test_decoded_pixels_are_the_files_pixels_scaled_by_255(cifar_folder, cifar):
    data = UserDataModule(cifar_folder, CIFAR_MODEL, workers=0)
    x, y = whole(data)
    index = data.splits["train"].split.paths.index(str(cifar_folder / CLASSES[cifar[1][5]] / "img_0005.png"))
    expected = torch.from_numpy(cifar[0][5].transpose(2, 0, 1) / 255.0).float()  # PNG is lossless
    assert x.shape == (121, 3, 32, 32) and x.dtype == torch.float32
    torch.testing.assert_close(x[index], expected, atol=0, rtol=0)
    assert int(y[index]) == cifar[1][5]
    # a documented model gets its recipe's preprocessing: cifar10_cnn's document trained on raw 0..255 pixels
    recipe = UserDataModule(cifar_folder, ModelInputs.of_spec(get_spec("cifar10_cnn")), workers=0)
    torch.testing.assert_close(whole(recipe)[0][index], expected * 255, atol=1e-4, rtol=0)


_KERAS_FILES = """
import json, sys
import keras_ref
keras = keras_ref.load_tensorflow()
found = []
for fraction, seed in json.loads(sys.argv[2]):
    train, val = keras.utils.image_dataset_from_directory(sys.argv[1], validation_split=fraction, subset="both",
                                                          seed=seed, verbose=False)
    found.append({"train": train.file_paths, "val": val.file_paths, "classes": train.class_names})
print(json.dumps(found))
"""
SPLITS = [(0.25, 7), (0.3, 1234), (0.5, 0)]


@pytest.mark.keras
def test_validation_split_assigns_the_files_keras_assigns(cifar_folder):
    """Keras 3's own image_dataset_from_directory (one subprocess, so this one stays free of TensorFlow)."""
    if importlib.util.find_spec("tensorflow") is None:  # looked up, not imported: TF and triton in one process crash
        pytest.skip("the comparison runs Keras's image_dataset_from_directory")
    run = subprocess.run([sys.executable, "-c", _KERAS_FILES, str(cifar_folder), json.dumps(SPLITS)],
                         capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-3000:]
    for (fraction, seed), keras in zip(SPLITS, json.loads(run.stdout.strip().splitlines()[-1]), strict=True):
        ours = index_folder(cifar_folder, fraction, seed)
        assert list(ours.class_names) == keras["classes"]
        assert list(ours.train.paths) == keras["train"], (fraction, seed)  # the same files, in the same order
        assert list(ours.val.paths) == keras["val"], (fraction, seed)


def test_split_subfolders_keep_the_training_classes(cifar, tmp_path):
    x, y = cifar
    write_folder(tmp_path / "train", x[:80], y[:80])
    write_folder(tmp_path / "val", x[80:100], y[80:100])
    write_folder(tmp_path / "test", x[100:], y[100:])
    data = UserDataModule(tmp_path, CIFAR_MODEL, workers=0)
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [80, 20, 20] and data.test_split == "test"
    assert sorted(data.splits["test"].split.labels) == sorted(y[100:].tolist())
    with pytest.raises(UserDataError, match="--validation-split"):
        UserDataModule(tmp_path, CIFAR_MODEL, validation_split=0.2)
    (tmp_path / "test" / "zebra").mkdir()
    Image.fromarray(x[0]).save(tmp_path / "test" / "zebra" / "z.png")
    with pytest.raises(UserDataError, match="'zebra' is not a class of"):
        UserDataModule(tmp_path, CIFAR_MODEL)


def test_grayscale_and_rgb_are_converted_to_the_models_channels(cifar, tmp_path):
    rgb = cifar[0][:10]
    write_folder(tmp_path / "rgb", rgb, np.arange(10))
    gray = UserDataModule(tmp_path / "rgb", ModelInputs((InputSpec("g", (32, 32, 1)),), 10), workers=0)
    x, _ = whole(gray)
    # ITU-R 601 luma, what PIL's "L" and (within one level of rounding) TensorFlow's rgb_to_grayscale compute
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    got = (x[:, 0].numpy() * 255).round()
    assert x.shape == (10, 1, 32, 32) and np.abs(got[file_order(gray)] - luma).max() <= 1.0

    write_folder(tmp_path / "gray", [np.asarray(Image.fromarray(i).convert("L")) for i in rgb], np.arange(10))
    color = UserDataModule(tmp_path / "gray", ModelInputs((InputSpec("c", (32, 32, 3)),), 10), workers=0)
    x, _ = whole(color)
    assert x.shape == (10, 3, 32, 32) and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])


def test_images_are_resized_to_the_model_and_image_size_must_agree(cifar, tmp_path):
    write_folder(tmp_path, cifar[0][:10], np.arange(10), suffix=".bmp")  # 32x32 RGB BMPs for a 28x28x1 model
    data = UserDataModule(tmp_path, MNIST_MODEL, workers=0)
    x, _ = whole(data)
    assert x.shape == (10, 1, 28, 28)
    # bilinear downsizing averages neighbours: each image's mean brightness stays within 2 of 255 levels
    luma = cifar[0][:10].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(x[file_order(data)].mean(dim=(1, 2, 3)).numpy() * 255 - luma.mean(axis=(1, 2))).max() < 2
    with pytest.raises(UserDataError, match="--image-size 64x64: the model takes 28x28"):
        UserDataModule(tmp_path, MNIST_MODEL, image_size=(64, 64))
    free = ModelInputs((InputSpec("any", (None, None, 3)),), 10)
    resized = UserDataModule(tmp_path, free, image_size=(40, 24), workers=0)
    assert whole(resized)[0].shape == (10, 3, 40, 24)


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("fault", ["truncated", "not an image", "decompression bomb"])
def test_an_unreadable_image_is_one_line_naming_it(cifar, tmp_path, fault, workers):
    write_folder(tmp_path, cifar[0][:10], np.arange(10))
    bad = tmp_path / "cat" / "img_0003.png"
    if fault == "truncated":
        bad.write_bytes(bad.read_bytes()[:60])
    elif fault == "not an image":
        bad.write_text("<html>404</html>")
    else:
        bad.write_bytes(png(30_000, 30_000))  # 900 M pixels in 100 bytes
    data = UserDataModule(tmp_path, CIFAR_MODEL, workers=workers, batch_size=4)
    with pytest.raises(UserDataError) as error:
        for _ in data.train_dataloader():
            pass
    message = str(error.value)
    assert message.startswith(f"cannot read image {bad}: ") and "\n" not in message, message
    if fault == "decompression bomb":
        assert "decompression bomb" in message.lower()


def test_folder_refusals(cifar, tmp_path):
    write_folder(tmp_path / "ok", cifar[0][:3], [0, 1, 2])
    with pytest.raises(UserDataError, match=r"has 3 classes but the model has 10 outputs"):
        UserDataModule(tmp_path / "ok", CIFAR_MODEL)
    with pytest.raises(UserDataError, match="leaves 0 for validation"):
        index_folder(tmp_path / "ok", 0.1, 0)  # 3 images: int(0.3) = 0, Keras would train on nothing
    (tmp_path / "ok" / "zz_empty").mkdir()
    with pytest.raises(UserDataError, match=r"class folder .*zz_empty holds no images"):
        UserDataModule(tmp_path / "ok", CIFAR_MODEL)
    (tmp_path / "flat").mkdir()
    Image.fromarray(cifar[0][0]).save(tmp_path / "flat" / "a.png")
    with pytest.raises(UserDataError, match="has no class subfolders"):
        UserDataModule(tmp_path / "flat", CIFAR_MODEL)
    with pytest.raises(UserDataError, match="does not exist"):
        UserDataModule(tmp_path / "missing", CIFAR_MODEL)
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(UserDataError, match="is neither a folder nor an .npz"):
        UserDataModule(tmp_path / "data.csv", CIFAR_MODEL)


def test_streamed_batches_are_the_in_memory_loaders_batches(cifar_folder):
    """Same (seed, epoch) -> the same sample order as InMemoryLoader, epoch after epoch."""
    from lightning_cnn.datamodule import InMemoryLoader

    data = UserDataModule(cifar_folder, CIFAR_MODEL, workers=1, batch_size=16, seed=3)
    memory = InMemoryLoader(*whole(data), 16, shuffle=True, seed=3)
    streamed = data.train_dataloader()
    for epoch in (0, 1):
        streamed.sampler.set_epoch(epoch)
        memory.set_epoch(epoch)
        pairs = list(zip(streamed, memory))
        assert len(pairs) == len(memory) == len(streamed) == 8  # ceil(121 / 16)
        for (xs, ys), (xm, ym) in pairs:
            assert torch.equal(xs, xm) and torch.equal(ys, ym)


# --- .npz -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist(data_dir):
    (x, y), (xt, yt) = load_dataset("mnist", data_dir, download=False)
    return x[:64], y[:64].astype(np.int64), xt[:16], yt[:16].astype(np.int64)


def test_npz_images_become_nchw_scaled_and_one_hot_labels_indices(cifar, tmp_path):
    x, y = cifar
    np.savez(tmp_path / "d.npz", x_train=x[:100], y_train=np.eye(10, dtype=np.float32)[y[:100]],
             x_test=x[100:], y_test=y[100:, None])
    data = UserDataModule(tmp_path / "d.npz", CIFAR_MODEL)
    train, test = data.splits["train"], data.splits["test"]
    torch.testing.assert_close(train.x[0], torch.from_numpy(x[:100].transpose(0, 3, 1, 2) / 255.0).float(),
                               atol=0, rtol=0)
    assert torch.equal(train.y, torch.from_numpy(y[:100])) and torch.equal(test.y, torch.from_numpy(y[100:]))
    assert data.test_split == "test" and data.num_classes == 10
    xb, yb = next(iter(data.train_dataloader()))
    assert xb.shape == (32, 3, 32, 32) and yb.dtype == torch.int64


def test_npz_sequences_token_ids_and_several_inputs(mnist, tmp_path):
    x, y, xt, yt = mnist
    ids = (x[:, ::4, ::4].reshape(64, -1) // 32).astype(np.int32)  # 49 ids in 0..7 per image: token ids
    model = ModelInputs((InputSpec("rows", (28, 28)), InputSpec("tokens", (49,), integer_ids=True)), 10)
    np.savez(tmp_path / "m.npz", x_train_rows=x, x_train_tokens=ids, y_train=y,
             x_val_rows=xt, x_val_tokens=ids[:16], y_val=yt)
    data = UserDataModule(tmp_path / "m.npz", model)
    rows, tokens = data.splits["train"].x
    assert rows.shape == (64, 28, 28) and rows.dtype == torch.float32  # rank 3 keeps Keras's layout
    torch.testing.assert_close(rows, torch.from_numpy(x / 255.0).float(), atol=0, rtol=0)  # uint8 -> x/255
    assert tokens.dtype == torch.int64 and torch.equal(tokens, torch.from_numpy(ids).long())
    (xr, xk), _ = next(iter(data.val_dataloader()))
    assert xr.shape == (16, 28, 28) and xk.shape == (16, 49) and data.test_split == "val"
    floats = ModelInputs((InputSpec("rows", (28, 28)),), 10)
    np.savez(tmp_path / "f.npz", x_train=(x * 2.0).astype(np.float32), y_train=y)
    as_given = UserDataModule(tmp_path / "f.npz", floats).splits["train"].x[0]
    assert torch.equal(as_given, torch.from_numpy(x * 2.0).float())  # float arrays are used as given


def test_rescale_choices(mnist, tmp_path):
    x, y, _, _ = mnist
    np.savez(tmp_path / "u8.npz", x_train=x, y_train=y)
    self_scaling = ModelInputs((InputSpec("image", (28, 28, 1), scales_itself=True),), 10)
    plain = ModelInputs((InputSpec("image", (28, 28, 1)),), 10)
    raw = torch.from_numpy(x[:, None].astype(np.float32))
    assert torch.equal(UserDataModule(tmp_path / "u8.npz", self_scaling).splits["train"].x[0], raw)
    assert torch.equal(UserDataModule(tmp_path / "u8.npz", plain, rescale="none").splits["train"].x[0], raw)
    scaled = UserDataModule(tmp_path / "u8.npz", self_scaling, rescale="1/255").splits["train"].x[0]
    torch.testing.assert_close(scaled, raw / 255, atol=1e-7, rtol=0)  # x/255 in float64 vs float32: 1 ulp
    with pytest.raises(UserDataError, match="--rescale"):
        UserDataModule(tmp_path / "u8.npz", plain, rescale="2")


def test_npz_validation_split_is_kerass_last_fraction(mnist, tmp_path):
    x, y, _, _ = mnist
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    data = UserDataModule(tmp_path / "d.npz", MNIST_MODEL, validation_split=0.25)
    assert len(data.splits["train"]) == 48 and torch.equal(data.splits["val"].y, torch.from_numpy(y[48:]))


@pytest.mark.parametrize("arrays, needle", [
    (lambda x, y: dict(x_train=x), "has no y_train"),
    (lambda x, y: dict(x_train=x, y_train=y[:-1]), "y_train has 63 labels but x has 64 samples"),
    (lambda x, y: dict(x_train=x, y_train=y, x_test=x[:4]), "lacks y_test"),
    (lambda x, y: dict(x_train=x[:, :14], y_train=y), "x_train has shape (64, 14, 28) but the model's input"),
    (lambda x, y: dict(x_train=x, y_train=y % 5), "has 5 classes but the model has 10 outputs"),
    (lambda x, y: dict(x_train=x, y_train=np.eye(12)[y]), "has 12 classes but the model has 10 outputs"),
    (lambda x, y: dict(x_train=x, y_train=y * 0.5 + 0.25), "give integer class indices"),
    (lambda x, y: dict(x_train=x, y_train=y, x_test=x, y_test=y + 3), "y_test has classes beyond the 10"),
    (lambda x, y: dict(x_train=np.array([object()] * 64), y_train=y), "holds Python objects"),
])
def test_npz_refusals(mnist, tmp_path, arrays, needle):
    x, y, _, _ = mnist
    np.savez(tmp_path / "bad.npz", **arrays(x, y))
    with pytest.raises(UserDataError) as error:
        UserDataModule(tmp_path / "bad.npz", MNIST_MODEL)
    assert needle in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_several_inputs_of_different_lengths_are_refused(mnist, tmp_path):
    x, y, _, _ = mnist
    model = ModelInputs((InputSpec("a", (28, 28)), InputSpec("b", (28, 28))), 10)
    np.savez(tmp_path / "d.npz", x_train_a=x, x_train_b=x[:10], y_train=y)
    with pytest.raises(UserDataError, match=r"x_train arrays differ in length \(\[10, 64\]\)"):
        UserDataModule(tmp_path / "d.npz", model)
    np.savez(tmp_path / "e.npz", x_train=x, y_train=y)
    with pytest.raises(UserDataError, match=r"lacks x_train_a, x_train_b"):
        UserDataModule(tmp_path / "e.npz", model)


def test_an_npz_header_declaring_more_than_it_stores_is_refused_before_allocating(tmp_path):
    """A valid archive (CRCs right) whose x_train header declares 3 TB over 3 KB of data: refused from the header."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (4_000_000_000_000, 28, 28)})
    with zipfile.ZipFile(tmp_path / "t.npz", "w") as archive:
        archive.writestr("x_train.npy", header.getvalue() + bytes(4 * 28 * 28))
        with archive.open("y_train.npy", "w") as f:
            np.save(f, np.zeros(4, np.int64))
    with pytest.raises(UserDataError, match=r"x_train' declares shape \(4000000000000, 28, 28\)"):
        UserDataModule(tmp_path / "t.npz", MNIST_MODEL)
