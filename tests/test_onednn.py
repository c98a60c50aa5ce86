"""The oneDNN inference copy: same outputs as the eager network, used only where it applies, never stale."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_cnn.datamodule import ArrayDataModule, InMemoryLoader
from lightning_cnn.nets.models import build_from_layers
from lightning_cnn.recipes.module import KerasRecipeModule
from lightning_cnn.speed import Speed
from lightning_cnn.speed.onednn import onednn_forward
from lightning_cnn.specs import SPECS, conv, dense, flatten, get_spec, maxpool

CNNS = [mid for mid, spec in SPECS.items() if any(kind == "conv2d" or kind == "vgg16_features"
                                                   for kind, _ in spec.layers)]
MLPS = [mid for mid in SPECS if mid not in CNNS]

# Both sides run oneDNN's float32 kernels; only the blocking and summation order differ, which moved the logits
# here by at most 5.4e-7 of the largest logit (cifar10_cnn, fed 0-255 pixels: 3.3e-5 on 61; the others up to 3e-7
# on logits below 1.4). 1e-5 of the largest logit leaves a wide margin for other CPUs, while any layout or weight
# order mistake moves logits by a sizeable fraction of themselves.
TOLERANCE = 1e-5


def _test_images(data_dir, model_id, count=64):
    data = ArrayDataModule.from_spec(get_spec(model_id), data_dir=data_dir, allow_partial_test=True, download=False)
    data.setup("test")
    return data.x_test[:count], data.y_test[:count]


def _trainer(**settings):
    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False, **settings)


def test_every_documented_cnn_is_taken():
    assert len(CNNS) == 6 and all(onednn_forward(KerasRecipeModule(mid, seed=0).model.eval()) for mid in CNNS)
    assert MLPS and all(onednn_forward(KerasRecipeModule(mid, seed=0).model.eval()) is None for mid in MLPS)


@pytest.mark.parametrize("model_id", CNNS)
def test_inference_copy_gives_the_eager_logits(data_dir, model_id):
    module = KerasRecipeModule(model_id, seed=0).eval()
    x, _ = _test_images(data_dir, model_id, count=16 if model_id == "cifar10_vgg16_transfer" else 64)
    x = x.contiguous(memory_format=module.memory_format)
    with torch.inference_mode():
        eager, fast = module(x), onednn_forward(module.model)(x)
    assert fast.shape == eager.shape
    torch.testing.assert_close(fast, eager, rtol=0, atol=TOLERANCE * eager.abs().max().item())


@pytest.mark.parametrize("layers, why", [
    ((conv(4, 3, padding="same", strides=2), flatten(), dense(10)), "TensorFlow's asymmetric same padding"),
    ((conv(4, 3, activation="sigmoid"), maxpool(), flatten(), dense(10)), "sigmoid"),
])
def test_layers_it_cannot_take_leave_the_network_eager(layers, why):
    assert onednn_forward(build_from_layers(layers, (28, 28, 1)).eval()) is None, why


def test_a_network_in_training_mode_is_not_copied():
    """The copy is for inference: it would skip the dropout that training mode asks for."""
    model = KerasRecipeModule("mnist_cnn_dropout", seed=0).model
    assert onednn_forward(model.train()) is None and onednn_forward(model.eval()) is not None


def test_evaluation_uses_the_copy_on_cpu_float32_only_while_evaluating(data_dir):
    x, y = _test_images(data_dir, "mnist_cnn_small")
    module = KerasRecipeModule("mnist_cnn_small", seed=0, speed=Speed(onednn_evaluation=True))
    seen = []

    class Watch(L.Callback):
        def on_predict_batch_start(self, trainer, pl_module, *args):
            seen.append(pl_module._evaluation_network is not None)

    for precision, used in (("32-true", True), ("bf16-mixed", False)):
        seen.clear()
        probabilities = torch.cat(_trainer(precision=precision, callbacks=[Watch()]).predict(
            module, InMemoryLoader(x, y, 32, shuffle=False)))
        assert seen == [True, True] and module._evaluation_network is None  # built for the epoch, dropped after it
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=not used):
            eager = torch.softmax(module(x).float(), dim=1)
        if used:
            torch.testing.assert_close(probabilities, eager, rtol=0, atol=TOLERANCE)
        else:  # autocast: the eager network itself, bit for bit
            assert torch.equal(probabilities, eager)


def test_validation_sees_the_weights_of_this_epoch(data_dir):
    """Two epochs of training with validation: the second epoch's validation loss is the eager loss of the final
    weights. A copy kept from the first epoch would be off by a training epoch's change in loss."""
    x, y = _test_images(data_dir, "mnist_cnn_small", count=256)
    module = KerasRecipeModule("mnist_cnn_small", seed=0, speed=Speed(onednn_evaluation=True))
    train = InMemoryLoader(x, y, 32, shuffle=True)
    trainer = _trainer(max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(module, train, InMemoryLoader(x, y, 64, shuffle=False))
    with torch.inference_mode():
        eager_loss = F.cross_entropy(module.eval()(x), y)
    assert abs(trainer.callback_metrics["val_loss"] - eager_loss) < TOLERANCE


def test_by_default_evaluation_runs_forward_itself(data_dir):
    """Parity-true metrics: without ``Speed(onednn_evaluation=True)`` no copy is made and predictions are
    ``forward``'s, bit for bit."""
    x, y = _test_images(data_dir, "mnist_cnn_small")
    module = KerasRecipeModule("mnist_cnn_small", seed=0)
    seen = []

    class Watch(L.Callback):
        def on_predict_batch_start(self, trainer, pl_module, *args):
            seen.append(pl_module._evaluation_network is not None)

    probabilities = torch.cat(_trainer(callbacks=[Watch()]).predict(module, InMemoryLoader(x, y, 32, shuffle=False)))
    with torch.inference_mode():
        eager = torch.cat([torch.softmax(module(x[i:i + 32]).float(), dim=1) for i in range(0, len(x), 32)])
    assert seen == [False, False] and torch.equal(probabilities, eager)
