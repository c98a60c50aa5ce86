"""The data layer both frameworks share: find, verify and decode MNIST, Fashion-MNIST and CIFAR-10.

Pure numpy + stdlib (no torch, no TensorFlow), so the Keras reference and the Lightning port train on
byte-identical arrays. ``load_dataset`` returns exactly what ``keras.datasets.<name>.load_data()`` returns.

Where it looks, in order (``search_locations``), taking the first folder that holds the data set:

1. ``data_dir`` when given. A folder that does not exist is an error, never a fallback.
2. ``$LIGHTNING_CNN_DATA``.
3. The Keras cache, ``$KERAS_HOME/datasets`` (default ``~/.keras/datasets``), as Keras resolves it.
4. A torchvision-style root: ``./data`` in the current directory (the ``root="./data"`` that torchvision's
   tutorials use; torchvision itself has no default root), holding ``MNIST/raw/``, ``FashionMNIST/raw/``,
   ``cifar-10-batches-py/``.
5. For Fashion-MNIST, ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).
6. With ``download=True``: a download from the public mirror Keras uses into the Keras cache, checksum-verified
   before it is moved into place.

Integrity: IDX files are checked by the md5 of their *decompressed* contents (Debian re-gzips the Fashion-MNIST
files, so the .gz md5s would reject genuine copies); Keras's ``mnist.npz`` by its sha256. Large CIFAR-10 files
are not hashed on every load but validated structurally (shapes, dtypes, counts, label range), and their pickled
batches are read with an unpickler that can only rebuild numpy arrays.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import os
import pickle
import shutil
import struct
import sys
import tarfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightning_cnn.atomic import atomic_path
from lightning_cnn.errors import UserError

DATASETS = ("mnist", "fashion_mnist", "cifar10")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
CLASS_NAMES = {"mnist": tuple(str(i) for i in range(10)), "fashion_mnist": FASHION_MNIST_CLASSES,
               "cifar10": CIFAR10_CLASSES}
PREPROCESSING = ("scale_255", "raw", "vgg16_caffe")
TEST_SIZE = 10_000  # official test-set size of all three data sets
# Images per official CIFAR-10 batch file (5 train batches + 1 test batch). Tests shrink it to write small files
# in the genuine format; every CIFAR-10 count below derives from it.
CIFAR_IMAGES_PER_BATCH = 10_000
DOWNLOAD_TIMEOUT_S = 60.0

_TITLE = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
_IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte")
# md5 of each IDX file's decompressed contents -> (data set, file). Also tells MNIST and Fashion-MNIST apart.
_IDX_MD5 = {
    "6bbc9ace898e44ae57da46a324031adb": ("mnist", "train-images-idx3-ubyte"),
    "a25bea736e30d166cdddb491f175f624": ("mnist", "train-labels-idx1-ubyte"),
    "2646ac647ad5339dbf082846283269ea": ("mnist", "t10k-images-idx3-ubyte"),
    "27ae3e4e09519cfbb04c329615203637": ("mnist", "t10k-labels-idx1-ubyte"),
    "f4a8712d7a061bf5bd6d2ca38dc4d50a": ("fashion_mnist", "train-images-idx3-ubyte"),
    "9018921c3c673c538a1fc5bad174d6f9": ("fashion_mnist", "train-labels-idx1-ubyte"),
    "8181f5470baa50b63fa0f6fddb340f0a": ("fashion_mnist", "t10k-images-idx3-ubyte"),
    "15d484375f8d13e6eb1aabb0c3f46965": ("fashion_mnist", "t10k-labels-idx1-ubyte"),
}
MNIST_NPZ_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
_KERAS_MIRROR = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
# What a download fetches: (url, path under the Keras cache, (algorithm, hex digest)). "md5-gunzipped" is the
# md5 of the decompressed file, the only checksum that identifies the Fashion-MNIST files on every mirror.
_DOWNLOADS = {
    "mnist": [(_KERAS_MIRROR + "mnist.npz", "mnist.npz", ("sha256", MNIST_NPZ_SHA256))],
    "fashion_mnist": [
        (_KERAS_MIRROR + f"{stem}.gz", f"fashion-mnist/{stem}.gz", ("md5-gunzipped", md5))
        for md5, (name, stem) in _IDX_MD5.items() if name == "fashion_mnist"
    ],
    "cifar10": [(CIFAR10_URL, "cifar-10-python.tar.gz", ("md5", "c58f30108f718f92721af3b95e74349a"))],
}
_CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


class DataError(UserError):
    """Any data problem; ``str(error)`` is a complete message for the user."""


class DataNotFoundError(DataError):
    """The data set is in none of the places searched (and could not be downloaded)."""


class CorruptDataError(DataError):
    """A file is there but damaged, truncated, tampered with or not what its name says."""


# --- where to look --------------------------------------------------------------------------------------------


def keras_home() -> Path:
    """Keras's own folder, by Keras's rule: ``$KERAS_HOME``, else ``~/.keras`` (``/tmp/.keras`` when the home folder
    is not writable). Its ``datasets`` and ``models`` subfolders hold what Keras downloads."""
    if "KERAS_HOME" in os.environ:
        return Path(os.environ["KERAS_HOME"]).expanduser()
    home = Path.home()
    return (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"


def keras_cache_dir() -> Path:
    """Where Keras downloads data sets, so that its downloads are found."""
    return keras_home() / "datasets"


def _locations(name: str, data_dir) -> list[tuple[str, Path]]:
    found = []
    if data_dir is not None:
        found.append(("data_dir", Path(data_dir).expanduser()))
    if os.environ.get("LIGHTNING_CNN_DATA"):
        found.append(("$LIGHTNING_CNN_DATA", Path(os.environ["LIGHTNING_CNN_DATA"]).expanduser()))
    found.append(("Keras cache", keras_cache_dir()))
    found.append(("torchvision-style root", Path("data")))
    if name == "fashion_mnist":
        found.append(("Debian dataset-fashion-mnist", Path("/usr/share/datasets/fashion-mnist")))
    unique: dict[Path, tuple[str, Path]] = {}
    for label, path in found:
        unique.setdefault(path.absolute(), (label, path.absolute()))
    return list(unique.values())


def search_locations(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders ``load_dataset`` searches for ``name``, in order (see the module docstring)."""
    _check_name(name)
    return [path for _, path in _locations(name, data_dir)]


