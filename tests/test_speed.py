"""The speed seam: each switch does what it says, off means the network as written, and none changes the numbers."""

from __future__ import annotations

import copy
import pickle
from dataclasses import fields

import pytest
import torch

import lightning_cnn
from lightning_cnn.recipes.module import KerasRecipeModule
from lightning_cnn.speed import Speed
from lightning_cnn.speed.attributes import PlainAttributeFastPath
from lightning_cnn.speed.pooling import PoolThenActivation


def test_none_is_every_switch_off_and_the_default_evaluates_through_forward():
    assert not any(getattr(Speed.none(), f.name) for f in fields(Speed))
    assert Speed().onednn_evaluation is False
    with pytest.raises(AttributeError):  # frozen: a run's settings are fixed once chosen
        Speed().channels_last = False


def test_speed_none_trains_the_network_as_written():
    module = KerasRecipeModule("mnist_cnn_small", seed=0, speed=Speed.none())
    written = lightning_cnn.build_model("mnist_cnn_small", seed=0)
    assert repr(module.model) == repr(written)  # no PoolThenActivation, nothing moved
    assert module.memory_format == torch.contiguous_format
    assert not isinstance(module, PlainAttributeFastPath)
    assert not any(isinstance(m, PlainAttributeFastPath) for m in module.modules())
    optimizer = module.configure_optimizers()
    assert not optimizer.defaults["fused"]


def test_default_speed_applies_each_network_and_module_trick():
    module = KerasRecipeModule("mnist_cnn_small", seed=0)
    assert sum(isinstance(m, PoolThenActivation) for m in module.model.modules()) == 2
    assert module.memory_format == torch.channels_last
    assert isinstance(module, PlainAttributeFastPath) and isinstance(module.train_metrics.acc, PlainAttributeFastPath)
    assert module.configure_optimizers().defaults["fused"]
    # An MLP has no convolution: NHWC would only cost a copy before its Flatten.
    assert KerasRecipeModule("mnist_mlp_128_64", seed=0).memory_format == torch.contiguous_format


def test_the_tricks_change_no_logits_and_no_gradients():
    """Same weights, same images: the default and ``Speed.none()`` agree to float32 rounding. NHWC convolutions sum
    in another order: seen here 3.3e-7 of the largest logit and 1.4e-6 of the largest gradient element; 1e-5 of
    the largest value leaves margin for other CPUs, while a misplaced ReLU or layout moves values by a large
    fraction of themselves."""
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 10
    results = []
    for speed in (Speed(), Speed.none()):
        module = KerasRecipeModule("mnist_cnn_small", seed=0, speed=speed)
        logits = module(x)
        torch.nn.functional.cross_entropy(logits, y).backward()
        results.append((logits.detach(), [p.grad for p in module.parameters()]))
    (fast, fast_grads), (plain, plain_grads) = results
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-5 * plain.abs().max().item())
    for a, b in zip(fast_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * b.abs().max().item())


def test_a_fast_module_pickles_and_copies_as_its_own_class():
    module = KerasRecipeModule("mnist_cnn_small", seed=0)
    for clone in (pickle.loads(pickle.dumps(module)), copy.deepcopy(module)):
        assert type(clone).__name__ == "KerasRecipeModule" and isinstance(clone, KerasRecipeModule)
        assert isinstance(clone, PlainAttributeFastPath)
        assert clone.state_dict().keys() == module.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(clone.state_dict().values(), module.state_dict().values()))


def test_checkpoints_do_not_carry_the_speed_settings():
    module = KerasRecipeModule("mnist_cnn_small", seed=0, speed=Speed.none())
    assert "speed" not in module.hparams
