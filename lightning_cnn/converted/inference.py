"""A faster inference copy of a twin: BatchNormalization folded into the convolution before it.

TensorFlow's graph optimizer folds inference-mode BN into the preceding convolution; eager PyTorch runs BN as a
separate pass over the activations. ``fuse_for_inference`` does the same folding on a copy of the twin's fx graph
(weights as they are now: refold after training). The result is for eval only: in training mode BN would use batch
statistics, which a folded conv cannot.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from .ops import BatchNorm, Conv


def _calls(graph: fx.Graph, target: str) -> int:
    return sum(1 for n in graph.nodes if n.op == "call_module" and n.target == target)


def fuse_for_inference(twin: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``twin`` (eval mode) where each BN that only normalizes one conv's output is folded into it."""
    fused = copy.deepcopy(twin).eval()
    modules = dict(fused.named_modules())
    for node in list(fused.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), BatchNorm):
            continue
        source = node.args[0]
        if source.op != "call_module" or len(source.users) != 1 or not isinstance(modules.get(source.target), Conv):
            continue
        conv, bn = modules[source.target], modules[node.target]
        channel_dim = 1 if conv.config["rank"] == 2 else 2
        if (conv.config["activation"] != "linear" or bn.config["dim"] != channel_dim or
                _calls(fused.graph, source.target) != 1 or _calls(fused.graph, node.target) != 1):
            continue
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var + bn.config["eps"])
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0)
            bias = shift if conv.bias is None else conv.bias * scale + shift
            conv.weight.copy_(conv.weight * scale.reshape(-1, *[1] * (conv.weight.dim() - 1)))
            conv.bias = nn.Parameter(bias.clone())
        node.replace_all_uses_with(source)
        fused.graph.erase_node(node)
        fused.delete_submodule(node.target)
    fused.graph.lint()
    fused.recompile()
    return fused