@dataclass(frozen=True)
class _Source:
    kind: str  # mnist_npz | idx | cifar_dir | cifar_tar | cifar_npz
    paths: tuple[Path, ...]


def _idx_set(folder: Path) -> _Source | None:
    """The four IDX files in ``folder`` (each .gz or raw, .gz preferred); None if there are none."""
    chosen = {}
    for stem in _IDX_STEMS:
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                chosen[stem] = candidate
                break
    if not chosen:
        return None
    missing = [f"{stem}[.gz]" for stem in _IDX_STEMS if stem not in chosen]
    if missing:
        raise DataNotFoundError(
            f"{folder} holds {', '.join(p.name for p in chosen.values())} but not {', '.join(missing)}: "
            "the four IDX files belong together; add the missing ones (or remove the others)."
        )
    return _Source("idx", tuple(chosen[stem] for stem in _IDX_STEMS))


def _cifar_dir(folder: Path) -> _Source | None:
    files = [folder / batch for batch in _CIFAR_BATCHES]
    if not folder.is_dir() or not any(f.exists() for f in files):
        return None
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataNotFoundError(f"{folder} lacks {', '.join(missing)}: extract all of cifar-10-python.tar.gz there.")
    return _Source("cifar_dir", tuple(files))


def _find_in(name: str, base: Path) -> _Source | None:
    """The first copy of ``name`` in ``base`` in any accepted layout, preferring complete official formats."""
    if name == "mnist":
        if (base / "mnist.npz").is_file():
            return _Source("mnist_npz", (base / "mnist.npz",))
        folders = (base, base / "mnist", base / "MNIST" / "raw")
        return next(filter(None, map(_idx_set, folders)), None)
    if name == "fashion_mnist":
        folders = (base / "fashion-mnist", base / "fashion_mnist", base / "FashionMNIST" / "raw", base)
        return next(filter(None, map(_idx_set, folders)), None)
    # cifar10: Keras 2 and torchvision extract to cifar-10-batches-py/, Keras 3 to cifar-10-batches-py-target/.
    for folder in (base / "cifar-10-batches-py", base / "cifar-10-batches-py-target" / "cifar-10-batches-py"):
        if source := _cifar_dir(folder):
            return source
    for archive in ("cifar-10-python.tar.gz", "cifar-10-batches-py.tar.gz", "cifar-10-batches-py-target_archive"):
        if (base / archive).is_file():
            return _Source("cifar_tar", (base / archive,))
    for npz in [base / "cifar10.npz", *sorted(base.glob("cifar10_*.npz"))]:
        if npz.is_file():
            return _Source("cifar_npz", (npz,))
    return None


