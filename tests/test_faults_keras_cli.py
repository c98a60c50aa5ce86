"""The fault suite for the Keras command lines (``python -m keras_ref.convert``, ``python -m keras_ref.parity``):
bad flags and bad ``--inputs`` are one ``error:`` line naming the flag, refused before the model is converted, and
conversions racing into one ``--out`` each land whole.

TensorFlow never enters the pytest process (it may hold triton): one child process builds a tiny Keras model, saves
it as .keras and runs every case through the command lines' own ``main`` (what ``python -m`` runs), counting the
conversions each case started; the tests then check what each case printed. The race runs in three more processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.test_faults import assert_one_line_error

pytestmark = [pytest.mark.faults, pytest.mark.keras]
REPO = Path(__file__).resolve().parents[1]

# The model every case converts: (6, 6, 1) images -> 3 classes, 57 weights.
_BUILD = """
from keras_ref import load_tensorflow
keras = load_tensorflow()
from keras import layers

def build(name, width, classes=3):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1), name="image")
    x = layers.Flatten(name="flatten")(layers.Conv2D(width, 3, activation="relu", name="stem")(inputs))
    return keras.Model(inputs, layers.Dense(classes, activation="softmax", name="probs")(x), name=name)
"""

# The cases: argv for keras_ref.convert or keras_ref.parity, {MODEL}, {DIR} replaced; each runs main in this process.
_RUN_CASES = _BUILD + """
import contextlib, io, json, sys
from pathlib import Path
import keras_ref.convert as convert_module
from keras_ref import parity
from lightning_cnn.errors import exit_on_user_error

folder, cases = Path(sys.argv[1]), json.loads(sys.argv[2])
model_path = folder / "model.keras"
build("tiny", 2).save(model_path)
started = []
for name in ("_twin_of", "convert"):  # every conversion (convert's and parity's) goes through one of these
    def counted(*args, _real=getattr(convert_module, name), **kwargs):
        started.append(1)
        return _real(*args, **kwargs)
    setattr(convert_module, name, counted)
results = {}
for case, (command, argv) in cases.items():
    argv = [a.replace("{MODEL}", str(model_path)).replace("{DIR}", str(folder)) for a in argv]
    main = convert_module.main if command == "convert" else parity.main
    err = io.StringIO()
    del started[:]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = exit_on_user_error(main, argv) if command == "convert" else main(argv)
        except SystemExit as error:  # argparse's own refusals
            status = error.code
    results[case] = dict(status=status, err=err.getvalue(), conversions=len(started))
