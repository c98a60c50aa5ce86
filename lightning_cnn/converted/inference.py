"""A faster inference copy of a twin: BN folded into the convolution before it, weights in channels-last order.

TensorFlow's graph optimizer folds inference-mode BN into the preceding convolution; eager PyTorch runs BN as a
separate pass over the activations. ``fuse_for_inference`` does the same folding on a copy of the twin's fx graph.
``prepare_for_inference`` also stores the 4-D conv weights channels-last: oneDNN then keeps the activations in
NHWC from the first convolution on (torch follows the weight's memory format), instead of reordering NCHW
activations in and out of its own layout at every convolution. Both are copies built from the weights as they are
now (prepare again after training), for eval only: in training mode BN would use batch statistics, which a
folded conv cannot. The training twin itself is never changed.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONV_BN = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))


def _calls(graph: fx.Graph, target: str) -> int:
    return sum(1 for n in graph.nodes if n.op == "call_module" and n.target == target)


def fuse_for_inference(twin: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``twin`` (eval mode) where each BN that only normalizes one conv's output is folded into it."""
    fused = copy.deepcopy(twin).eval()
    modules = dict(fused.named_modules())
    for node in list(fused.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        source = node.args[0] if node.args else None
        if bn is None or not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) != 1:
            continue
        conv = modules.get(source.target)
        if not any(type(conv) is c and type(bn) is b for c, b in _CONV_BN) or not bn.track_running_stats or \
                _calls(fused.graph, source.target) != 1 or _calls(fused.graph, node.target) != 1:
            continue
        folded = fuse_conv_bn_eval(conv, bn)
        for parameter in folded.parameters():
            parameter.requires_grad_(False)
        fused.add_submodule(source.target, folded)
        node.replace_all_uses_with(source)
        fused.graph.erase_node(node)
        fused.delete_submodule(node.target)
    fused.graph.lint()
    fused.recompile()
    return fused


def prepare_for_inference(twin: fx.GraphModule, channels_last: bool = True) -> fx.GraphModule:
    """The fast CPU inference copy of ``twin``: BN folded (``fuse_for_inference``), 4-D weights channels-last.

    Inputs stay as the twin takes them (NCHW images); outputs equal the twin's up to float32 summation order.
    """
    fused = fuse_for_inference(twin)
    return fused.to(memory_format=torch.channels_last) if channels_last else fused
