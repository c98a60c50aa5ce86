"""Training a twin with a Keras compile config (lightning_cnn.recipes.keras_compile, optim.make_keras_optimizer), TF-free.

Keras-side agreement of every optimizer x loss is in parity_tests/test_train_converted.py; here: the config is read
or refused clearly, a final softmax is never applied twice, and the optimizer pieces Keras defines by formula.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_cnn.errors import UserError
from lightning_cnn.recipes.keras_compile import CompiledTwinModule, FinalActivationInput, KerasCompile
from lightning_cnn.recipes.optim import KerasAdam, make_keras_optimizer


def _optimizer(class_name, **config):
    return {"module": "keras.optimizers", "class_name": class_name, "config": config}


def test_config_read_from_strings_and_serialized_objects():
    compiled = KerasCompile.from_config({"optimizer": "sgd", "loss": "mse", "metrics": ["accuracy"]})
    assert (compiled.loss, compiled.from_logits) == ("mean_squared_error", False)
    compiled = KerasCompile.from_config({"optimizer": _optimizer("Adam", learning_rate=0.01), "loss": {
        "class_name": "CategoricalCrossentropy", "config": {"from_logits": True, "label_smoothing": 0.1}}})
    assert (compiled.loss, compiled.from_logits, compiled.label_smoothing) == ("categorical_crossentropy", True, 0.1)
    assert KerasCompile.from_config(None) == KerasCompile()  # never compiled: Keras's Adam, sparse CE


@pytest.mark.parametrize("config, words", [
    ({"optimizer": _optimizer("Nadam"), "loss": "mse"}, ["Nadam", "supported"]),
    ({"optimizer": _optimizer("Adam", clipnorm=1.0), "loss": "mse"}, ["clipnorm"]),
    ({"optimizer": _optimizer("SGD", learning_rate={"class_name": "ExponentialDecay"}), "loss": "mse"},
     ["schedule"]),
    ({"optimizer": "adam", "loss": "huber"}, ["huber", "supported"]),
    ({"optimizer": "adam", "loss": "mse", "metrics": ["auc"]}, ["auc"]),
])
def test_unsupported_settings_are_user_errors_naming_them(config, words):
    with pytest.raises(UserError) as error:
        KerasCompile.from_config(config).make_optimizer([nn.Parameter(torch.zeros(2))])
    assert all(word in str(error.value) for word in words), str(error.value)


def _softmax_net(functional: bool):
    torch.manual_seed(0)
    linear = nn.Linear(5, 4)
    if functional:  # softmax inside another module's forward: invisible to the hook
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = linear

            def forward(self, x):
                return torch.softmax(self.linear(x), -1)
        return Net(), linear
    return nn.Sequential(linear, nn.Softmax(dim=-1)), linear


def test_final_softmax_is_not_applied_twice():
    """Keras's (sparse) CE on a softmax output uses the logits; so does the twin's loss, exactly."""
    net, linear = _softmax_net(functional=False)
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 0, 1])
    module = CompiledTwinModule(net, KerasCompile())
    output = module(x)
    loss = module.compile_config.loss_value(output, y, module._final_activation.logits_for(output))
    assert torch.equal(loss, F.cross_entropy(linear(x), y))


def test_probability_formula_when_the_logits_are_hidden():
    """-sum(y log clip(p)): equal to CE on the logits up to float32 rounding (1e-6 on a loss ~1.5) when no
    probability is clipped, as here (moderate random logits)."""
    net, linear = _softmax_net(functional=True)
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 0, 1])
    final = FinalActivationInput(net, KerasCompile().logits_activations)
    output = net(x)
    assert final.logits_for(output) is None
    loss = KerasCompile().loss_value(output, y, None)
    assert torch.allclose(loss, F.cross_entropy(linear(x), y), atol=1e-6)


def test_binary_crossentropy_on_a_softmax_output_reads_its_logits_as_keras_does():
    net, linear = _softmax_net(functional=False)
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 0, 1])
    compiled = KerasCompile(loss="binary_crossentropy")
    final = FinalActivationInput(net, compiled.logits_activations)
    output = net(x)
    loss = compiled.loss_value(output, y, final.logits_for(output))
    assert torch.equal(loss, F.binary_cross_entropy_with_logits(linear(x), F.one_hot(y, 4).float()))


def test_keras_weight_decay_is_decoupled_and_applied_before_the_step():
    """AdamW with a zero gradient: Adam's update is 0, so only Keras's w -= lr * wd * w remains (exactly)."""
    weight = nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = make_keras_optimizer([weight], _optimizer("AdamW", learning_rate=0.1, weight_decay=0.5))
    assert isinstance(optimizer, KerasAdam)
    weight.grad = torch.zeros(2)
    optimizer.step()
    assert torch.allclose(weight.detach(), torch.tensor([0.95, -1.9]), rtol=0, atol=1e-7)  # float32 rounding


def test_keras_weight_decay_is_applied_once_after_a_plain_adam_existed():
    """torch wraps an optimizer class's step() in its hook runner when the first instance is made: once a plain
    Adam existed in the process, a KerasAdam whose step() called super().step() ran each step hook twice (decay
    0.9025 instead of 0.95; the parity tests saw AdamW off Keras by 3e-4 in one test order)."""
    torch.optim.Adam([nn.Parameter(torch.zeros(1))])  # wraps torch.optim.Adam.step for the rest of the process
    weight = nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = make_keras_optimizer([weight], _optimizer("AdamW", learning_rate=0.1, weight_decay=0.5))
    post_hooks = []
    optimizer.register_step_post_hook(lambda *args: post_hooks.append(1))
    weight.grad = torch.zeros(2)
    optimizer.step()
    assert torch.allclose(weight.detach(), torch.tensor([0.95, -1.9]), rtol=0, atol=1e-7)
    assert len(post_hooks) == 1 and optimizer.param_groups[0]["keras_step"] == 1


def test_keras_nesterov_sgd_formula():
    """Keras: v = m*v - lr*g; w += m*v - lr*g. Two steps with gradient 1 from w = 0, m = 0.9, lr = 0.1:
    v1 = -0.1, w1 = -0.09 - 0.1 = -0.19; v2 = -0.19, w2 = -0.19 - 0.171 - 0.1 = -0.461."""
    weight = nn.Parameter(torch.zeros(1))
    optimizer = make_keras_optimizer([weight], _optimizer("SGD", learning_rate=0.1, momentum=0.9, nesterov=True))
    for _ in range(2):
        weight.grad = torch.ones(1)
        optimizer.step()
    assert abs(weight.item() - -0.461) < 1e-6  # float32 rounding of a sum of ~0.5
