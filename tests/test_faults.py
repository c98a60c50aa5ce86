"""The fault suite: hostile files, bad flags, kills, Ctrl-C, full disks and a shared --out, each as a user meets it.

Every case checks what the user gets (one line on stderr, exit status 2, no traceback; or a run that continues to
the same result) and that nothing is left half-written. Each test records what it tried and what it observed, from
which ``pytest -m faults --write-reliability`` writes docs/reliability.md (see tests/reliability.py).
Runs are tiny (mnist_mlp_t9_1, a few hundred images an epoch) so the suite stays within minutes on 2 cores.
"""

from __future__ import annotations

import gzip
import importlib
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch


pytestmark = pytest.mark.faults
REPO = Path(__file__).resolve().parents[1]
MODEL = "mnist_mlp_t9_1"  # the cheapest documented network: 50,890 weights, batch 32
# Real MNIST as the data layer holds it: 60,000 + 10,000 images of 28x28 bytes and their labels.
MNIST_BYTES = 70_000 * 28 * 28 + 70_000


def cli(capsys, name: str, *argv) -> tuple[int, str]:
    """A command line's ``main`` (``lightning_cnn.cli.<name>``, what scripts/<name>.py runs): (exit status, stderr)."""
    capsys.readouterr()
    status = importlib.import_module(f"lightning_cnn.cli.{name}").main([str(a) for a in argv])
    return status, capsys.readouterr().err


