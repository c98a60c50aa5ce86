"""Evaluation on CPU in oneDNN's own tensor layout: the same network, faster to validate, test and predict.

Opt-in (``Speed(onednn_evaluation=True)``): by default reported metrics come from ``forward`` itself.

Eager PyTorch hands each convolution to oneDNN in PyTorch's layout, so every call reorders the weights into
oneDNN's blocked layout and the activations in and out of it. ``onednn_forward`` reorders the weights once and keeps
the activations in oneDNN's layout (``Tensor.to_mkldnn``) from the input to the ``Flatten``; the dense layers after
it run as they are. Same kernels, same float32 arithmetic up to summation order (tests: within 1e-5 of the
largest eager logit).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..nets import layers


class OneDNNForward:
    """A float32 CPU inference copy of a network, built from its weights as they are now.

    Calling it after the weights have changed gives the old network's outputs: rebuild it for each evaluation
    (``KerasRecipeModule`` with ``Speed(onednn_evaluation=True)`` does, at the start of every validation, test and
    predict epoch). An input it cannot take (not float32 on the CPU, or under autocast) goes to ``fallback``.
    """

    def __init__(self, feature_steps: list[Callable], head: list[nn.Module], fallback: Callable):
        self.feature_steps, self.head, self.fallback = feature_steps, head, fallback

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            return self.fallback(x)
        x = x.to_mkldnn()
        for step in self.feature_steps:
            x = step(x)
        x = x.to_dense()
        for layer in self.head:
            x = layer(x)
        return x


def _conv_step(conv: nn.Conv2d) -> Callable | None:
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return None
    if isinstance(conv, layers.Conv2d) and conv.same_pad is not None:
        return None  # TensorFlow's asymmetric 'same' padding is a separate F.pad in eager mode
    settings = (conv.padding, conv.stride, conv.dilation, conv.groups)
    weight = torch._C._nn.mkldnn_reorder_conv2d_weight(conv.weight.detach().to_mkldnn(), *settings)
    bias = None if conv.bias is None else conv.bias.detach()
    return lambda x: torch.mkldnn_convolution(x, weight, bias, *settings)


def _pool_step(pool: nn.MaxPool2d) -> Callable | None:
    if pool.ceil_mode or pool.return_indices or pool.dilation not in (1, (1, 1)):
        return None
    return lambda x: torch.max_pool2d(x, pool.kernel_size, pool.stride, pool.padding)


# Layer kinds the oneDNN part can take, each mapped to its step (None: this instance can't be taken).
_ELEMENTWISE = (nn.ReLU, nn.Identity, nn.Dropout)  # Dropout is the identity in evaluation
_STEP_BUILDERS = {nn.Conv2d: _conv_step, nn.MaxPool2d: _pool_step}


def _feature_steps(layer: nn.Module, steps: list) -> bool:
    """Appends ``layer``'s steps; False if some part of it has no oneDNN step."""
    if isinstance(layer, nn.Sequential):
        return all(_feature_steps(child, steps) for child in layer)
    if isinstance(layer, _ELEMENTWISE):
        if isinstance(layer, nn.ReLU):
            steps.append(torch.relu)
        return True
    builder = next((b for kind, b in _STEP_BUILDERS.items() if isinstance(layer, kind)), None)
    step = builder(layer) if builder else None
    if step is None:
        return False
    steps.append(step)
    if isinstance(layer, layers.Conv2d):  # Conv2D(..., activation=...): the activation is fused in the layer
        return _feature_steps(layer.activation, steps)
    return True


def onednn_forward(model: nn.Sequential, fallback: Callable | None = None) -> OneDNNForward | None:
    """The oneDNN inference copy of ``model``, or None where it can't be made or would not help; inputs the copy
    cannot take go to ``fallback`` (default: ``model`` itself).

    Taken: convolutions (symmetric padding), max-pools, ReLU, dropout, up to the first ``Flatten``, float32 on
    CPU. None: a model in training mode (the copy would skip its dropout), no convolution to speed up, another
    layer kind before the ``Flatten`` (e.g. sigmoid), or weights that are not float32 on the CPU.
    """
    if model.training or not torch.backends.mkldnn.is_available():
        return None
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        return None
    children = list(model)
    cut = next((i for i, layer in enumerate(children) if isinstance(layer, nn.Flatten)), None)
    if cut is None or not any(isinstance(m, nn.Conv2d) for layer in children[:cut] for m in layer.modules()):
        return None
    steps: list = []  # the weights are detached where they are reordered, so no autograd is involved
    if not all(_feature_steps(layer, steps) for layer in children[:cut]):
        return None
    return OneDNNForward(steps, children[cut:], model if fallback is None else fallback)