def _what_to_put(name: str, where: str) -> str:
    idx = ", ".join(f"{stem}.gz" for stem in _IDX_STEMS)
    if name == "mnist":
        return (f"put mnist.npz, or the four IDX files ({idx}), in {where} "
                "(the IDX files may also go in a mnist/ or MNIST/raw/ subfolder)")
    if name == "fashion_mnist":
        return (f"put the four Fashion-MNIST IDX files ({idx}) in a fashion-mnist/ or FashionMNIST/raw/ "
                f"subfolder of {where}")
    return (f"put cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/ folder, or a cifar10.npz holding "
            f"x_train, y_train, x_test, y_test in keras load_data() layout) in {where}")


def _not_found(name: str, locations, why: str) -> DataNotFoundError:
    where = "\n".join(f"  - {path}  ({label}{'' if path.is_dir() else ', missing'})" for label, path in locations)
    return DataNotFoundError(
        f"{_TITLE[name]} not found; searched, in order:\n{where}\n{why}\n"
        f"To fix: {_what_to_put(name, 'one of those folders (or pass data_dir / --data-dir)')}."
    )


# --- reading and validating -----------------------------------------------------------------------------------


_READ_CHUNK = 1 << 20  # bytes read at a time from a (possibly hostile) gzip stream


def _idx_dims(header: bytes, path: Path, images: bool, count: int) -> tuple[int, ...]:
    """The dimensions an IDX header declares, checked against the data set's before anything is allocated."""
    ndim = 3 if images else 1
    magic = 0x0800 | ndim  # unsigned bytes, ndim dimensions
    what = "images" if images else "labels"
    if len(header) < 4 + 4 * ndim:
        raise CorruptDataError(f"{path} is truncated: {len(header)} bytes, shorter than an IDX header.")
    found = int.from_bytes(header[:4], "big")
    if found != magic:
        raise CorruptDataError(
            f"{path} is not an IDX {what} file (magic number {found:#010x}, expected {magic:#010x}); "
            "delete it and download it again."
        )
    dims = struct.unpack(f">{ndim}I", header[4:])
    if images and dims[1:] != (28, 28):
        raise CorruptDataError(f"{path} holds {dims[1]}x{dims[2]} images, expected 28x28.")
    if dims[0] != count:
        raise CorruptDataError(f"{path} holds {dims[0]:,} {what}, expected {count:,}.")
    return dims


def _read_idx_file(path: Path, images: bool, count: int) -> tuple[memoryview, tuple[int, ...]]:
    """The whole file's (decompressed) bytes and its dimensions, never reading more than its header promises.

    The header is checked first (magic, image size, count equal to the data set's), so the payload is bounded by
    the real data set's size; it is read in chunks into one buffer of that size plus one byte, which tells a file
    that is too long (a gzip bomb inflating to gigabytes) from a complete one without inflating the rest.
    """
    ndim = 3 if images else 1
    what = "images" if images else "labels"
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            header = f.read(4 + 4 * ndim)
            dims = _idx_dims(header, path, images, count)
            expected = int(np.prod(dims))
            buffer = bytearray(len(header) + expected + 1)
            buffer[:len(header)] = header
            view, filled = memoryview(buffer), len(header)
            while filled < len(buffer) and (n := f.readinto(view[filled:filled + _READ_CHUNK])):
                filled += n
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise CorruptDataError(
            f"{path} is damaged or truncated (gzip: {e}); delete it and download it again."
        ) from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from None
    payload = filled - len(header)
    if payload != expected:
        state = "truncated" if payload < expected else "too long"
        found = f"{payload:,} bytes" if payload < expected else "more bytes"
        raise CorruptDataError(
            f"{path} is {state}: {found} of {what} where its header promises {expected:,}; "
            "delete it and download it again."
        )
    return view[:filled], dims


