"""TensorFlow and PyTorch in one process, in either import order (lightning_cnn/coexist.py).

The hazard: once TensorFlow is loaded, importing triton (which torch's first optimizer step does, through
torch._dynamo) kills the process with SIGSEGV. keras_ref.load_tensorflow() applies the guard before TensorFlow
loads, lightning_cnn's make_optimizer before torch's first step would load triton. Each case runs in a
fresh interpreter, since the order of imports is what is tested; a SIGSEGV shows as returncode -11.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.keras

ROOT = Path(__file__).resolve().parents[1]

TORCH_STEP = """
import torch
from lightning_cnn import build_model, get_spec
from lightning_cnn.recipes.optim import make_optimizer
model = build_model("mnist_cnn_small", seed=0)
optimizer = make_optimizer(model.parameters(), get_spec("mnist_cnn_small").recipe)
loss = torch.nn.functional.cross_entropy(model(torch.rand(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
loss.backward()
optimizer.step()
"""

KERAS_FIT = """
import numpy as np
import keras
model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                          keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
model.fit(np.random.rand(8, 28, 28, 1).astype("float32"), np.arange(8) % 10, batch_size=8, epochs=1, verbose=0)
"""


def run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def describe(result) -> str:
    code = result.returncode
    name = f" ({signal.Signals(-code).name})" if code < 0 and -code in signal.Signals._value2member_map_ else ""
    return f"returncode {code}{name}\nstdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"


def test_tensorflow_first_then_lightning_cnn():
    result = run("import tensorflow as tf\nimport lightning_cnn\n" + TORCH_STEP + KERAS_FIT + "print('ok')\n")
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), describe(result)


def test_lightning_cnn_first_then_tensorflow():
    result = run("import lightning_cnn\nimport torch\nimport tensorflow as tf\n" + TORCH_STEP + KERAS_FIT
                 + "print('ok')\n")
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), describe(result)


def test_keras_ref_then_training_on_both_sides():
    """keras_ref loads TensorFlow after the guard, as the parity suite itself does: triton stays usable."""
    result = run("import keras_ref\nkeras_ref.load_tensorflow()\nimport tensorflow as tf\n" + KERAS_FIT + TORCH_STEP
                 + "import sys\nassert sys.modules['triton'] is not None\nprint('ok')\n")
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), describe(result)
    assert "triton is disabled" not in result.stderr


def test_tensorflow_loaded_first_is_survived_with_a_warning():
    """TensorFlow imported directly, before anything of this project: keras_ref's loader and torch training still
    work (triton disabled), and the loader says why triton is gone."""
    result = run("import tensorflow as tf\nimport keras_ref\nkeras_ref.load_tensorflow()\n" + KERAS_FIT + TORCH_STEP
                 + "print('ok')\n")
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), describe(result)
    assert "triton is disabled" in result.stderr


def test_control_without_the_guard_crashes():
    """The hazard is real: bare `import tensorflow; import torch` and a torch Adam step, no lightning_cnn."""
    result = run("""
        import tensorflow
        import torch
        p = torch.nn.Parameter(torch.zeros(3))
        optimizer = torch.optim.Adam([p], lr=1e-3)
        p.sum().backward()
        optimizer.step()
        print("survived")
    """)
    if result.returncode == 0:
        pytest.skip("environmental control: on this machine bare `import tensorflow; import torch` + a torch Adam "
                    "step did not crash (triton absent or compatible here), so the guard's effect cannot be shown")
    assert result.returncode == -signal.SIGSEGV, describe(result)
