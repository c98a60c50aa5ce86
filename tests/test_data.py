"""The data layer on the real shared files, and on damaged or crafted copies the tests make themselves."""

from __future__ import annotations

import ast
import gzip
import hashlib
import os
import pickle
import struct
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from lightning_cnn import data
from lightning_cnn.data import (
    CIFAR10_CLASSES,
    CorruptDataError,
    DataError,
    DataNotFoundError,
    download_file,
    load_dataset,
    preprocess,
    search_locations,
)

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
IDX_GZ_MD5 = {  # from data/README.md
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
IDX_FILES = list(IDX_GZ_MD5)
CIFAR_NPZ = "cifar10_train50k_test1k.npz"


def digest(path: Path, algorithm: str) -> str:
    return hashlib.new(algorithm, Path(path).read_bytes()).hexdigest()


@pytest.fixture
def isolated(monkeypatch, tmp_path) -> Path:
    """No $LIGHTNING_CNN_DATA, an empty Keras cache and an empty cwd (torchvision root), all under tmp_path.

    Downloads are allowed here (CI sets LIGHTNING_CNN_OFFLINE): these tests only ever download file:// URLs.
    """
    monkeypatch.delenv("LIGHTNING_CNN_DATA", raising=False)
    monkeypatch.delenv("LIGHTNING_CNN_OFFLINE", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


@pytest.fixture(scope="module")
def mnist(data_dir):
    return load_dataset("mnist", data_dir)


@pytest.fixture(scope="module")
def cifar(data_dir):
    return load_dataset("cifar10", data_dir, allow_partial_test=True)


def idx_folder(folder: Path, source: Path, **replacements: bytes) -> Path:
    """A folder of the four MNIST IDX files: links to the real ones, except those given as bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES:
        key = name.replace("-", "_").replace(".", "_")
        if key in replacements:
            (folder / name).write_bytes(replacements[key])
        else:
            (folder / name).symlink_to(source / "mnist" / name)
    return folder


def real_idx(data_dir: Path, name: str) -> bytes:
    return gzip.decompress((data_dir / "mnist" / name).read_bytes())


# --- the real files -------------------------------------------------------------------------------------------


def test_mnist_has_keras_layout_and_documented_label_counts(mnist):
    (x_train, y_train), (x_test, y_test) = mnist
    assert (x_train.shape, y_train.shape, x_test.shape, y_test.shape) == ((60000, 28, 28), (60000,), (10000, 28, 28),
                                                                          (10000,))
    assert x_train.dtype == y_train.dtype == x_test.dtype == y_test.dtype == np.uint8
    assert np.bincount(y_train).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(y_test).tolist() == MNIST_TEST_COUNTS
    assert x_train.max() == 255 and x_train.min() == 0


def test_idx_files_decode_to_exactly_the_npz_arrays(data_dir, mnist):
    from_idx = load_dataset("mnist", data_dir / "mnist")
    for a, b in zip([*from_idx[0], *from_idx[1]], [*mnist[0], *mnist[1]]):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def test_shared_files_match_their_published_checksums(data_dir):
    for name, md5 in IDX_GZ_MD5.items():
        assert digest(data_dir / "mnist" / name, "md5") == md5
    assert digest(data_dir / "mnist.npz", "sha256") == data.MNIST_NPZ_SHA256
    assert digest(data_dir / CIFAR_NPZ, "sha256") == "4c9fdb7b5d6eedb30dce09ce0adabf3832591b4331b81d0a5b29ff11b8d00d6b"


def test_partial_cifar10_test_set_needs_explicit_consent(data_dir):
    with pytest.raises(DataError, match="partial") as error:
        load_dataset("cifar10", data_dir)
    assert "1,000 of 10,000" in str(error.value) and "allow_partial_test=True" in str(error.value)
    assert not isinstance(error.value, CorruptDataError)


def test_cifar10_npz_is_real_cifar_in_keras_layout(cifar):
    (x_train, y_train), (x_test, y_test) = cifar
    assert (x_train.shape, y_train.shape, x_test.shape, y_test.shape) == ((50000, 32, 32, 3), (50000, 1),
                                                                          (1000, 32, 32, 3), (1000, 1))
    assert x_train.dtype == y_train.dtype == x_test.dtype == y_test.dtype == np.uint8
    assert x_train[0, 0, 0].tolist() == [59, 62, 63] and x_test[0, 0, 0].tolist() == [158, 112, 49]
    assert np.bincount(y_train[:, 0]).tolist() == [5000] * 10
    np.testing.assert_allclose(x_train.mean(axis=(0, 1, 2)) / 255, [0.4914, 0.4822, 0.4465], atol=1e-4)
    assert len(CIFAR10_CLASSES) == 10 and CIFAR10_CLASSES[0] == "airplane" and CIFAR10_CLASSES[9] == "truck"


def test_arrays_are_read_only_and_cached(data_dir):
    (x_train, y_train), _ = load_dataset("mnist", data_dir)
    with pytest.raises(ValueError):
        x_train[0, 0, 0] = 1
    with pytest.raises(ValueError):
        y_train[0] = 1
    (again, _), _ = load_dataset("mnist", data_dir)
    assert again is x_train  # decoded once per process


# --- where it looks -------------------------------------------------------------------------------------------


def test_search_order(isolated, monkeypatch):
    monkeypatch.setenv("LIGHTNING_CNN_DATA", str(isolated / "env"))
    assert search_locations("mnist", isolated / "explicit") == [
        isolated / "explicit", isolated / "env", isolated / "keras_home" / "datasets", isolated / "cwd" / "data"]
    assert search_locations("fashion_mnist")[-1] == Path("/usr/share/datasets/fashion-mnist")
    monkeypatch.delenv("KERAS_HOME")
    assert search_locations("cifar10")[1] == Path.home() / ".keras" / "datasets"


@pytest.mark.parametrize("place", ["env", "keras_cache", "torchvision_root", "mnist_subfolder"])
def test_found_in_each_standard_place(isolated, monkeypatch, data_dir, mnist, place):
    if place == "env":
        (isolated / "env").mkdir()
        (isolated / "env" / "mnist.npz").symlink_to(data_dir / "mnist.npz")
        monkeypatch.setenv("LIGHTNING_CNN_DATA", str(isolated / "env"))
    elif place == "keras_cache":
        (isolated / "keras_home" / "datasets").mkdir(parents=True)
        (isolated / "keras_home" / "datasets" / "mnist.npz").symlink_to(data_dir / "mnist.npz")
    elif place == "torchvision_root":
        idx_folder(isolated / "cwd" / "data" / "MNIST" / "raw", data_dir)
    else:
        idx_folder(isolated / "explicit" / "mnist", data_dir)
    found = load_dataset("mnist", isolated / "explicit" if place == "mnist_subfolder" else None, download=False)
    assert np.array_equal(found[1][0], mnist[1][0]) and np.array_equal(found[0][1], mnist[0][1])


def test_explicit_data_dir_comes_before_the_environment(isolated, monkeypatch, data_dir):
    (isolated / "env").mkdir()
    (isolated / "env" / "mnist.npz").write_bytes(b"junk")
    monkeypatch.setenv("LIGHTNING_CNN_DATA", str(isolated / "env"))
    assert load_dataset("mnist", data_dir, download=False)[0][0].shape == (60000, 28, 28)
    with pytest.raises(CorruptDataError, match="env/mnist.npz"):
        load_dataset("mnist", download=False)


def test_nonexistent_data_dir_is_an_error_not_a_fallback(isolated, monkeypatch, data_dir):
    monkeypatch.setenv("LIGHTNING_CNN_DATA", str(data_dir))
    with pytest.raises(DataNotFoundError, match="does not exist") as error:
        load_dataset("mnist", isolated / "nope")
    assert str(isolated / "nope") in str(error.value)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_empty_folder_lists_every_place_searched(isolated, name):
    (isolated / "empty").mkdir()
    with pytest.raises(DataNotFoundError) as error:
        load_dataset(name, isolated / "empty", download=False)
    message = str(error.value)
    for folder in search_locations(name, isolated / "empty"):
        assert str(folder) in message
    assert "download=False" in message
    what_to_put = {"mnist": "mnist.npz", "fashion_mnist": "fashion-mnist/", "cifar10": "cifar-10-python.tar.gz"}
    assert what_to_put[name] in message


def test_download_false_never_touches_the_network(isolated, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("tried to download"))
    with pytest.raises(DataNotFoundError):
        load_dataset("mnist", download=False)


def test_unknown_data_set_name():
    with pytest.raises(ValueError, match="mnist, fashion_mnist, cifar10"):
        load_dataset("imagenet")


# --- damaged MNIST copies -------------------------------------------------------------------------------------


def test_incomplete_idx_set_names_the_missing_file(isolated, data_dir):
    folder = idx_folder(isolated / "d", data_dir)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match=r"t10k-labels-idx1-ubyte\[\.gz\]"):
        load_dataset("mnist", folder, download=False)


def test_truncated_gzip(isolated, data_dir):
    whole = (data_dir / "mnist" / "train-labels-idx1-ubyte.gz").read_bytes()
    folder = idx_folder(isolated / "d", data_dir, train_labels_idx1_ubyte_gz=whole[: len(whole) // 2])
    with pytest.raises(CorruptDataError, match="train-labels-idx1-ubyte.gz is damaged or truncated"):
        load_dataset("mnist", folder)


def test_wrong_idx_magic(isolated, data_dir):
    labels = bytearray(real_idx(data_dir, "t10k-labels-idx1-ubyte.gz"))
    labels[3] = 0x03  # an images magic number on a labels file
    folder = idx_folder(isolated / "d", data_dir, t10k_labels_idx1_ubyte_gz=gzip.compress(bytes(labels)))
    with pytest.raises(CorruptDataError, match=r"t10k-labels-idx1-ubyte.gz is not an IDX labels file \(magic"):
        load_dataset("mnist", folder)


def test_wrong_idx_count(isolated, data_dir):
    labels = real_idx(data_dir, "train-labels-idx1-ubyte.gz")
    short = struct.pack(">II", 0x801, 59_999) + labels[8:-1]  # consistent, but one label short
    folder = idx_folder(isolated / "d", data_dir, train_labels_idx1_ubyte_gz=gzip.compress(short))
    with pytest.raises(CorruptDataError, match="holds 59,999 labels, expected 60,000"):
        load_dataset("mnist", folder)


def test_truncated_idx_payload(isolated, data_dir):
    labels = real_idx(data_dir, "t10k-labels-idx1-ubyte.gz")
    folder = idx_folder(isolated / "d", data_dir, t10k_labels_idx1_ubyte_gz=gzip.compress(labels[:-10]))
    with pytest.raises(CorruptDataError, match="is truncated: 9,990 bytes of labels where its header promises 10,000"):
        load_dataset("mnist", folder)


def test_modified_idx_contents_fail_the_checksum(isolated, data_dir):
    labels = bytearray(real_idx(data_dir, "t10k-labels-idx1-ubyte.gz"))
    labels[100] = (labels[100] + 1) % 10  # still a perfectly valid IDX file
    folder = idx_folder(isolated / "d", data_dir, t10k_labels_idx1_ubyte_gz=gzip.compress(bytes(labels)))
    with pytest.raises(CorruptDataError, match="md5 mismatch.*delete it"):
        load_dataset("mnist", folder)


def test_uncompressed_and_recompressed_idx_files_are_accepted(isolated, data_dir, mnist):
    folder = idx_folder(isolated / "d", data_dir)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).unlink()
    (folder / "t10k-images-idx3-ubyte").write_bytes(real_idx(data_dir, "t10k-images-idx3-ubyte.gz"))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(real_idx(data_dir, "t10k-labels-idx1-ubyte.gz"), compresslevel=1, mtime=0))
    (_, _), (x_test, y_test) = load_dataset("mnist", folder)
    assert np.array_equal(x_test, mnist[1][0]) and np.array_equal(y_test, mnist[1][1])


def test_mnist_is_not_taken_for_fashion_mnist(isolated, data_dir):
    idx_folder(isolated / "d" / "fashion-mnist", data_dir)
    with pytest.raises(DataError, match="is MNIST's train-images-idx3-ubyte, not Fashion-MNIST's"):
        load_dataset("fashion_mnist", isolated / "d")


def save_npz(path: Path, **arrays) -> Path:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


@pytest.mark.parametrize("damage, message", [
    ("garbage", "not a readable .npz archive"),
    ("truncated", "not a readable .npz archive"),
    ("missing_key", "lacks y_test"),
    ("wrong_dtype", r"x_test is float32 \(10000, 28, 28\), expected uint8"),
    ("wrong_shape", r"x_test is uint8 \(10000, 784\), expected uint8 \(N, 28, 28\)"),
    ("bad_labels", r"y_train has labels outside 0..9"),
    ("re_saved", "sha256 mismatch"),
])
def test_damaged_mnist_npz(isolated, mnist, damage, message):
    (x_train, y_train), (x_test, y_test) = mnist
    arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    path = isolated / "mnist.npz"
    if damage == "garbage":
        path.write_bytes(b"this is not a zip archive" * 100)
    elif damage == "truncated":
        save_npz(path, **arrays)
        path.write_bytes(path.read_bytes()[:1_000_000])
    else:
        if damage == "missing_key":
            del arrays["y_test"]
        elif damage == "wrong_dtype":
            arrays["x_test"] = x_test.astype(np.float32)
        elif damage == "wrong_shape":
            arrays["x_test"] = x_test.reshape(10000, 784)
        elif damage == "bad_labels":
            arrays["y_train"] = np.where(np.arange(60000) == 7, 10, y_train).astype(np.uint8)
        save_npz(path, **arrays)  # "re_saved": the same arrays, but not Keras's file
    with pytest.raises(CorruptDataError, match=message) as error:
        load_dataset("mnist", isolated)
    assert str(path) in str(error.value)


def test_cifar10_npz_with_incomplete_train_set_is_corrupt(isolated):
    images = np.zeros((100, 32, 32, 3), np.uint8)
    labels = np.zeros((100, 1), np.uint8)
    save_npz(isolated / "cifar10.npz", x_train=images, y_train=labels, x_test=images, y_test=labels)
    with pytest.raises(CorruptDataError, match="100 training images, expected 50,000"):
        load_dataset("cifar10", isolated, allow_partial_test=True)


# --- CIFAR-10's official pickled batches, written small in the genuine format -----------------------------------

PER_BATCH = 20


@pytest.fixture
def small_cifar(monkeypatch):
    """Shrinks the official batch size so that genuine-format files stay tiny; returns random NHWC images/labels."""
    monkeypatch.setattr(data, "CIFAR_IMAGES_PER_BATCH", PER_BATCH)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6 * PER_BATCH, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 6 * PER_BATCH).astype(np.uint8)
    return images, labels


def batch_bytes(images: np.ndarray, labels, label: bytes = b"training batch") -> bytes:
    """A batch exactly as the CIFAR-10 files hold it: rows of 1024 R, 1024 G, 1024 B values; protocol 2."""
    rows = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), 3072)
    batch = {b"batch_label": label, b"labels": [int(v) for v in labels], b"data": rows,
             b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(images))]}
    return pickle.dumps(batch, protocol=2)


def write_cifar(folder: Path, form: str, images, labels, replace: dict[str, bytes] | None = None) -> Path:
    """cifar-10-batches-py/ (form "dir") or cifar-10-python.tar.gz ("tar") in ``folder``."""
    batches = {f"data_batch_{i + 1}": batch_bytes(images[i * PER_BATCH:(i + 1) * PER_BATCH],
                                                  labels[i * PER_BATCH:(i + 1) * PER_BATCH]) for i in range(5)}
    batches["test_batch"] = batch_bytes(images[5 * PER_BATCH:], labels[5 * PER_BATCH:], b"testing batch 1 of 1")
    batches.update(replace or {})
    inner = folder / "cifar-10-batches-py"
    inner.mkdir(parents=True)
    for name, payload in batches.items():
        (inner / name).write_bytes(payload)
    if form == "tar":
        with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as archive:
            archive.add(inner, arcname="cifar-10-batches-py")
        for path in inner.iterdir():
            path.unlink()
        inner.rmdir()
    return folder


@pytest.mark.parametrize("form", ["dir", "tar"])
def test_genuine_format_cifar10_batches(isolated, small_cifar, form):
    images, labels = small_cifar
    write_cifar(isolated / "d", form, images, labels)
    (x_train, y_train), (x_test, y_test) = load_dataset("cifar10", isolated / "d")
    assert np.array_equal(x_train, images[:5 * PER_BATCH]) and np.array_equal(x_test, images[5 * PER_BATCH:])
    assert np.array_equal(y_train[:, 0], labels[:5 * PER_BATCH])
    assert np.array_equal(y_test[:, 0], labels[5 * PER_BATCH:])
    assert (x_train.dtype, y_train.dtype, y_train.shape, x_test.shape) == (
        np.uint8, np.uint8, (5 * PER_BATCH, 1), (PER_BATCH, 32, 32, 3))


def test_cifar10_in_the_keras_3_cache_layout(isolated, small_cifar):
    images, labels = small_cifar
    write_cifar(isolated / "keras_home" / "datasets" / "cifar-10-batches-py-target", "dir", images, labels)
    (x_train, _), _ = load_dataset("cifar10", download=False)
    assert np.array_equal(x_train, images[:5 * PER_BATCH])


def test_incomplete_cifar10_folder_names_the_missing_batch(isolated, small_cifar):
    write_cifar(isolated / "d", "dir", *small_cifar)
    (isolated / "d" / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataNotFoundError, match="lacks test_batch"):
        load_dataset("cifar10", isolated / "d")


@pytest.mark.parametrize("form", ["dir", "tar"])
@pytest.mark.parametrize("batch, message", [
    ("short", r"b'data' is uint8 \(19, 3072\), expected uint8 \(20, 3072\)"),
    ("bad_labels", r"labels outside 0..9"),
    ("not_a_pickle", "not a readable CIFAR-10 batch"),
    ("wrong_dtype", r"b'data' is int64"),
])
def test_damaged_cifar10_batch(isolated, small_cifar, form, batch, message):
    images, labels = small_cifar
    damaged = {
        "short": lambda: batch_bytes(images[:PER_BATCH - 1], labels[:PER_BATCH - 1]),
        "bad_labels": lambda: batch_bytes(images[:PER_BATCH], [10] * PER_BATCH),
        "not_a_pickle": lambda: b"\x80\x02}q\x00(X\x04",
        "wrong_dtype": lambda: pickle.dumps({b"data": np.zeros((PER_BATCH, 3072), np.int64),
                                             b"labels": [0] * PER_BATCH}, protocol=2),
    }[batch]()
    write_cifar(isolated / "d", form, images, labels, {"data_batch_3": damaged})
    with pytest.raises(CorruptDataError, match=message) as error:
        load_dataset("cifar10", isolated / "d")
    assert "data_batch_3" in str(error.value)


def test_truncated_cifar10_archive(isolated, small_cifar):
    write_cifar(isolated / "d", "tar", *small_cifar)
    archive = isolated / "d" / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(CorruptDataError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", isolated / "d")


class RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsEval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",)


@pytest.mark.parametrize("form", ["dir", "tar"])
@pytest.mark.parametrize("payload, refused", [(RunsShell, "system"), (RunsEval, "eval")])
def test_cifar10_batch_with_code_is_refused_and_never_runs(isolated, small_cifar, form, payload, refused):
    images, labels = small_cifar
    marker = isolated / "payload-ran"
    evil = pickle.dumps({b"data": payload(marker), b"labels": [0] * PER_BATCH}, protocol=2)
    write_cifar(isolated / "d", form, images, labels, {"data_batch_1": evil})
    with pytest.raises(CorruptDataError, match=f"refusing to load .*data_batch_1.*contains code \\(GLOBAL .*{refused}"):
        load_dataset("cifar10", isolated / "d")
    assert not marker.exists()


# --- downloads (local file:// URLs only; no network) ------------------------------------------------------------


def test_download_verifies_the_checksum_and_writes_atomically(tmp_path, data_dir):
    source = data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz"
    dest = tmp_path / "cache" / "labels.gz"
    assert download_file(source.as_uri(), dest, ("md5", IDX_GZ_MD5[source.name])) == dest
    assert dest.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["labels.gz"]
    gunzipped = ("md5-gunzipped", hashlib.md5(real_idx(data_dir, source.name)).hexdigest())
    assert download_file(source.as_uri(), tmp_path / "again.gz", gunzipped).is_file()


@pytest.mark.parametrize("checksum", [("sha256", "0" * 64), ("md5-gunzipped", "0" * 32)])
def test_download_with_a_wrong_checksum_leaves_nothing_behind(tmp_path, data_dir, checksum):
    source = data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz"
    (tmp_path / "cache").mkdir()
    with pytest.raises(CorruptDataError, match="failed verification.*nothing was saved"):
        download_file(source.as_uri(), tmp_path / "cache" / "labels.gz", checksum)
    assert list((tmp_path / "cache").iterdir()) == []


def test_download_failure_is_data_not_found(tmp_path):
    with pytest.raises(DataNotFoundError, match="could not download"):
        download_file((tmp_path / "absent.npz").as_uri(), tmp_path / "x.npz", ("sha256", "0" * 64))
    assert list(tmp_path.iterdir()) == []


def test_load_dataset_downloads_once_into_the_keras_cache(isolated, monkeypatch, data_dir, mnist):
    url = (data_dir / "mnist.npz").as_uri()
    monkeypatch.setitem(data._DOWNLOADS, "mnist", [(url, "mnist.npz", ("sha256", data.MNIST_NPZ_SHA256))])
    (x_train, _), _ = load_dataset("mnist")
    assert (isolated / "keras_home" / "datasets" / "mnist.npz").is_file()
    assert np.array_equal(x_train, mnist[0][0])
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded twice"))
    load_dataset("mnist")


def test_failed_download_lists_every_place_searched(isolated, monkeypatch):
    url = (isolated / "no-such-mirror" / "mnist.npz").as_uri()
    monkeypatch.setitem(data._DOWNLOADS, "mnist", [(url, "mnist.npz", ("sha256", data.MNIST_NPZ_SHA256))])
    with pytest.raises(DataNotFoundError) as error:
        load_dataset("mnist")
    message = str(error.value)
    assert "The download failed: could not download" in message and url in message
    assert all(str(folder) in message for folder in search_locations("mnist"))


# --- preprocessing --------------------------------------------------------------------------------------------


def test_preprocess_scale_and_raw():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    scaled, raw = preprocess(x, "scale_255"), preprocess(x, "raw")
    assert scaled.shape == raw.shape == (1, 16, 16, 1) and scaled.dtype == raw.dtype == np.float32
    assert np.array_equal(scaled[..., 0], (x / 255.0).astype(np.float32))  # what the documents compute
    assert np.array_equal(raw[..., 0], x.astype(np.float32))


def test_preprocess_vgg16_caffe_formula(cifar):
    (x, _), _ = cifar
    out = preprocess(x[:2], "vgg16_caffe")
    expected = x[:2, ..., ::-1].astype(np.float32) - np.array([103.939, 116.779, 123.68], np.float32)
    assert out.dtype == np.float32 and np.array_equal(out, expected)
    assert out[0, 0, 0].tolist() == pytest.approx([63 - 103.939, 62 - 116.779, 59 - 123.68], abs=1e-4)


@pytest.mark.keras
def test_preprocess_vgg16_caffe_equals_keras(cifar):
    from keras_ref import load_tensorflow

    load_tensorflow()  # with the coexistence guard: a bare `import keras` here crashed later torch steps in pytest
    from keras.applications.vgg16 import preprocess_input

    (x, _), (x_test, _) = cifar
    images = np.concatenate([x[:500], x_test[:500]])
    expected = preprocess_input(images.copy())
    assert expected.dtype == np.float32 and np.array_equal(preprocess(images, "vgg16_caffe"), expected)


@pytest.mark.parametrize("x, kind, message", [
    (np.zeros((1, 28, 28), np.float32), "raw", "uint8"),
    (np.zeros((28, 28), np.uint8), "raw", "shaped"),
    (np.zeros((1, 28, 28), np.uint8), "vgg16_caffe", "RGB"),
    (np.zeros((1, 28, 28), np.uint8), "torch", "unknown preprocessing"),
])
def test_preprocess_rejects_what_it_cannot_do(x, kind, message):
    with pytest.raises(ValueError, match=message):
        preprocess(x, kind)


def test_data_layer_imports_neither_torch_nor_tensorflow():
    tree = ast.parse(Path(data.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported.isdisjoint({"torch", "tensorflow", "keras", "lightning", "torchvision"}), imported


def test_offline_environment_variable_forbids_downloading(tmp_path, monkeypatch):
    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError("the data layer tried to download although LIGHTNING_CNN_OFFLINE=1")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setenv("LIGHTNING_CNN_OFFLINE", "1")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("LIGHTNING_CNN_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.DataNotFoundError, match="mnist.npz"):
        data.load_dataset("mnist", download=True)