def _read_idx(path: Path, name: str, stem: str) -> np.ndarray:
    images = "images" in stem
    data, dims = _read_idx_file(path, images, 60_000 if stem.startswith("train") else TEST_SIZE)
    owner = _IDX_MD5.get(hashlib.md5(data).hexdigest())
    if owner is None:
        raise CorruptDataError(
            f"{path} passes the format checks but its contents differ from the official {_TITLE[name]} "
            f"{stem} (md5 mismatch): it is damaged or modified; delete it and download it again."
        )
    if owner != (name, stem):
        raise DataError(
            f"{path} is {_TITLE[owner[0]]}'s {owner[1]}, not {_TITLE[name]}'s {stem}: keep each data set in "
            f"its own folder ({'mnist/' if name == 'mnist' else 'fashion-mnist/'} for {_TITLE[name]})."
        )
    return np.frombuffer(data, np.uint8, offset=len(data) - int(np.prod(dims))).reshape(dims)  # no copy


def _check_split(x, y, where: str, split: str, image_shape: tuple, y_shape) -> tuple[np.ndarray, np.ndarray]:
    """Shapes, dtypes and label range of one split; returns y in load_data() layout."""
    if x.dtype != np.uint8 or x.ndim != 1 + len(image_shape) or x.shape[1:] != image_shape:
        raise CorruptDataError(
            f"{where}: x_{split} is {x.dtype} {x.shape}, expected uint8 (N, {', '.join(map(str, image_shape))})."
        )
    if not np.issubdtype(y.dtype, np.integer) or y.shape not in ((len(x),), (len(x), 1)):
        raise CorruptDataError(
            f"{where}: y_{split} is {y.dtype} {y.shape}, expected {len(x):,} integer labels to match x_{split}."
        )
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise CorruptDataError(f"{where}: y_{split} has labels outside 0..9 ({y.min()}..{y.max()}).")
    return x, y.astype(np.uint8).reshape((len(y),) + y_shape)


def _check_counts(name: str, where: str, x_train, x_test) -> None:
    """Train must be complete; a test set may be shorter (partial) but never longer or empty."""
    n_train, n_test = _expected_sizes(name)
    if len(x_train) != n_train:
        raise CorruptDataError(f"{where}: {len(x_train):,} training images, expected {n_train:,}.")
    if not 0 < len(x_test) <= n_test:
        raise CorruptDataError(f"{where}: {len(x_test):,} test images, expected {n_test:,}.")


def _expected_sizes(name: str) -> tuple[int, int]:
    if name == "cifar10":
        return 5 * CIFAR_IMAGES_PER_BATCH, CIFAR_IMAGES_PER_BATCH
    return 60_000, TEST_SIZE


def _layout(name: str) -> tuple[tuple, tuple]:
    """Image shape and per-sample label shape of load_data()."""
    return ((32, 32, 3), (1,)) if name == "cifar10" else ((28, 28), ())


def read_npy_header(archive: zipfile.ZipFile, member: str) -> tuple[tuple, np.dtype]:
    """(shape, dtype) an .npy member of an .npz declares, read before numpy allocates anything for it."""
    with archive.open(member) as f:
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(f))
        if read_header is None:  # version 3.0 only adds utf-8 field names, which no load_data() array has
            raise ValueError(f"{member} has an unsupported .npy format version")
        shape, _, dtype = read_header(f)
    return shape, dtype


