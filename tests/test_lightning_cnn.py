"""The Lightning side: models, recipes, train.py (fast-dev-run, real training, resume, bf16, DDP) and predict.py."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lightning_cnn
from lightning_cnn.nets.models import count_params
from lightning_cnn.recipes.optim import KerasAdam, KerasRMSprop, make_optimizer
from lightning_cnn.specs import get_spec
from lightning_cnn.run.training import ConfigError, RunConfig, fit_and_test, make_trainer

REPO = Path(__file__).resolve().parents[1]

from tests.spec_md import SPEC_PARAMS


def train_cli(capsys, *args) -> tuple[int, str]:
    """``lightning_cnn.cli.train.main`` (what scripts/train.py runs) in this process: (exit status, stderr). For the
    refusals, which need no process of their own; the end-to-end runs below go through scripts/train.py."""
    from lightning_cnn.cli.train import main

    capsys.readouterr()
    status = main([str(a) for a in args])
    return status, capsys.readouterr().err


def script(name, *args, env=None, timeout=600):
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO)


def test_every_id_is_listed_and_builds_with_spec_counts():
    assert sorted(lightning_cnn.list_models()) == sorted(SPEC_PARAMS)
    for model_id, (total, trainable) in SPEC_PARAMS.items():
        model = lightning_cnn.build_model(model_id)
        h, w, c = get_spec(model_id).input_shape
        assert (count_params(model), count_params(model, trainable_only=True)) == (total, trainable), model_id
        assert model(torch.zeros(3, c, h, w)).shape == (3, 10), model_id


def test_unknown_id_names_the_valid_ones():
    with pytest.raises(lightning_cnn.UnknownModelError, match="valid ids: .*mnist_cnn_small"):
        lightning_cnn.build_model("mnist_cnn_huge")


def test_keras_initialisation_is_the_default_and_torch_init_is_available():
    keras_init = lightning_cnn.build_model("mnist_cnn_small", seed=0)
    torch_init = lightning_cnn.build_model("mnist_cnn_small", init="torch", seed=0)
    dense = keras_init.dense.weight
    limit = (6 / (dense.shape[0] + dense.shape[1])) ** 0.5  # glorot_uniform's bound
    assert dense.abs().max() <= limit and dense.abs().max() > 0.9 * limit
    assert all(torch.count_nonzero(m.bias) == 0 for m in (keras_init.conv2d, keras_init.dense))
    assert torch.count_nonzero(torch_init.conv2d.bias) > 0  # torch's default init draws biases
    again = lightning_cnn.build_model("mnist_cnn_small", seed=0)
    assert all(torch.equal(a, b) for a, b in zip(keras_init.parameters(), again.parameters()))


def test_recipe_optimizers_have_keras_settings():
    params = lambda: [torch.nn.Parameter(torch.zeros(2))]  # noqa: E731
    adam = make_optimizer(params(), get_spec("mnist_cnn_small").recipe)
    assert isinstance(adam, KerasAdam) and adam.param_groups[0]["keras_eps"] == 1e-7
    rmsprop = make_optimizer(params(), get_spec("cifar10_cnn").recipe)
    assert isinstance(rmsprop, KerasRMSprop)
    assert rmsprop.defaults["lr"] == 1e-4 and rmsprop.defaults["rho"] == 0.9 and rmsprop.defaults["eps"] == 1e-7
    adadelta = make_optimizer(params(), get_spec("mnist_cnn_dropout").recipe)
    assert isinstance(adadelta, torch.optim.Adadelta)
    assert adadelta.defaults["lr"] == 1.0 and adadelta.defaults["rho"] == 0.95 and adadelta.defaults["eps"] == 1e-7
    sgd = make_optimizer(params(), get_spec("cifar10_vgg16_transfer").recipe)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["lr"] == 1e-4 and sgd.defaults["momentum"] == 0.9
    sgd_default = make_optimizer(params(), get_spec("mnist_mlp_t9_1").recipe)
    assert sgd_default.defaults["lr"] == 0.01 and sgd_default.defaults["momentum"] == 0.0


@pytest.mark.parametrize("fused", [True, False])
def test_a_step_the_loss_scaler_skips_is_not_counted(fused):
    """Keras's LossScaleOptimizer skips a step with inf/NaN gradients without counting it, so the bias correction
    and epsilon of every later step are those of a run in which that step never happened. torch's GradScaler skips
    it too (fused: inside the kernel, which is handed the flag); KerasAdam's own step count must follow. Gradients
    of ~1e-6 make epsilon matter, so a miscounted step changes the weights, not only the count."""
    torch.manual_seed(0)
    grads = [torch.randn(5) * 1e-6 for _ in range(3)]
    inf = torch.full((5,), float("inf"))

    def run(steps):
        weight = torch.nn.Parameter(torch.ones(5))
        adam = KerasAdam([weight], fused=fused)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)  # halves its scale after the skipped step
        counts = []
        for grad in steps:
            scaler.scale(torch.tensor(1.0))
            weight.grad = grad * scaler.get_scale()  # a power of two: unscaling gives back exactly ``grad``
            scaler.step(adam)
            scaler.update()
            counts.append(adam.state_dict()["param_groups"][0]["keras_step"])
        return weight.detach(), counts

    weights, counts = run([grads[0], inf, grads[1], grads[2]])
    expected, _ = run([grads[0], grads[1], grads[2]])
    assert torch.equal(weights, expected)
    assert counts == [1, 1, 2, 3]


def test_fast_dev_run_on_real_data(data_dir, tmp_path):
    metrics = tmp_path / "metrics.json"
    result = script("train.py", "--fast-dev-run", "--data-dir", data_dir, "--out", tmp_path / "run",
                    "--metrics-json", metrics)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Total params: 30,762" in result.stdout
    accuracy = float(re.search(r"Test accuracy: ([\d.]+)%", result.stdout).group(1))
    saved = json.loads(metrics.read_text())  # what the command printed is what it wrote
    assert saved["test_accuracy"] == pytest.approx(accuracy / 100, abs=0.00005)  # printed to 0.01 points
    assert saved["command"].endswith(f"--metrics-json {metrics}") and saved["config"]["fast_dev_run"]


@pytest.fixture(scope="module")
def trained_small(data_dir, tmp_path_factory):
    """mnist_cnn_small, one epoch on the first 600 batches (19,200 images) of real MNIST."""
    out = tmp_path_factory.mktemp("small")
    result = fit_and_test(RunConfig(data_dir=str(data_dir), out=str(out), epochs=1, limit_train_batches=600,
                                    seed=0))
    return out, result


def test_short_real_training_reaches_stated_accuracy(trained_small):
    out, result = trained_small
    # One epoch on a third of MNIST: Keras's recipe gets ~97% here; 96% leaves room for seed noise, and a broken
    # loss, optimizer or data pipeline lands far below it.
    assert result["test_accuracy"] >= 0.96
    assert result["test_samples"] == 10_000
    assert result["train_samples_last_epoch"] == 600 * 32
    for name in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.csv", "learning_curves.png"):
        assert (out / name).is_file(), name
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("epoch,seconds,train_loss")


@pytest.mark.parametrize("model_id, moved", [("mnist_cnn_tf_tutorial", 2), ("mnist_cnn_small", 2),
                                             ("mnist_cnn_qiita", 2), ("mnist_cnn_dropout", 1), ("cifar10_cnn", 2)])
def test_pooling_before_relu_changes_no_output_and_no_gradient(model_id, moved, data_dir):
    """The training module's speed-up (ReLU after the max-pool) is exact: logits and every gradient bit for bit."""
    import copy

    from lightning_cnn.data import load_dataset, preprocess
    from lightning_cnn.speed.pooling import PoolThenActivation, pool_before_activation_

    spec = get_spec(model_id)
    (x, y), _ = load_dataset(spec.dataset, data_dir, allow_partial_test=True)
    x = torch.from_numpy(preprocess(x[:64], spec.preprocessing)).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(y[:64].reshape(-1).astype("int64"))
    reference = lightning_cnn.build_model(model_id, seed=0).eval()
    fast = pool_before_activation_(copy.deepcopy(reference))
    assert sum(isinstance(m, PoolThenActivation) and isinstance(m[1], torch.nn.ReLU) for m in fast.modules()) == moved
    assert fast.state_dict().keys() == reference.state_dict().keys()  # checkpoints load either way
    outputs = []
    for model in (reference, fast):
        logits = model(x)
        torch.nn.functional.cross_entropy(logits, y).backward()
        outputs.append((logits.detach(), [p.grad for p in model.parameters()]))
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(outputs[0][1], outputs[1][1]))