def assert_one_line_error(status: int, err: str, *needles: str) -> str:
    """Exit status 2 and exactly one ``error:`` line naming each needle; no traceback anywhere."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert status == 2 and len(lines) == 1, (status, err)
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def train_args(out: Path, data_dir: Path, *extra) -> list[str]:
    return ["--model", MODEL, "--accelerator", "cpu", "--data-dir", str(data_dir), "--out", str(out),
            "--limit-test-batches", "1", "--seed", "5", *map(str, extra)]


# Python ignores SIGXFSZ from startup (a write past RLIMIT_FSIZE then fails with EFBIG); this restores the
# kernel's default, under which that write kills the process at the byte where it crosses the limit.
_KILLED_BY_FILE_SIZE_LIMIT = ("import runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); "
                              "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def train_process(args: list[str], tmp: Path, prelude: list[str] = (), **popen) -> subprocess.Popen:
    """scripts/train.py in its own process, $TMPDIR a fresh folder so that strays there can be seen."""
    (tmp / "tmpdir").mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp / "tmpdir"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, *prelude, str(REPO / "scripts" / "train.py"), *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path} appeared: {process.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.02)


def partial_files(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob("*")
            if p.is_file() and (p.name.endswith(".part") or p.parent.name == "tmpdir")]


def final_weights(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.")}


def ckpt_epoch(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


def metrics_without_time(path: Path) -> list[list[str]]:
    rows = [line.split(",") for line in path.read_text().splitlines()]
    drop = rows[0].index("seconds")
    return [row[:drop] + row[drop + 1:] for row in rows]


# --- hostile data files: a clear refusal within bounded memory -------------------------------------------------

# Peak RSS from /proc/self/status (VmHWM), not getrusage: a child's ru_maxrss starts at its parent's peak (Linux
# carries it over fork and exec), so under pytest (torch loaded, ~0.5 GB) it would hide the child's own peak.
_PEAK_RSS = """
import re, sys
from lightning_cnn.data import load_dataset
from lightning_cnn.errors import exit_on_user_error
status_kib = lambda key: int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS: the imports' peak is not counted
before = status_kib("VmRSS")
status = exit_on_user_error(lambda argv: load_dataset("mnist", sys.argv[1], download=False) and 0, [])
print((status_kib("VmHWM") - before) * 1024)
sys.exit(status)
"""


def load_in_fresh_process(folder: Path) -> tuple[int, str, int]:
    """(exit status, stderr, bytes the load added to the process's peak RSS) of loading MNIST from ``folder`` in a
    new process: the peak during the load less the RSS before it."""
    result = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(folder)], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    return result.returncode, result.stderr, int(result.stdout.strip().splitlines()[-1])


def mnist_idx_folder(folder: Path, data_dir: Path) -> Path:
    shutil.copytree(data_dir / "mnist", folder)
    for path in folder.iterdir():
        path.chmod(0o644)
    (folder / "train-images-idx3-ubyte.gz").unlink()
    return folder


def write_gzip_bomb(path: Path, inflated: int) -> None:
    """A genuine MNIST train-images header, then ``inflated`` bytes of zeros, streamed through gzip.

    A 1 MiB block of zeros is compressed once and written as many gzip members as needed (gzip files may hold
    several members, which every reader concatenates): 3 GB inflated in a 3 MB file, generated in well under a
    second instead of compressing 3 GB.
    """
    header = struct.pack(">IIII", 0x0803, 60_000, 28, 28)
    block = gzip.compress(bytes(1 << 20), compresslevel=9, mtime=0)
    with open(path, "wb") as f:
        f.write(gzip.compress(header, mtime=0))
        for _ in range(inflated >> 20):
            f.write(block)


@pytest.mark.parametrize("form", ["gzip bomb", "sparse raw file"])
def test_idx_bomb_is_refused_within_bounded_memory(data_dir, tmp_path, reliability, form):
    folder = mnist_idx_folder(tmp_path / "mnist", data_dir)
    inflated = 3 << 30  # 3 GiB, as in issue 18
    if form == "gzip bomb":
        write_gzip_bomb(folder / "train-images-idx3-ubyte.gz", inflated)
    else:  # the uncompressed name, a sparse 3 GiB file: costs no disk, reads as a valid header and zeros
        with open(folder / "train-images-idx3-ubyte", "wb") as f:
            f.write(struct.pack(">IIII", 0x0803, 60_000, 28, 28))
            f.truncate(inflated)
    status, err, peak = load_in_fresh_process(folder)
    line = assert_one_line_error(status, err, "train-images-idx3-ubyte", "too long", "delete it")
    # Bound from issue 18: twice the real data set (MNIST's 55 MB). The reader holds one buffer of the size the
    # header promises (47 MB) and the small label/test files, never the 3 GiB.
    assert peak < 2 * MNIST_BYTES, f"the load raised peak RSS by {peak / 1e6:.0f} MB"
    reliability("data", f"a {form} (3 GiB inflated, valid header) as MNIST train images",
                f"{line} (peak RSS grew by {peak / 1e6:.0f} MB; bound {2 * MNIST_BYTES / 1e6:.0f} MB)")


def test_npz_with_an_absurd_header_shape_is_refused_before_allocating(tmp_path, reliability):
    folder = tmp_path / "data"
    folder.mkdir()
    small = {"y_train": np.zeros(60_000, np.uint8), "x_test": np.zeros((10_000, 28, 28), np.uint8),
             "y_test": np.zeros(10_000, np.uint8)}
    with zipfile.ZipFile(folder / "mnist.npz", "w") as archive:
        # x_train's header declares 10^12 images (7.8e14 bytes) in front of a few bytes of data.
        header = {"descr": "|u1", "fortran_order": False, "shape": (10**12, 28, 28)}
        with archive.open("x_train.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(bytes(64))
        for key, array in small.items():
            with archive.open(f"{key}.npy", "w") as f:
                np.lib.format.write_array(f, array)
    status, err, peak = load_in_fresh_process(folder)
    line = assert_one_line_error(status, err, "mnist.npz", "x_train", "(1000000000000, 28, 28)", "delete it")
    assert peak < 2 * MNIST_BYTES, f"the load raised peak RSS by {peak / 1e6:.0f} MB"
    reliability("data", "mnist.npz whose x_train header declares 10^12 images",
                f"{line} (peak RSS grew by {peak / 1e6:.0f} MB)")


# --- bad flags: refused before any work, naming the flag -------------------------------------------------------

BAD_VALUES = [
    (["--epochs", "0"], "--epochs 0"),
    (["--epochs", "-1"], "--epochs -1"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--batch-size", "60001"], "--batch-size 60001 is larger than the 60,000 images"),
    (["--devices", str(max(99, (os.cpu_count() or 1) + 1))], "--devices"),
    (["--train-images", "0"], "--train-images '0'"),
    (["--train-images", "60001"], "--train-images 60001"),
    (["--steps-per-execution", "0"], "--steps-per-execution 0"),
    (["--precision", "16-mixed"], "--precision 16-mixed needs a CUDA GPU"),
]


@pytest.mark.parametrize("argv, needle", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_flag_values_are_one_line_and_exit_2(capsys, data_dir, tmp_path, reliability, argv, needle):
    if argv[0] == "--precision" and torch.cuda.is_available():
        argv = [*argv, "--accelerator", "cpu"]  # the refusal is about a CPU run
    status, err = cli(capsys, "train", "--model", "mnist_cnn_small", "--data-dir", data_dir,
                      "--out", tmp_path / "out", *argv)
    line = assert_one_line_error(status, err, needle)
    assert not (tmp_path / "out" / "metrics.csv").exists()  # refused before training
    reliability("`train.py` flags", f"`{' '.join(argv)}`", line)


def test_nan_loss_stops_training_naming_epoch_and_step(data_dir, reliability):
    """A diverged network (its output layer's weights scaled by 1e38, so float32 logits overflow to inf) on real
    MNIST: the first step's loss is not finite, and TerminateOnNaN stops the run there, as Keras's callback does."""
    import lightning as L

    from lightning_cnn.callbacks import TerminateOnNaN
    from lightning_cnn.data import load_dataset, preprocess
    from lightning_cnn.datamodule import InMemoryLoader
    from lightning_cnn.errors import DivergedError
    from lightning_cnn.module import KerasRecipeModule

    (x, y), _ = load_dataset("mnist", data_dir)
    x = torch.from_numpy(preprocess(x[:256], "scale_255")).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(y[:256].astype("int64"))
    module = KerasRecipeModule(MODEL, seed=0)
    with torch.no_grad():
        module.model.dense_1.weight.mul_(1e38)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[TerminateOnNaN()])
    with pytest.raises(DivergedError, match=r"became (NaN|infinite) in epoch 1, step 1 ") as error:
        trainer.fit(module, InMemoryLoader(x, y, 32, shuffle=True))
    assert trainer.global_step == 1  # stopped after the first step, not at the end of the epoch
    reliability("training", "the loss becomes NaN/inf (a diverged network)", f"error: {error.value}")


# --- every entry point: an anticipated failure is one line and exit status 2 ----------------------------------------

IN_PROCESS = {  # command line -> arguments that point at something missing ({missing} is a path that is not there)
    "train": ["--data-dir", "{missing}", "--epochs", "1", "--out", "{out}"],
    "predict": ["--checkpoint", "{missing}/best.ckpt", "--test-indices", "0"],
    "crossval": ["--model", "mnist_cnn_small", "--framework", "lightning", "--data-dir", "{missing}", "--out",
                 "{out}"],
    "reproduce": ["--frameworks", "lightning", "--models", "mnist_cnn_small", "--data-dir", "{missing}", "--out",
                  "{out}"],
    "bench": ["--models", "mnist_cnn_small", "--contenders", "lightning", "--data-dir", "{missing}", "--out",
              "{out}/bench.md"],
    "convert_vgg16_weights": ["--h5", "{missing}/vgg16.h5", "--out", "{out}/vgg16.safetensors"],
}


@pytest.mark.parametrize("name", list(IN_PROCESS))
def test_every_command_line_refuses_a_missing_input_in_one_line(capsys, tmp_path, reliability, name):
    argv = [a.format(missing=tmp_path / "missing", out=tmp_path / "out") for a in IN_PROCESS[name]]
    status, err = cli(capsys, name, *argv)
    line = assert_one_line_error(status, err, str(tmp_path / "missing"))
    reliability("a path that does not exist", f"`{name}`", line)


@pytest.mark.keras
@pytest.mark.parametrize("command", ["train_keras", "keras_ref.parity"])
def test_keras_command_lines_refuse_bad_input_in_one_line(tmp_path, reliability, command):
    """In their own processes: these load TensorFlow."""
    if command == "train_keras":
        argv = [str(REPO / "scripts" / "train_keras.py"), "--model", "mnist_cnn_small", "--data-dir",
                str(tmp_path / "missing"), "--epochs", "1"]
        needle, tried = str(tmp_path / "missing"), "`train_keras`"
    else:
        damaged = tmp_path / "model.keras"
        damaged.write_bytes(b"PK\x03\x04 not really a Keras archive" * 10)
        argv = ["-m", "keras_ref.parity", str(damaged)]
        needle, tried = f"{damaged} is not a .keras archive", "`python -m keras_ref.parity` with a damaged .keras file"
    result = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=300)
    line = assert_one_line_error(result.returncode, result.stderr, needle)
    reliability("a path that does not exist" if command == "train_keras" else "entry points", tried, line)


# --- checkpoints: predict.py and --resume -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory) -> Path:
    """A real best.ckpt of a one-epoch run."""
    from lightning_cnn.training import RunConfig, fit_and_test

    out = tmp_path_factory.mktemp("trained")
    fit_and_test(RunConfig(model=MODEL, accelerator="cpu", data_dir=str(data_dir), out=str(out), epochs=1,
                           train_images="320", limit_test_batches=1, progress_bar=False))
    return out / "checkpoints" / "best.ckpt"


def _altered(trained: Path, tmp_path: Path, change) -> Path:
    checkpoint = torch.load(trained, map_location="cpu", weights_only=True)
    change(checkpoint)
    path = tmp_path / "altered.ckpt"
    torch.save(checkpoint, path)
    return path


def _first_weight(checkpoint) -> str:
    return next(k for k in checkpoint["state_dict"] if k.startswith("model.") and k.endswith("weight"))


CHECKPOINT_FAULTS = {
    "another model id": (lambda c: c["hyper_parameters"].update(model_id="mnist_mlp_t9_3"),
                         ["'mnist_mlp_t9_3'", "in the checkpoint but", "'mnist_mlp_t9_1'"]),
    "an unknown model id": (lambda c: c["hyper_parameters"].update(model_id="mnist_cnn_huge"),
                            ["'mnist_cnn_huge'", "valid ids"]),
    "missing keys": (lambda c: c["state_dict"].pop(_first_weight(c)), ["lacks", "weight"]),
    "a wrong shape": (lambda c: c["state_dict"].update({_first_weight(c): torch.zeros(3, 3)}), ["is [3, 3] in"]),
    "NaN weights": (lambda c: c["state_dict"][_first_weight(c)].view(-1).__setitem__(0, float("nan")),
                    ["non-finite weights", "diverged"]),
}


@pytest.mark.parametrize("fault", list(CHECKPOINT_FAULTS))
def test_predict_refuses_a_checkpoint_with(capsys, trained, tmp_path, reliability, fault):
    change, needles = CHECKPOINT_FAULTS[fault]
    path = _altered(trained, tmp_path, change)
    status, err = cli(capsys, "predict", "--checkpoint", path, "--test-indices", "0")
    line = assert_one_line_error(status, err, str(path), *needles)
    reliability("checkpoints given to `predict`", fault, line)


def test_truncated_checkpoint_is_refused(capsys, trained, tmp_path, reliability):
    path = tmp_path / "half.ckpt"
    path.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])
    status, err = cli(capsys, "predict", "--checkpoint", path, "--test-indices", "0")
    line = assert_one_line_error(status, err, "cannot read checkpoint", str(path))
    reliability("checkpoints given to `predict`", "half-written", line)


def test_resume_from_a_checkpoint_of_another_model_is_refused(capsys, trained, data_dir, tmp_path, reliability):
    status, err = cli(capsys, "train", *train_args(tmp_path / "out", data_dir, "--resume", trained)[2:],
                      "--model", "mnist_cnn_small")
    line = assert_one_line_error(status, err, "'mnist_mlp_t9_1' model, not 'mnist_cnn_small'")
    reliability("checkpoints", "`train.py --resume` with another model's checkpoint", line)


# --- the output folder: one writer, writable, never half-written ------------------------------------------------

_HOLD_LOCK = """
import sys, time
from lightning_cnn.run_lock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_two_runs_with_the_same_out(capsys, data_dir, tmp_path, reliability):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        status, err = cli(capsys, "train", *train_args(out, data_dir, "--epochs", 1))
        line = assert_one_line_error(status, err, f"output folder {out} is in use by another run",
                                     f"pid {holder.pid}")
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the refused run wrote nothing
    finally:
        holder.kill()  # kill -9: the kernel drops the lock with the process
        holder.wait()
    from lightning_cnn.run_lock import run_lock

    with run_lock(out):  # a lock left by a killed run never blocks the next one
        pass
    reliability("output", "two concurrent runs on one `--out`", line)


def _read_only(path: Path) -> list[str]:
    """A command prefix under which ``path`` is read-only. As root (who writes through any mode bits) that
    takes a read-only bind mount in a private mount namespace."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        return []
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("running as root without user namespaces: no way to make a folder read-only for root here")
    return ["unshare", "-rm", "sh", "-c", f'mount --bind -o ro "{path}" "{path}" && exec "$@"', "sh"]


def test_read_only_out_is_refused_before_training(data_dir, tmp_path, reliability):
    out = tmp_path / "readonly"
    prefix = _read_only(out)
    result = subprocess.run([*prefix, sys.executable, str(REPO / "scripts" / "train.py"),
                             *train_args(out, data_dir, "--epochs", 1)], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    line = assert_one_line_error(result.returncode, result.stderr, f"output folder {out} is not writable")
    assert "Epoch 1/" not in result.stdout  # refused before any training
    reliability("output", "a read-only `--out`", line)


def test_disk_full_is_one_line_and_leaves_nothing_half_written(data_dir, tmp_path, reliability):
    """RLIMIT_FSIZE caps every file the run writes at 100 kB (the checkpoint is ~200 kB, the CSV and curves
    less), with SIGXFSZ ignored so that writes fail with EFBIG, as they fail with ENOSPC on a full disk."""
    out = tmp_path / "out"

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    process = train_process(train_args(out, data_dir, "--epochs", 2, "--train-images", 320), tmp_path,
                            preexec_fn=limit_file_size)
    status, err = finish(process)
    line = assert_one_line_error(status, err, "cannot write checkpoint", "file size limit", "free some space")
    assert partial_files(out, tmp_path / "tmpdir") == []
    assert not list(out.glob("checkpoints/*.ckpt"))  # no checkpoint at all rather than a truncated one
    reliability("output", "disk full while saving a checkpoint (RLIMIT_FSIZE, EFBIG)", line)


def test_kill_during_a_checkpoint_save_leaves_no_half_written_file(data_dir, tmp_path, reliability):
    """After the first checkpoint, the running process's file size limit drops below a checkpoint's size
    (prlimit), so the kernel kills the next save (SIGXFSZ) halfway through writing it: a kill during the save.
    Lightning's own writer puts the bytes in $TMPDIR first and moves them (a copy across file systems), so the kill
    left a checkpoint-sized stray there; here they go to a temporary name beside the checkpoint, which the next
    run in that folder removes."""
    out = tmp_path / "out"
    process = train_process(train_args(out, data_dir, "--epochs", 3, "--train-images", 640), tmp_path,
                            prelude=["-c", _KILLED_BY_FILE_SIZE_LIMIT])
    last = out / "checkpoints" / "last.ckpt"
    wait_for(last, process)
    size = last.stat().st_size
    resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (size // 2, size // 2))
    status, _ = finish(process)
    assert status == -signal.SIGXFSZ
    assert ckpt_epoch(last) == 0 and final_weights(last)  # still the whole checkpoint of epoch 1
    assert partial_files(tmp_path / "tmpdir") == []
    leftovers = partial_files(out)
    from lightning_cnn.run_lock import run_lock

    with run_lock(out):  # what the next run in this folder does first
        assert partial_files(out) == []
    reliability("output", "the process is killed while writing a checkpoint",
                f"last.ckpt stays the complete checkpoint of epoch 1; the partial write ({len(leftovers)} file "
                "under a temporary name beside it) is removed by the next run in that folder")


# --- kills and Ctrl-C: resume to the same result --------------------------------------------------------------------


def test_kill_9_mid_epoch_then_resume_gives_the_same_weights(data_dir, tmp_path, reliability):
    common = ["--epochs", 3, "--train-images", 1280]
    # The uninterrupted run alongside the one to be killed: each spends seconds importing on one core.
    straight = train_process(train_args(tmp_path / "straight", data_dir, *common), tmp_path)
    out = tmp_path / "killed"
    killed = train_process(train_args(out, data_dir, *common), tmp_path)
    last = out / "checkpoints" / "last.ckpt"
    wait_for(last, killed)
    time.sleep(0.3)  # into epoch 2
    killed.send_signal(signal.SIGKILL)
    assert finish(killed)[0] == -signal.SIGKILL
    status, err = finish(straight)
    assert status == 0, err[-3000:]
    assert ckpt_epoch(last) == 0, "the kill came after epoch 2 ended; the run was not killed mid-epoch"
    resumed = train_process(train_args(out, data_dir, *common, "--resume", last), tmp_path)
    status, err = finish(resumed)
    assert status == 0, err[-3000:]
    a, b = final_weights(tmp_path / "straight/checkpoints/last.ckpt"), final_weights(last)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-exact on CPU
    assert metrics_without_time(out / "metrics.csv") == metrics_without_time(tmp_path / "straight/metrics.csv")
    assert partial_files(out, tmp_path / "tmpdir") == []
    reliability("crashes", "`kill -9` in epoch 2 of 3, then `train.py --resume OUT/checkpoints/last.ckpt`",
                "the resumed run ends with bit-identical weights and the same per-epoch history as an "
                "uninterrupted run with the same seed")


_INTERRUPTED_RUN = """
import json, os, signal, sys, torch
from lightning_cnn.errors import exit_on_user_error
from lightning_cnn.training import RunConfig, fit_and_test
from lightning_cnn.speed.cpu_tuning import retaining_freed_memory
import lightning  # what importing lightning sets is not the run's doing
config = json.loads(sys.argv[1])
state = lambda: (dict(os.environ), signal.getsignal(signal.SIGINT), torch.get_num_threads(), retaining_freed_memory())
before = state()
status = exit_on_user_error(lambda argv: fit_and_test(RunConfig(**config)) and 0, [])
after = state()
print("\\nREPORT", json.dumps({"status": status, "environment_changed": sorted(
    k for k in set(before[0]) | set(after[0]) if before[0].get(k) != after[0].get(k)),
    "sigint_handler_restored": before[1] is after[1], "threads_restored": before[2] == after[2],
    "malloc_settings_restored": before[3] == after[3] is False}))
"""


def test_ctrl_c_during_fit_leaves_a_usable_last_ckpt_and_restores_the_process(data_dir, tmp_path, reliability):
    out = tmp_path / "out"
    config = dict(model=MODEL, accelerator="cpu", data_dir=str(data_dir), out=str(out), epochs=3,
                  train_images="1280", limit_test_batches=1, seed=5, progress_bar=False)
    process = subprocess.Popen([sys.executable, "-c", _INTERRUPTED_RUN, json.dumps(config)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = out / "checkpoints" / "last.ckpt"
    wait_for(last, process)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    stdout, err = process.communicate(timeout=300)
    assert "Traceback" not in err, err
    report = json.loads(stdout.split("\nREPORT ", 1)[1].splitlines()[0])  # after the progress bar's last line
    assert report == {"status": 130, "environment_changed": [], "sigint_handler_restored": True,
                      "threads_restored": True, "malloc_settings_restored": True}, report
    line = next(line for line in err.splitlines() if line.startswith("interrupted: "))
    assert f"--resume {last}" in line and "after epoch 1" in line
    from lightning_cnn.predict import load_checkpoint_model

    load_checkpoint_model(last, MODEL)  # whole, the right model, finite weights
    assert ckpt_epoch(last) == 0
    reliability("crashes", "Ctrl-C (SIGINT) during epoch 2",
                f"{line.replace(str(out), 'OUT')}; exit status 130; environment variables, the SIGINT handler, "
                "torch's thread count and glibc's malloc settings are as before the run")