def read_user_npz(path, where: str, error: type[Exception], max_bytes: int | None = None,
                  kinds: str | None = None) -> dict[str, np.ndarray]:
    """Every array of a user's .npz, never through pickle: each member's header is read first, and object arrays,
    headers declaring more bytes than the member stores (damaged or hostile), with ``max_bytes`` archives declaring
    more than that, and with ``kinds`` (numpy dtype kinds, e.g. "biuf") arrays of other kinds are refused before
    numpy allocates anything. Errors are ``error("<where>...")``."""
    try:
        with zipfile.ZipFile(path) as archive:
            headers = {m.removesuffix(".npy"): (*read_npy_header(archive, m), archive.getinfo(m).file_size)
                       for m in archive.namelist() if m.endswith(".npy")}
    except FileNotFoundError:
        raise error(f"{where}: no such file; give an .npz written with numpy.savez") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error) as e:
        raise error(f"{where} is not a readable .npz archive ({e}); write it with numpy.savez") from None
    total = 0
    for key, (shape, dtype, stored) in headers.items():
        if dtype.hasobject:
            raise error(f"{where}: array {key!r} holds Python objects ({dtype}), which only pickle can load and a "
                        "file must not run code: save plain numeric arrays")
        if kinds is not None and dtype.kind not in kinds:
            raise error(f"{where}: array {key!r} is {dtype} (not numbers); save numeric arrays (float32 values, or "
                        "integer ids)")
        declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if declared > stored:
            raise error(f"{where}: array {key!r} declares shape {shape} ({declared:,} bytes) but stores "
                        f"{stored:,} bytes: the file is damaged; write it again")
        total += declared
    if max_bytes is not None and total > max_bytes:
        raise error(f"{where}: its arrays hold {total:,} bytes, more than the bound {max_bytes:,}; save a subset")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error) as e:
        raise error(f"{where} is damaged ({e}); write it again with numpy.savez") from None


def _check_npy_header(archive: np.lib.npyio.NpzFile, key: str, path: Path, name: str) -> None:
    """Refuse an array whose header declares more bytes than the data set's largest array, before numpy allocates
    it (a damaged or hostile header can declare petabytes)."""
    member = f"{key}.npy" if f"{key}.npy" in archive.zip.namelist() else key
    shape, dtype = read_npy_header(archive.zip, member)
    image_shape, _ = _layout(name)
    largest = _expected_sizes(name)[0] * int(np.prod(image_shape))  # x_train's bytes
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > largest:
        raise CorruptDataError(
            f"{path}: {key} declares a {dtype} array of shape {shape} ({declared:,} bytes), more than the whole "
            f"{_TITLE[name]} training set ({largest:,} bytes): the file is damaged or not {_TITLE[name]}; "
            "delete it and get it again."
        )


def _read_npz(path: Path, name: str):
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CorruptDataError(f"{path} is not a readable .npz archive ({e}); delete it and get it again.") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CorruptDataError(f"{path} is a single .npy array, not an .npz of x_train, y_train, x_test, y_test.")
    with archive:
        keys = ("x_train", "y_train", "x_test", "y_test")
        missing = [k for k in keys if k not in archive.files]
        if missing:
            raise CorruptDataError(f"{path} lacks {', '.join(missing)} (has: {', '.join(archive.files) or 'nothing'}).")
        try:
            for key in keys:
                _check_npy_header(archive, key, path, name)
            x_train, y_train, x_test, y_test = (archive[k] for k in keys)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error) as e:
            raise CorruptDataError(f"{path} is damaged ({e}); delete it and get it again.") from None
    image_shape, y_shape = _layout(name)
    x_train, y_train = _check_split(x_train, y_train, str(path), "train", image_shape, y_shape)
    x_test, y_test = _check_split(x_test, y_test, str(path), "test", image_shape, y_shape)
    _check_counts(name, str(path), x_train, x_test)
    if path.name == "mnist.npz" and _file_digest(path, "sha256") != MNIST_NPZ_SHA256:
        raise CorruptDataError(
            f"{path} differs from Keras's mnist.npz (sha256 mismatch): it is damaged or modified; "
            "delete it and download it again."
        )
    return x_train, y_train, x_test, y_test