print(json.dumps(results))
"""


def _npz(**arrays):
    return lambda path: np.savez(path, **arrays)


def _declared_npz(shape: tuple):
    """An .npz whose array header declares ``shape`` (float32) in front of 64 bytes of data."""
    def write(path: Path) -> None:
        with zipfile.ZipFile(path, "w") as archive, archive.open("x.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
            f.write(bytes(64))
    return write


def _inflating_npz(samples: int):
    """A valid array of ``samples`` (6, 6, 1) float32 zeros, deflated: a few MB of file that inflate past 1 GiB."""
    def write(path: Path) -> None:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive, \
                archive.open("x.npy", "w", force_zip64=True) as f:
            header = {"descr": "<f4", "fortran_order": False, "shape": (samples, 6, 6, 1)}
            np.lib.format.write_array_header_1_0(f, header)
            chunk, left = bytes(1 << 24), samples * 36 * 4
            while left:
                f.write(chunk[:min(left, len(chunk))])
                left -= min(left, len(chunk))
    return write


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, 6, 6, 1), dtype=np.float32)


def _with_nan() -> np.ndarray:
    x = _images(4)
    x[2, 3, 3, 0] = np.nan
    return x


X = _images(4)
INPUT_FAULTS = {  # what --inputs holds -> (how the file is written, what the one line must name)
    "an array of rank 3 (N, H, W) for (N, 6, 6, 1)": (_npz(x=X[..., 0]), ["(4, 6, 6)", "(N, 6, 6, 1)"]),
    "an array of (N, 6, 5, 1) for (N, 6, 6, 1)": (_npz(x=X[:, :, :5]), ["(4, 6, 5, 1)", "(N, 6, 6, 1)"]),
    "an object (pickled) array": (_npz(x=np.array([{"a": 1}] * 4, dtype=object)), ["Python objects", "only pickle can load"]),
    "an array of strings": (_npz(x=np.full((4, 6, 6, 1), "a")), ["<U1", "not numbers"]),
    "zero samples": (_npz(x=X[:0]), ["holds no samples"]),
    "1,025 samples (bound 1,024)": (_npz(x=_images(1025)), ["1,025 samples", "bound 1024", "save the first 1024"]),
    "a header declaring 10^12 samples over 64 bytes": (_declared_npz((10**12, 6, 6, 1)),
                                                       ["declares shape (1000000000000, 6, 6, 1)", "damaged"]),
    "an array inflating to 1.08 GB (bound 1 GiB)": (_inflating_npz(7_500_000),
                                                    ["1,080,000,000 bytes", "bound 1,073,741,824"]),
    "a NaN in the samples": (_npz(x=_with_nan()), ["NaN or infinite"]),
    "a text file": (lambda path: path.write_text("hello"), ["not a readable .npz"]),
    "labels 0-3 for 3 classes, with --train-steps 1": (_npz(x=X, y=np.arange(4)), ["'y' holds class 3",
                                                                                    "labels 0 to 2"]),
    "float labels, with --train-steps 1": (_npz(x=X, y=np.zeros(4)), ["'y' is float64", "integer class index"]),
}
FLAG_FAULTS = {  # (command, flags) -> what the one line must name
    ("convert", "-n 0"): ["-n 0", "1 to 1024"],
    ("convert", "-n -3"): ["-n -3", "1 to 1024"],
    ("convert", "-n 5000"): ["-n 5000", "1 to 1024"],
    ("convert", "--atol -1"): ["--atol -1", "finite tolerance of 0 or more"],
    ("convert", "--atol nan"): ["--atol nan", "finite tolerance"],
    ("convert", "--atol inf"): ["--atol inf", "finite tolerance"],
    ("convert", "--seed -1"): ["--seed -1", "0 or more"],
    ("convert", "--out a_file"): ["a_file exists and is not a converted model folder"],
    ("parity", "--batch 0"): ["--batch 0", "1 to 1024"],
    ("parity", "--batch 2000"): ["--batch 2000", "1 to 1024"],
    ("parity", "--atol nan"): ["--atol nan", "finite tolerance"],
    ("parity", "--train-atol=-1e-4"): ["--train-atol -0.0001", "finite tolerance"],
    ("parity", "--train-steps -1"): ["--train-steps -1", "0 to 100"],
    ("parity", "--train-steps 101"): ["--train-steps 101", "0 to 100", "rounding"],
}


def _cases() -> dict:
    """case -> (command, argv with {MODEL} and {DIR}, what the one line must name)."""
    cases = {}
    for i, (what, (_, needles)) in enumerate(INPUT_FAULTS.items()):
        labelled = "labels" in what
        for command in ("parity",) if labelled else ("convert", "parity"):
            if command == "parity" and "1,025" in what:
                continue  # parity compares the first --batch samples of a larger file
            argv = ["{MODEL}", *(["--out", "{DIR}/out"] if command == "convert" else []), "--inputs",
                    f"{{DIR}}/inputs{i}.npz", *(["--train-steps", "1"] if labelled else [])]
            cases[f"{command} --inputs with {what}"] = (command, argv, ["--inputs", *needles])
    for (command, flags), needles in FLAG_FAULTS.items():
        argv = ["{MODEL}", *(["--out", "{DIR}/out"] if command == "convert" and "--out" not in flags else []),
                *flags.replace("a_file", "{DIR}/a_file").split()]
        cases[f"{command} {flags}"] = (command, argv, needles)
    return cases


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case's (exit status, stderr, conversions started), from one child process (one TensorFlow start)."""
    folder = tmp_path_factory.mktemp("keras_cli")
    for i, (write, _) in enumerate(INPUT_FAULTS.values()):
        write(folder / f"inputs{i}.npz")
    (folder / "a_file").write_text("not a folder")
    plan = {case: (command, argv) for case, (command, argv, _) in _cases().items()}
    result = subprocess.run([sys.executable, "-c", _RUN_CASES, str(folder), json.dumps(plan)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("case", list(_cases()))
def test_bad_flag_or_inputs_is_one_line_before_any_conversion(outcomes, reliability, case):
    folder, results = outcomes
    command, _, needles = _cases()[case]
    got = results[case]
    line = assert_one_line_error(got["status"], got["err"], *needles)
    assert got["conversions"] == 0, f"{case}: refused only after converting"
    assert not (folder / "out").exists(), f"{case}: --out was written"
    reliability(f"`python -m keras_ref.{command}`", case.split(" ", 1)[1], line)


# --- conversions racing into one --out ------------------------------------------------------------------------------

# One writer: its own model (its name and width say whose folder it is), then ROUNDS
# conversions into the shared --out through the command line's main. Each round's writing of the folder starts only
# once every writer has converted (files beside --out as a barrier), so the writes really overlap.
_RACE_WRITER = _BUILD + """
import sys, time
from pathlib import Path
import keras_ref.convert as convert_module
from lightning_cnn.errors import exit_on_user_error

folder, writer, writers, rounds = Path(sys.argv[1]), *map(int, sys.argv[2:5])
path = folder / f"writer{writer}.keras"
build(f"writer{writer}", 2 + writer).save(path)
write_folder, barrier = convert_module._write_folder, folder / "barrier"

def write_together(*args):
    arrived = barrier / f"{len(list(barrier.glob(f'*.{writer}')))}.{writer}"
    arrived.touch()
    while len(list(barrier.glob(f"{arrived.name.split('.')[0]}.*"))) < writers:
        time.sleep(0.0005)
    write_folder(*args)

convert_module._write_folder = write_together
for _ in range(rounds):
    status = exit_on_user_error(convert_module.main, [str(path), "--out", str(folder / "out"), "--seed",
                                                      str(writer)])
    assert status == 0, status
"""
WRITERS, ROUNDS = 3, 4
FILES = ["compile.json", "graph.json", "model.py", "parity.json", "weights.safetensors"]


def _whose(out: Path) -> int:
    """The writer whose complete, consistent folder ``out`` is (graph, weights, source and report agree). Read
    through one handle on the folder, so a swap in between cannot mix two writers' files into the reading."""
    from safetensors.torch import load

    folder = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        def read(name: str) -> bytes:
            handle = os.open(name, os.O_RDONLY, dir_fd=folder)
            with os.fdopen(handle, "rb") as f:
                return f.read()
        graph, weights, source, parity = (read(name) for name in ("graph.json", "weights.safetensors", "model.py",
                                                                  "parity.json"))
    finally:
        os.close(folder)
    writer = int(json.loads(graph)["name"].removeprefix("writer"))
    assert load(weights)["stem.weight"].shape[0] == 2 + writer
    assert f"class Writer{writer}(" in source.decode()
    assert json.loads(parity)["inputs"] == f"8 random inputs (seed {writer})"
    return writer


def test_conversions_racing_into_one_out_each_land_whole(tmp_path, reliability):
    out = tmp_path / "out"
    (tmp_path / "barrier").mkdir()
    writers = [subprocess.Popen([sys.executable, "-c", _RACE_WRITER, str(tmp_path), str(i), str(WRITERS),
                                 str(ROUNDS)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(WRITERS)]
    try:
        seen, looks = set(), 0
        while any(w.poll() is None for w in writers):  # a reader all along: whenever out exists, it is whole
            if out.exists():
                try:
                    seen.add(_whose(out))
                    looks += 1
                except FileNotFoundError:  # swapped between two reads: the next look sees the newer folder
                    continue
            time.sleep(0.01)
        errors = [w.communicate(timeout=60)[1] for w in writers]
    finally:
        for writer in writers:
            writer.kill()
    for writer, err in zip(writers, errors):
        assert writer.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert sorted(p.name for p in out.iterdir()) == FILES
    last = _whose(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    reliability("`python -m keras_ref.convert`", f"{WRITERS} processes converting {ROUNDS} times each into one "
                "`--out` at the same time", f"each run exits 0, no traceback; the folder is always one run's whole "
                f"output (a reader checked it {looks} times, saw writers {sorted(seen)}); the last writer "
                f"(writer{last}) stays")
