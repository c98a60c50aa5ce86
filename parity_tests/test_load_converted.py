"""The saved twin: ``python -m keras_ref.convert`` writes a folder, ``lightning_cnn.load_converted`` reads it back
with TensorFlow and Keras made unimportable, and bad folders give a clear ConvertedModelError (a UserError).

(Here rather than in tests/ because Keras is needed to create the folder.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

import lightning_cnn
import keras_ref.convert as convert_module
from keras_ref.convert import main, save_converted
from keras_ref.tolerance import RULE
from lightning_cnn.converted import ConvertedModelError
from lightning_cnn.errors import UserError, exit_on_user_error

from .test_convert_layers import images, randomize

pytestmark = pytest.mark.keras

ROOT = Path(__file__).resolve().parents[1]

# The child process: tensorflow and keras cannot be imported at all (a meta-path finder raises ImportError).
NO_TENSORFLOW = textwrap.dedent("""
    import sys

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Refuse())
    import numpy as np, torch
    import lightning_cnn
    folder, x_path, out_path = sys.argv[1:4]
    twin = lightning_cnn.load_converted(folder)
    with np.load(x_path) as npz:
        inputs = [torch.from_numpy(npz[k]) for k in sorted(npz.files)]
    with torch.no_grad():
        out = twin(*inputs)
    np.save(out_path, out.numpy())
    assert not any(m.split(".")[0] in ("tensorflow", "keras") for m in sys.modules), "TF/Keras got imported"
    print(type(twin).__name__, sum(p.numel() for p in twin.parameters()))