def _file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# The only globals a CIFAR-10 batch needs: numpy array reconstruction (numpy 1 and 2 spellings) and, for batches
# pickled by Python 3 with protocol 2, codecs.encode (how such pickles store bytes). Nothing is imported by name.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's own array rebuilder, whatever module it lives in
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Refuses every global outside ``_PICKLE_GLOBALS``, so a crafted batch cannot run code."""

    def __init__(self, stream, where: str):
        super().__init__(stream, encoding="bytes")
        self.where = where

    def find_class(self, module, name):
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise CorruptDataError(
                f"refusing to load {self.where}: it contains code (GLOBAL {module}.{name}), which genuine CIFAR-10 "
                f"batches never do. Delete it and get the data set from {CIFAR10_URL}"
            ) from None

    def persistent_load(self, pid):
        raise CorruptDataError(f"refusing to load {self.where}: it uses persistent ids, which CIFAR-10 never does.")


def _read_cifar_batch(stream, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (images (N,3072) uint8 in R,G,B planes, labels (N,) uint8), strictly validated."""
    try:
        batch = _ArrayOnlyUnpickler(stream, where).load()
    except CorruptDataError:
        raise
    except Exception as e:  # a damaged pickle can fail in many ways; all of them mean the same to the user
        raise CorruptDataError(f"{where} is not a readable CIFAR-10 batch ({type(e).__name__}: {e}).") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise CorruptDataError(f"{where} is not a CIFAR-10 batch (expected a dict with b'data' and b'labels').")
    data, n = batch[b"data"], CIFAR_IMAGES_PER_BATCH
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (n, 3072):
        shape = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CorruptDataError(f"{where}: b'data' is {shape}, expected uint8 ({n:,}, 3072).")
    try:
        labels = np.asarray(batch[b"labels"])
    except (ValueError, TypeError):
        labels = np.asarray(None)
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (n,):
        raise CorruptDataError(f"{where}: b'labels' is not {n:,} integers.")
    if labels.min() < 0 or labels.max() > 9:
        raise CorruptDataError(f"{where}: labels outside 0..9 ({labels.min()}..{labels.max()}).")
    return data, labels.astype(np.uint8)


def _cifar_batch_cap() -> int:
    """Bytes a batch file may have before it is read: its pixels as 8-byte integers (the widest dtype a damaged
    batch could hold, which the validation then names) plus 1 MiB of names and labels. A genuine batch is an
    eighth of that; a larger file is not CIFAR-10 and is refused before unpickling, so memory stays bounded."""
    return 8 * CIFAR_IMAGES_PER_BATCH * 3072 + (1 << 20)


def _check_batch_size(size: int, where: str) -> None:
    if size > _cifar_batch_cap():
        raise CorruptDataError(
            f"{where} is {size:,} bytes, more than a CIFAR-10 batch can be ({_cifar_batch_cap():,}): it is not "
            f"CIFAR-10. Delete it and get the data set from {CIFAR10_URL}"
        )


def _read_cifar_dir(paths: tuple[Path, ...]) -> list:
    batches = []
    for path in paths:
        try:
            _check_batch_size(path.stat().st_size, str(path))
            with open(path, "rb") as f:
                batches.append(_read_cifar_batch(f, str(path)))
        except OSError as e:
            raise DataError(f"cannot read {path}: {e}") from None
    return batches


def _read_cifar_tar(path: Path) -> list:
    wanted = {f"cifar-10-batches-py/{batch}": batch for batch in _CIFAR_BATCHES}
    found = {}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:  # one sequential pass; members are read in memory, never extracted
                batch = wanted.get(member.name.removeprefix("./"))
                if batch and member.isfile():
                    _check_batch_size(member.size, f"{path} (member {member.name})")
                    with archive.extractfile(member) as f:
                        found[batch] = _read_cifar_batch(f, f"{path} (member {member.name})")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise CorruptDataError(
            f"{path} is not a readable .tar.gz archive ({e}): damaged or truncated; delete it and download it again."
        ) from None
    missing = [batch for batch in _CIFAR_BATCHES if batch not in found]
    if missing:
        raise CorruptDataError(
            f"{path} lacks cifar-10-batches-py/{', '.join(missing)}: it is not the complete cifar-10-python.tar.gz."
        )
    return [found[batch] for batch in _CIFAR_BATCHES]