def test_attribute_fast_path_still_registers_parameters_and_modules():
    """The fast path stores plain values only; anything nn.Module must register still goes through it."""
    from lightning_cnn.recipes.module import KerasRecipeModule

    module = KerasRecipeModule("mnist_cnn_small", seed=0)
    module.extra = None
    module.extra = 3  # plain value over a plain attribute: stored directly
    assert module.extra == 3 and "extra" in module.__dict__
    module.extra = torch.nn.Linear(2, 2)  # a submodule over a plain attribute: registered
    assert "extra" in dict(module.named_children()) and "extra" not in module.__dict__
    module.scale = None
    module.scale = torch.nn.Parameter(torch.ones(1))
    assert "scale" in dict(module.named_parameters())
    module._current_fx_name = "training_step"  # what Lightning writes around each hook call
    assert module.__dict__["_current_fx_name"] == "training_step"
    with pytest.raises(RuntimeError, match="higher_is_better"):  # torchmetrics' own guard still applies
        module.train_metrics.acc.higher_is_better = False


def test_logged_epoch_metrics_equal_a_direct_computation(data_dir):
    """The metrics are registered once per epoch and accumulated per step: check them against plain torch.

    103 real test images in batches of 32 (the last one of 7) catch a mean taken over batches instead of images;
    two test runs in a row catch state carried over from one epoch to the next.
    """
    import torch.nn.functional as F
    from torchmetrics.classification import MulticlassAccuracy

    from lightning_cnn.data import load_dataset, preprocess
    from lightning_cnn.datamodule import InMemoryLoader
    from lightning_cnn.recipes.module import KerasRecipeModule

    _, (x, y) = load_dataset("mnist", data_dir)
    x = torch.from_numpy(preprocess(x[:103], "scale_255")).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(y[:103].astype("int64"))
    module = KerasRecipeModule("mnist_cnn_small", seed=0)
    trainer = make_trainer(accelerator="cpu")
    for _ in range(2):
        logged = trainer.test(module, InMemoryLoader(x, y, 32, shuffle=False), verbose=False)[0]
        with torch.no_grad():
            logits = module.model.eval()(x)
        assert logged["test_samples"] == 103
        assert logged["test_acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item(), abs=1e-7)
        # Bit for bit what torchmetrics' accuracy (which the module used to update every step) reports.
        assert logged["test_acc"] == MulticlassAccuracy(10, average="micro")(logits, y).item()
        # float32 per-batch losses summed in float64: agreement to float32 rounding of the mean.
        assert logged["test_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


def _final_weights(path):
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.")}


@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_resume_continues_to_the_same_result(data_dir, tmp_path, steps_per_execution):
    # mnist_cnn_dropout has dropout (RNG), a validation split and EarlyStopping: the hardest case for resume.
    # With 4 batches a step the optimizer steps are Lightning's manual ones, whose count a checkpoint also carries.
    # Test results must be identical too: 5 test batches show that as well as 10,000 images would.
    common = dict(model="mnist_cnn_dropout", data_dir=str(data_dir), limit_train_batches=20 // steps_per_execution,
                  limit_val_batches=5, limit_test_batches=5, seed=3, progress_bar=False,
                  steps_per_execution=steps_per_execution)
    straight = fit_and_test(RunConfig(out=str(tmp_path / "straight"), epochs=2, **common))
    fit_and_test(RunConfig(out=str(tmp_path / "resumed"), epochs=1, **common))
    resumed = fit_and_test(RunConfig(out=str(tmp_path / "resumed"), epochs=2,
                                     resume=str(tmp_path / "resumed/checkpoints/last.ckpt"), **common))
    a = _final_weights(tmp_path / "straight/checkpoints/last.ckpt")
    b = _final_weights(tmp_path / "resumed/checkpoints/last.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["history"] == straight["history"]
    assert resumed["test_accuracy"] == straight["test_accuracy"]


def test_compiled_network_computes_what_the_eager_one_does(data_dir):
    """``compiled=True`` (torch.compile; inductor's C++ kernels on CPU) is a speed option, never a numeric change.

    Inductor fuses and reorders float32 sums, so agreement is to float32 rounding: logits to 1e-5 absolute
    (|logits| < 10 here), every gradient to 1e-4 of its largest element. Parameter names stay the eager ones, so
    checkpoints from either load into the other.
    """
    import torch.nn.functional as F

    from lightning_cnn.data import load_dataset, preprocess
    from lightning_cnn.recipes.module import KerasRecipeModule

    (x, y), _ = load_dataset("mnist", data_dir)
    x = torch.from_numpy(preprocess(x[:64], "scale_255")).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(y[:64].astype("int64"))
    eager, compiled = (KerasRecipeModule("mnist_cnn_small", seed=0, compiled=c) for c in (False, True))
    assert compiled.model._compiled_call_impl is not None and eager.model._compiled_call_impl is None
    assert eager.state_dict().keys() == compiled.state_dict().keys()
    logits = {}
    for name, module in (("eager", eager), ("compiled", compiled)):
        logits[name] = module(x)
        F.cross_entropy(logits[name], y).backward()
    torch.testing.assert_close(logits["compiled"], logits["eager"], rtol=0, atol=1e-5)
    for (name, p_eager), p_compiled in zip(eager.model.named_parameters(), compiled.model.parameters()):
        scale = p_eager.grad.abs().max().item()
        torch.testing.assert_close(p_compiled.grad, p_eager.grad, rtol=0, atol=1e-4 * scale, msg=name)


def test_train_py_compile_flag_trains_and_writes_a_loadable_checkpoint(data_dir, tmp_path):
    from lightning_cnn.trained import load_checkpoint_model

    result = script("train.py", "--compile", "--accelerator", "cpu", "--epochs", 1, "--limit-train-batches", 20,
                    "--limit-test-batches", 5,
                    "--data-dir", data_dir, "--out", tmp_path, "--metrics-json", tmp_path / "metrics.json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["compile"] is True
    model, spec = load_checkpoint_model(tmp_path / "checkpoints" / "last.ckpt")
    assert spec.id == "mnist_cnn_small" and count_params(model) == 30_762


def test_bf16_mixed_on_cpu(data_dir, tmp_path):
    result = fit_and_test(RunConfig(data_dir=str(data_dir), out=str(tmp_path), epochs=1, limit_train_batches=300,
                                    precision="bf16-mixed", seed=0, progress_bar=False))
    # bf16 autocast loses mantissa bits, not learning: 300 batches still give > 93% (fp32 gives ~96%).
    assert result["test_accuracy"] > 0.93


def test_ddp_two_cpu_processes_see_each_sample_once(data_dir, tmp_path):
    # cifar10_cnn's recipe trains on 300 images and validates on 100: small enough to count exactly.
    metrics = tmp_path / "ddp.json"
    result = script("train.py", "--model", "cifar10_cnn", "--accelerator", "cpu", "--devices", 2, "--strategy",
                    "ddp", "--epochs", 2, "--data-dir", data_dir, "--allow-partial-test", "--out", tmp_path / "run",
                    "--metrics-json", metrics)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads(metrics.read_text())
    assert saved["train_samples_last_epoch"] == 300  # summed over both processes: each sample exactly once
    assert saved["test_samples"] == 1000 and saved["test_is_partial"]
    assert len(saved["history"]["val_loss"]) == 2
    assert "first 1,000 test images" in result.stdout


@pytest.mark.parametrize("model_id, precision", [("mnist_cnn_small", "32-true"), ("mnist_cnn_dropout", "32-true"),
                                                 ("mnist_cnn_small", "bf16-mixed")])
def test_steps_per_execution_trains_exactly_as_one_step_per_batch(data_dir, tmp_path, model_id, precision):
    """Grouping batches changes who loops over them, not what is computed: 2 epochs of 11 batches (the last one
    short, the last group of 2) give bit-identical weights, history, validation (dropout's split) and test
    results (on 160 test images: identity needs no more), and the same number of optimizer steps. Dropout draws
    from the RNG in the same order too."""
    runs = {}
    for k in (1, 3):
        out = tmp_path / f"k{k}"
        result = fit_and_test(RunConfig(model=model_id, epochs=2, train_images="325", batch_size=32,
                                        precision=precision, data_dir=data_dir, out=str(out), limit_test_batches=5,
                                        steps_per_execution=k, progress_bar=False))
        runs[k] = result, torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    (one, one_ckpt), (grouped, grouped_ckpt) = runs[1], runs[3]
    assert grouped_ckpt["global_step"] == one_ckpt["global_step"] == 2 * math.ceil(325 * (
        1 - get_spec(model_id).recipe.validation_split) / 32)
    assert one_ckpt["state_dict"].keys() == grouped_ckpt["state_dict"].keys()
    assert all(torch.equal(one_ckpt["state_dict"][name], grouped_ckpt["state_dict"][name])
               for name in one_ckpt["state_dict"])
    assert grouped["history"] == one["history"]
    assert (grouped["test_loss"], grouped["test_accuracy"]) == (one["test_loss"], one["test_accuracy"])


def test_steps_per_execution_takes_a_plain_dataloader_batch_as_one_batch(data_dir):
    """torch's DataLoader collates (x, y) samples into a list [x, y]: that is one batch, not a group of two."""
    from lightning_cnn.recipes.module import KerasRecipeModule

    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    module = KerasRecipeModule("mnist_cnn_small", seed=0, steps_per_execution=2)
    trainer = make_trainer(accelerator="cpu", max_epochs=1)
    trainer.fit(module, loader)
    assert trainer.global_step == 2 and trainer.callback_metrics["train_samples"] == 64


def test_steps_per_execution_below_one_is_refused(capsys, data_dir):
    status, err = train_cli(capsys, "--steps-per-execution", "0", "--data-dir", data_dir)
    assert status == 2 and "--steps-per-execution 0" in err and "Traceback" not in err


def test_gpu_request_without_gpu_is_one_clear_line(capsys, data_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the error path is for machines without one")
    status, err = train_cli(capsys, "--accelerator", "gpu", "--data-dir", data_dir)
    assert status == 2
    assert err.strip().count("\n") == 0 and "no CUDA GPU" in err
    with pytest.raises(ConfigError):
        fit_and_test(RunConfig(accelerator="gpu"))


def test_unknown_model_on_the_command_line(capsys, data_dir):
    status, err = train_cli(capsys, "--model", "nope", "--data-dir", data_dir)
    assert status == 2 and "mnist_cnn_small" in err and "Traceback" not in err


def test_train_images_overrides_the_recipe_subset(capsys, data_dir, tmp_path):
    status, err = train_cli(capsys, "--model", "cifar10_cnn", "--train-images", "-5", "--data-dir", data_dir)
    assert status == 2 and "'all'" in err and "Traceback" not in err
    # Only the training subset is checked here: one test batch is enough.
    common = dict(model="cifar10_cnn", data_dir=str(data_dir), allow_partial_test=True, epochs=1, progress_bar=False,
                  limit_test_batches=1)
    assert fit_and_test(RunConfig(out=str(tmp_path / "recipe"), **common))["train_samples_last_epoch"] == 300
    full = fit_and_test(RunConfig(out=str(tmp_path / "all"), train_images="all", limit_train_batches=4, **common))
    assert full["train_samples_last_epoch"] == 400  # 4 of 500 batches of 100: more than the recipe's 300 images
    seven_hundred = fit_and_test(RunConfig(out=str(tmp_path / "n"), train_images="700", **common))
    assert seven_hundred["train_samples_last_epoch"] == 700


def test_predict_on_images_the_test_writes(trained_small, data_dir, tmp_path):
    from PIL import Image

    from lightning_cnn.data import load_dataset

    out, _ = trained_small
    _, (x_test, y_test) = load_dataset("mnist", data_dir)
    files = []
    for i in range(5):  # drawn the way a user would: dark ink on white paper, larger than 28x28
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(255 - x_test[i]).resize((112, 112), Image.NEAREST).save(path)
        files.append(path)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    result = script("predict.py", "--checkpoint", out / "checkpoints/best.ckpt", *files, tmp_path / "empty.png",
                    tmp_path / "junk.jpg", "--test-indices", 0, 1, "--data-dir", data_dir,
                    "--json", tmp_path / "pred.json")
    assert result.returncode == 1  # some inputs failed, the rest were answered
    assert "empty.png" in result.stderr and "junk.jpg" in result.stderr
    records = json.loads((tmp_path / "pred.json").read_text())
    assert len(records) == 7
    for record in records:
        assert abs(sum(record["probabilities"]) - 1) < 1e-5 and len(record["probabilities"]) == 10
    predicted = [int(r["predicted"]) for r in records[:5]]
    assert sum(p == int(y) for p, y in zip(predicted, y_test[:5])) >= 4


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_a_checkpoint_with_code_in_it_is_refused(tmp_path):
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": _Payload()}))
    result = script("predict.py", "--checkpoint", evil, "--test-indices", 0)
    assert result.returncode == 2 and "cannot read checkpoint" in result.stderr
    assert not (REPO / "PWNED_BY_CHECKPOINT").exists()