""")


def small_model():
    inputs = keras.Input((9, 9, 3), name="image")
    x = layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="stem")(inputs)
    y = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = layers.BatchNormalization(name="bn")(y)
    x = layers.Add(name="residual")([x, y])
    x = layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x), name="small")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = randomize(small_model())
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    folder = save_converted(model, tmp_path_factory.mktemp("conv") / "small_torch")
    return model, folder


def test_folder_contents(saved):
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["compile.json", "graph.json", "model.py", "parity.json",
                                                        "weights.safetensors"]
    graph = json.loads((folder / "graph.json").read_text())
    assert graph["format"] == "lightning-cnn-graph" and graph["version"] == 2 and "NCHW" in graph["layout"]
    parity = json.loads((folder / "parity.json").read_text())
    output = parity["outputs"][0]
    assert parity["passed"] and output["max_abs_diff"] <= output["tolerance"] and parity["tolerance_rule"] == RULE
    # each call checked on Keras's inputs to it, but the Flatten (the twin flattens channels first for the Dense)
    layers_checked = parity["layers"]
    assert layers_checked["passed"] and layers_checked["samples"] == 4 and layers_checked["checked"] == 5
    assert layers_checked["worst"]["max_abs_diff"] <= layers_checked["worst"]["tolerance"]
    assert set(parity["versions"]) >= {"keras", "tensorflow", "torch"}
    compile_config = json.loads((folder / "compile.json").read_text())
    assert compile_config["loss"] == "sparse_categorical_crossentropy"
    assert compile_config["optimizer"]["class_name"] == "Adam"
    assert not list(folder.parent.glob(".*"))  # no temporary folder left beside it


def test_load_without_tensorflow_matches_keras(saved, tmp_path):
    model, folder = saved
    x = images()
    expected = model(x, training=False).numpy()
    np.savez(tmp_path / "x.npz", image=x.transpose(0, 3, 1, 2))  # the twin takes NCHW
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", NO_TENSORFLOW, str(folder), str(tmp_path / "x.npz"),
                             str(tmp_path / "out.npy")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    got = np.load(tmp_path / "out.npy")
    # Same tolerance as the layer tests: 1e-5 of the largest output (float32 kernel differences are ~1e-7).
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_loaded_twin_is_readable_and_trainable(saved):
    _, folder = saved
    twin = lightning_cnn.load_converted(folder)
    assert "residual = stem + bn" in twin.code
    assert not twin.training
    assert all(p.requires_grad for p in twin.parameters())


def _conv_inputs_channels_last(model, *inputs) -> list:
    """For each 2-D convolution ``model`` runs on ``inputs``: whether its input was in channels-last memory."""
    import torch

    seen = []
    hooks = [m.register_forward_pre_hook(lambda _, args: seen.append(
        args[0].is_contiguous(memory_format=torch.channels_last))) for m in model.modules()
        if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(*inputs)
    for hook in hooks:
        hook.remove()
    return seen


def test_twin_and_model_py_convolve_channels_last_memory(saved, tmp_path):
    """Given a contiguous NCHW image, the twin and model.py run their convolutions on NHWC memory (oneDNN's fast
    path on CPU), and ``Speed(channels_last=False)`` turns that off for a trained twin; a model with no 2-D
    convolution leaves its rank-4 input as it is."""
    import importlib.util

    import torch

    _, folder = saved
    x = torch.from_numpy(np.ascontiguousarray(images().transpose(0, 3, 1, 2)))
    spec = importlib.util.spec_from_file_location("small_model_py", folder / "model.py")
    source = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(source)
    for model in (lightning_cnn.load_converted(folder), source.load(folder)):
        assert _conv_inputs_channels_last(model, x) == [True, True]
        assert torch.equal(model(x), model(x.contiguous(memory_format=torch.channels_last)))

    # the speed seam's switch: off, a trained twin runs in NCHW memory throughout, with the same outputs
    from lightning_cnn.recipes.keras_compile import CompiledTwinModule, KerasCompile
    from lightning_cnn.speed import Speed

    twin = lightning_cnn.load_converted(folder)
    expected = twin(x)
    for speed, channels_last in ((Speed(channels_last=False), False), (Speed(), True)):
        module = CompiledTwinModule(twin, KerasCompile(), speed=speed).eval()
        assert _conv_inputs_channels_last(module, x) == [channels_last, channels_last]
        assert torch.allclose(module(x), expected, rtol=0, atol=1e-6 * float(expected.abs().max()))

    inputs = keras.Input((9, 9, 3), name="image")
    dense = keras.Model(inputs, layers.Dense(2, name="logits")(layers.Flatten(name="flatten")(inputs)))
    plain = save_converted(randomize(dense), tmp_path / "dense")
    assert "channels_last" not in (plain / "model.py").read_text()
    assert "channels_last" not in lightning_cnn.load_converted(plain).code


def _copy(folder: Path, dest: Path) -> Path:
    dest.mkdir()
    for f in folder.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


@pytest.mark.parametrize("tamper, message", [
    (lambda g: g.update(version=99), "format version 99"),
    (lambda g: g.update(version=1), "format version 1, .*converted again"),
    (lambda g: g["modules"][0]["module"].update(cls="os.system"), "unknown module 'os.system'"),
    (lambda g: g["modules"][0]["module"]["args"].__setitem__(1, "six"), r"modules\[0\].*bad arguments"),
    (lambda g: g["modules"][0]["module"]["kwargs"].update(evil=1), "bad arguments"),
    (lambda g: g["nodes"][1].update(inputs=["nowhere"]), "before it is computed"),
    (lambda g: g["modules"][0].update(name="__class__"), r"modules\[0\].name: '__class__' is not a usable name"),
    (lambda g: g["modules"][0].update(name="import"), "is not a usable name"),
    (lambda g: g["inputs"][0].update(name="x):\n    import os #"), r"inputs\[0\].name: .* is not a usable name"),
    (lambda g: g["modules"][1]["module"].update(args=[7, 7, [3, 3]], kwargs=dict(padding=[1, 1], groups=7)),
     "do not match"),
    (lambda g: g.pop("nodes"), "nodes: expected a list"),
    (lambda g: g["modules"][0]["module"]["kwargs"].update(stride=[10**9, 10**9]), "beyond the bound"),
    # issue 21's cases: every field is validated when read, one line naming the file and the field
    (lambda g: g["inputs"][0].pop("shape"), r"inputs\[0\].shape: expected a list"),
    (lambda g: g["inputs"][0].update(shape=5), r"inputs\[0\].shape: expected a list"),
    (lambda g: g["inputs"][0].update(shape=[None, -3, 9, 9]), r"inputs\[0\].shape\[1\]"),
    (lambda g: g.update(outputs=[]), "outputs: empty"),
    (lambda g: g["modules"][0].update(name="training"), "'training' is not a usable name"),
    (lambda g: g["modules"][0].update(name="forward"), "'forward' is not a usable name"),
    (lambda g: g["modules"][0].update(name="state_dict"), "'state_dict' is not a usable name"),
    (lambda g: g["modules"][0].update(name="__init__"), "'__init__' is not a usable name"),
    (lambda g: g["nodes"][0]["steps"][-1].update(function="torch.hard_tanh_of_doom"), "unknown function"),
    (lambda g: g["nodes"][0]["steps"].append(dict(method="__reduce__", args=[{"$": "x"}])), "unknown method"),
    (lambda g: g["nodes"][0].update(steps="relu"), r"nodes\[0\].steps: expected a list"),
    (lambda g: g["nodes"][0]["steps"][0].update(args=[{"$": 7}]), "bad reference"),
    (lambda g: g["modules"].extend([g["modules"][-1]]), "is used twice"),
    (lambda g: g["inputs"][0].update(dtype="object"), r"inputs\[0\].dtype"),
    (lambda g: g.update(class_name="os.system"), "class_name"),
])
def test_tampered_graph_is_a_user_error(saved, tmp_path, tamper, message):
    _, folder = saved
    bad = _copy(folder, tmp_path / "bad")
    graph = json.loads((bad / "graph.json").read_text())
    tamper(graph)
    (bad / "graph.json").write_text(json.dumps(graph))
    with pytest.raises(ConvertedModelError, match=message) as info:
        lightning_cnn.load_converted(bad)
    assert isinstance(info.value, UserError) and "keras_ref.convert" in str(info.value)


# The child process: peak RSS before and after loading a folder whose graph.json asks for an enormous layer.
HUGE_LAYER = textwrap.dedent("""
    import resource, sys
    import lightning_cnn
    from lightning_cnn.converted import ConvertedModelError
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        lightning_cnn.load_converted(sys.argv[1])
    except ConvertedModelError as error:
        print(error)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, "MiB")