def _cifar_from_batches(batches: list, where: str):
    def nhwc(data):  # rows are 1024 R, 1024 G, 1024 B values
        return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))

    x_train = nhwc(np.concatenate([data for data, _ in batches[:5]]))
    y_train = np.concatenate([labels for _, labels in batches[:5]]).reshape(-1, 1)
    x_test, y_test = nhwc(batches[5][0]), batches[5][1].reshape(-1, 1)
    _check_counts("cifar10", where, x_train, x_test)
    return x_train, y_train, x_test, y_test


def _decode(name: str, source: _Source):
    if source.kind == "idx":
        return tuple(_read_idx(path, name, stem) for path, stem in zip(source.paths, _IDX_STEMS))
    if source.kind in ("mnist_npz", "cifar_npz"):
        return _read_npz(source.paths[0], name)
    if source.kind == "cifar_dir":
        return _cifar_from_batches(_read_cifar_dir(source.paths), str(source.paths[0].parent))
    return _cifar_from_batches(_read_cifar_tar(source.paths[0]), str(source.paths[0]))


_CACHE: dict[tuple, tuple[np.ndarray, ...]] = {}
_CACHE_ENTRIES = 4


def _load_cached(name: str, source: _Source):
    """Decoded arrays, read-only, cached per (data set, files and their size/mtime) for this process."""
    stats = [path.stat() for path in source.paths]
    key = (name, source.kind, tuple((str(p.resolve()), s.st_size, s.st_mtime_ns) for p, s in zip(source.paths, stats)))
    if key not in _CACHE:
        arrays = _decode(name, source)
        for array in arrays:
            array.flags.writeable = False
        if len(_CACHE) >= _CACHE_ENTRIES:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = arrays
    return _CACHE[key]


# --- downloading ----------------------------------------------------------------------------------------------


