"""Importing the packages changes nothing in the process: environment, loaded frameworks, matplotlib's backend,
torch's thread count. Each import runs in a fresh interpreter, since what is tested is the import itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Prints the process state before and after STATEMENT. torch and matplotlib are loaded first so that their state
# can be read; the backend is read raw from rcParams, since matplotlib.get_backend() would itself choose one.
PROBE = """
import json, os, sys
import matplotlib, torch

def state():
    return {{"environ": dict(os.environ), "threads": torch.get_num_threads(),
             "backend": str(dict.__getitem__(matplotlib.rcParams, "backend")),
             "frameworks": sorted(name for name in sys.modules
                                  if name.split(".")[0] in ("triton", "tensorflow", "keras", "lightning"))}}

before = state()
{statement}
print(json.dumps([before, state()]))
"""


def state_around(statement: str) -> tuple[dict, dict]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(statement=statement)], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = json.loads(done.stdout.splitlines()[-1])
    return before, after


@pytest.mark.parametrize("statement", [
    "import lightning_cnn",
    "import keras_ref",
    # The torch-only public API: models, layers and the speed seam load no Lightning and no TensorFlow.
    "from lightning_cnn import Speed, build_model, count_params, get_spec\nimport lightning_cnn.nets.layers",
])
def test_importing_changes_no_process_state(statement):
    before, after = state_around(statement)
    assert after["environ"] == before["environ"]
    assert after["threads"] == before["threads"]
    assert after["backend"] == before["backend"]
    assert after["frameworks"] == before["frameworks"] == []  # no triton import, no triton disabled, no TensorFlow


@pytest.mark.keras
def test_keras_ref_loads_tensorflow_only_when_asked_and_keeps_the_users_settings():
    """``load_tensorflow`` fills in its two defaults where unset, never over a value the user chose."""
    _, after = state_around("import os\nos.environ['TF_CPP_MIN_LOG_LEVEL'] = '1'\nimport keras_ref\n"
                            "keras_ref.load_tensorflow()")
    assert after["environ"]["TF_CPP_MIN_LOG_LEVEL"] == "1" and after["environ"]["KERAS_BACKEND"] == "tensorflow"
    assert "tensorflow" in after["frameworks"]


def test_every_declared_public_name_resolves():
    import lightning_cnn

    assert [name for name in lightning_cnn.__all__ if not hasattr(lightning_cnn, name)] == []
    assert {"KerasRecipeModule", "ArrayDataModule", "load_dataset", "build_model", "Speed", "UserError"} \
        <= set(lightning_cnn.__all__)