""")


def test_enormous_layer_is_refused_before_allocating(saved, tmp_path):
    _, folder = saved
    bad = _copy(folder, tmp_path / "bad")
    graph = json.loads((bad / "graph.json").read_text())
    (logits,) = [m for m in graph["modules"] if m["name"] == "logits"]
    logits["module"]["args"][1] = 10**9  # nn.Linear(150, out_features)  # a 10**9 x 150 float32 weight: 600 GB if it were allocated
    (bad / "graph.json").write_text(json.dumps(graph))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", HUGE_LAYER, str(bad)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    message, growth = result.stdout.strip().splitlines()
    assert "layer 'logits'" in message and "(1000000000, 150)" in message and "(4, 150)" in message
    # Loading the real 150x4 layer needs well under a MiB; 64 MiB of peak growth leaves room for allocator and
    # import noise while a single row of the requested layer's weight would already exceed it at 10**9 units.
    assert int(growth.split()[0]) < 64, growth


def test_corrupt_or_missing_files_are_user_errors(saved, tmp_path):
    _, folder = saved
    bad = _copy(folder, tmp_path / "bad")
    (bad / "graph.json").write_text("{not json")
    with pytest.raises(ConvertedModelError, match="not valid JSON"):
        lightning_cnn.load_converted(bad)
    bad = _copy(folder, tmp_path / "bad2")
    (bad / "weights.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ConvertedModelError, match="cannot read"):
        lightning_cnn.load_converted(bad)
    with pytest.raises(ConvertedModelError, match="does not exist"):
        lightning_cnn.load_converted(tmp_path / "nowhere")


def test_weights_of_another_model_are_refused(saved, tmp_path):
    _, folder = saved
    other_model = keras.Model(i := keras.Input((9, 9, 3)), layers.Dense(4, name="logits")(layers.Flatten()(i)))
    other = save_converted(other_model, tmp_path / "other")
    bad = _copy(folder, tmp_path / "bad")
    (bad / "weights.safetensors").write_bytes((other / "weights.safetensors").read_bytes())
    with pytest.raises(ConvertedModelError, match="weights do not match graph.json"):
        lightning_cnn.load_converted(bad)


def test_cli_writes_the_folder_and_reports(saved, tmp_path, capsys):
    model, _ = saved
    model.save(tmp_path / "small.keras")
    np.savez(tmp_path / "real.npz", image=images())
    out = tmp_path / "small_torch"
    assert main([str(tmp_path / "small.keras"), "--out", str(out), "--inputs", str(tmp_path / "real.npz")]) == 0
    assert "max |Keras - twin|" in capsys.readouterr().out
    parity = json.loads((out / "parity.json").read_text())
    assert parity["inputs"] == "4 given inputs" and parity["passed"]
    assert json.loads((out / "compile.json").read_text())["loss"] == "sparse_categorical_crossentropy"
    # Converting again replaces the folder in one step.
    assert main([str(tmp_path / "small.keras"), "--out", str(out)]) == 0
    assert json.loads((out / "parity.json").read_text())["inputs"].endswith("random inputs (seed 0)")


def test_cli_parity_failure_exits_1(saved, tmp_path, monkeypatch):
    """A conversion mistake of 1e-4 in one bias (far below the old fixed 1e-5-relative budget's blind spot on
    deep models, far above float32 rounding here) fails the rule: exit 1, parity.json says why."""
    model, _ = saved
    model.save(tmp_path / "small.keras")
    correct = convert_module._torch_state

    def off_by_a_little(ext):
        state = correct(ext)
        state["logits.bias"] = state["logits.bias"] + 1e-4
        return state

    monkeypatch.setattr(convert_module, "_torch_state", off_by_a_little)
    code = main([str(tmp_path / "small.keras"), "--out", str(tmp_path / "t")])
    parity = json.loads((tmp_path / "t" / "parity.json").read_text())
    output = parity["outputs"][0]
    assert output["max_abs_diff"] > output["tolerance"] > 4 * output["twin_float32_error"]
    assert code == 1 and parity["passed"] is False
    assert [(r["keras_path"], r["keras_class"]) for r in parity["layers"]["failed"]] == [("logits", "Dense")]


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert exit_on_user_error(main, [str(tmp_path / "missing.keras"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.keras" in err and err.count("\n") == 1
    model = keras.Model(i := keras.Input((7, 5)), layers.GRU(2)(layers.UnitNormalization(name="unit")(i)))
    model.save(tmp_path / "rnn.keras")
    assert exit_on_user_error(main, [str(tmp_path / "rnn.keras"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "'unit' (UnitNormalization): unsupported layer" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    assert exit_on_user_error(main, [str(tmp_path / "rnn.keras"), "--out", str(tmp_path / "notes")]) == 2
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"


def test_keras_file_whose_config_inflates_to_gigabytes_is_refused_unread(tmp_path, capsys):
    """A .keras archive is a zip: its config.json's declared size is checked before anything reads it."""
    import zipfile

    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", b" " * (80 << 20))  # 80 MiB of spaces, ~80 KB compressed
        archive.writestr("metadata.json", "{}")
    assert bomb.stat().st_size < 1 << 20
    assert exit_on_user_error(main, [str(bomb), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "config.json inflates to 83,886,080 bytes" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