def download_file(url: str, dest: str | os.PathLike, checksum: tuple[str, str], *,
                  timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch ``url`` to ``dest``, verifying ``checksum`` before the file appears under its name.

    ``checksum`` is ``(algorithm, hexdigest)``: "sha256", "md5", or "md5-gunzipped" (md5 of the decompressed
    contents). A network failure raises DataNotFoundError, a checksum mismatch CorruptDataError; either way
    nothing is left at ``dest`` (the partial file lives under a temporary name and is removed).
    """
    algorithm, expected = checksum
    dest = Path(dest)
    print(f"downloading {url} -> {dest}", file=sys.stderr, flush=True)
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except (OSError, ValueError) as e:  # URLError, timeouts and HTTP errors are OSErrors
            raise DataNotFoundError(f"could not download {url}: {getattr(e, 'reason', e)}") from None
        if algorithm == "md5-gunzipped":
            try:
                actual = hashlib.md5(gzip.decompress(tmp.read_bytes())).hexdigest()
            except (gzip.BadGzipFile, EOFError, zlib.error):
                actual = "not a gzip file"
        else:
            actual = _file_digest(tmp, algorithm)
        if actual != expected:
            raise CorruptDataError(
                f"download of {url} failed verification ({algorithm} {actual}, expected {expected}); nothing was "
                "saved. The mirror or the connection returned something else: try again later."
            )
    return dest


def _download(name: str) -> _Source:
    cache = keras_cache_dir()
    for url, relative, checksum in _DOWNLOADS[name]:
        if not (cache / relative).is_file():
            try:
                download_file(url, cache / relative, checksum)
            except OSError as e:  # the cache folder cannot be created or written
                raise DataNotFoundError(f"cannot save {relative} into {cache}: {e}") from None
    return _find_in(name, cache)


# --- public entry points --------------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


def _locate(name: str, data_dir, download: bool) -> _Source:
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise DataNotFoundError(f"data directory {data_dir} does not exist (or is not a folder).")
    locations = _locations(name, data_dir)
    for _, folder in locations:
        if folder.is_dir() and (source := _find_in(name, folder)):
            return source
    if not download:
        raise _not_found(name, locations, "Downloading was not allowed (download=False).")
    try:
        return _download(name)
    except DataNotFoundError as e:
        raise _not_found(name, locations, f"The download failed: {e}") from None


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True,
                 allow_partial_test: bool = False):
    """``((x_train, y_train), (x_test, y_test))`` exactly as ``keras.datasets.<name>.load_data()`` returns them.

    MNIST / Fashion-MNIST: x (N,28,28) uint8, y (N,) uint8; CIFAR-10: x (N,32,32,3) uint8, y (N,1) uint8.
    The arrays are read-only (they are cached for the process): copy before modifying. A test set shorter than
    the official 10,000 images (e.g. the 1,000-image shared CIFAR-10 npz) is refused unless
    ``allow_partial_test``. Raises a DataError subclass with a complete user-facing message.
    ``LIGHTNING_CNN_OFFLINE=1`` in the environment forbids downloading (CI sets it).
    """
    _check_name(name)
    download = download and os.environ.get("LIGHTNING_CNN_OFFLINE", "") in ("", "0")
    source = _locate(name, data_dir, download)
    x_train, y_train, x_test, y_test = _load_cached(name, source)
    n_test = _expected_sizes(name)[1]
    if len(x_test) < n_test and not allow_partial_test:
        raise DataError(
            f"{source.paths[0]} holds a partial {_TITLE[name]} test set: only the first {len(x_test):,} of "
            f"{n_test:,} test images. Pass allow_partial_test=True (scripts: --allow-partial-test) to use it "
            f"anyway, and report every test number as 'first {len(x_test):,} test images'; for the official test "
            f"set, {_what_to_put(name, str(search_locations(name, data_dir)[0]))}."
        )
    return (x_train, y_train), (x_test, y_test)


def data_folder(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The folder of ``search_locations`` that ``load_dataset`` reads ``name`` from (downloading it first where
    allowed and needed), for tools that hand one folder on, e.g. as ``--data-dir``. Raises what ``load_dataset``
    raises when it is nowhere."""
    _check_name(name)
    download = download and os.environ.get("LIGHTNING_CNN_OFFLINE", "") in ("", "0")
    source = _locate(name, data_dir, download)
    return next(folder for _, folder in _locations(name, data_dir)
                if folder.is_dir() and _find_in(name, folder) == source)


# --- preprocessing --------------------------------------------------------------------------------------------

# Lookup tables from uint8 pixel to float32: exact, fast, and equal to what the Keras code computes
# (x / 255.0 in float64, then float32; Keras's vgg16 preprocess_input in float32).
_RAW = np.arange(256, dtype=np.float32)
_SCALE_255 = (np.arange(256) / 255.0).astype(np.float32)
_VGG16_BGR_MEAN = (103.939, 116.779, 123.68)
_VGG16_LUT = [_RAW - np.float32(mean) for mean in _VGG16_BGR_MEAN]


def preprocess(x: np.ndarray, kind: str) -> np.ndarray:
    """uint8 images, NHWC or NHW (MNIST; gets a channel axis) -> float32 NHWC, the way the documents prepared them.

    kinds: "scale_255" (x / 255), "raw" (0..255 as floats), "vgg16_caffe" (exactly
    ``keras.applications.vgg16.preprocess_input``: RGB -> BGR, then subtract the ImageNet BGR mean).
    """
    if kind not in PREPROCESSING:
        raise ValueError(f"unknown preprocessing {kind!r}; known: {', '.join(PREPROCESSING)}")
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise ValueError(f"preprocess expects uint8 pixels, got {x.dtype}")
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise ValueError(f"preprocess expects images shaped (N,H,W) or (N,H,W,C), got {x.shape}")
    if kind == "scale_255":
        return _SCALE_255[x]
    if kind == "raw":
        return _RAW[x]
    if x.shape[-1] != 3:
        raise ValueError(f"vgg16_caffe needs RGB images (N,H,W,3), got {x.shape}")
    out = np.empty(x.shape, np.float32)
    for channel, lut in enumerate(_VGG16_LUT):
        out[..., channel] = lut[x[..., 2 - channel]]
    return out
