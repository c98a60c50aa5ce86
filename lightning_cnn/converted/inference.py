"""The fast CPU inference copy of a twin: BN folded, convolutions fused with what follows them, in oneDNN.

TensorFlow's graph optimizer (grappler's remapper) folds inference-mode BN into the preceding convolution and
runs conv + bias + activation (and + residual add) as one oneDNN primitive; eager PyTorch runs each of them as a
separate pass over the activations, and at one thread and batch < 16 sends 1x1 convolutions (and at batch 1 most
3x3 ones) to its slow im2col kernel instead of oneDNN. ``prepare_for_inference`` does on a copy of the twin's fx
graph what grappler does: each 2-D convolution becomes one ``OneDNNConv2d`` call of oneDNN's fused convolution
(``torch.ops.mkldnn._convolution_pointwise``, the kernel ``torch.compile`` emits on CPU) with its weight reordered
once into oneDNN's blocked layout, the BN that only normalizes its output folded into it, the activation and the
residual ``Add`` that consume it fused as oneDNN post-ops, the zero padding before it taken into the kernel's own
padding where symmetric; activations stay channels-last (NHWC, Keras's layout) from the first convolution on.
A BN that cannot be folded (after a concatenation, DenseNet's pre-activation BN) becomes one multiply-add, with
the ReLU after it done in place.

The copy is built from the weights as they are now (prepare again after training), for eval only (a folded conv
cannot use batch statistics), for float32 on the CPU (``onednn=False`` or a machine without oneDNN: BN folded
and channels-last weights only, which also runs on a GPU). The training twin itself is never changed.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from .ops import Activation, BatchNorm, Conv, Merge, Pad2d, SeparableConv, same_pads, symmetric


def _calls(graph: fx.Graph, target: str) -> int:
    return sum(1 for n in graph.nodes if n.op == "call_module" and n.target == target)


def _bn_scale_shift(bn: nn.Module, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference-mode BN as y = x * scale + shift, per channel."""
    scale = torch.rsqrt(bn.running_var + eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0)
    return scale.detach(), shift.detach()


def _eps(bn: nn.Module) -> float:
    return bn.config["eps"] if isinstance(bn, BatchNorm) else bn.eps


def _channel_bn(module: nn.Module) -> bool:
    """A BN over the channels (dim 1) of an NCHW tensor, in eval mode with running statistics."""
    if isinstance(module, BatchNorm):
        return module.config["dim"] in (1, -3)
    return isinstance(module, nn.BatchNorm2d) and module.track_running_stats


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
            scale, shift = _bn_scale_shift(bn, bn.config["eps"])
            bias = shift if conv.bias is None else conv.bias * scale + shift
            conv.weight.copy_(conv.weight * scale.reshape(-1, *[1] * (conv.weight.dim() - 1)))
            conv.bias = nn.Parameter(bias.clone())
        node.replace_all_uses_with(source)
        fused.graph.erase_node(node)
        fused.delete_submodule(node.target)
    fused.graph.lint()
    fused.recompile()
    return fused


# Activation name -> (oneDNN post-op, its scalars, its algorithm); names as the twin's ops write them.
POST_OPS = {
    "relu": ("relu", [], ""), "relu6": ("hardtanh", [0.0, 6.0], ""), "silu": ("swish", [], ""),
    "sigmoid": ("sigmoid", [], ""), "tanh": ("tanh", [], ""), "hard_silu": ("hardswish", [], ""),
    "gelu": ("gelu", [], "none"),
}
_STOCK_ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh",
                      nn.Hardswish: "hard_silu", F.relu: "relu", torch.relu: "relu", F.relu6: "relu6",
                      F.silu: "silu", torch.sigmoid: "sigmoid", torch.tanh: "tanh", F.hardswish: "hard_silu"}


def _activation_name(module_or_fn) -> str | None:
    """The activation a node applies (a key of ``POST_OPS``), or None."""
    if isinstance(module_or_fn, Activation):
        name, kwargs = module_or_fn.config["name"], module_or_fn.config["kwargs"]
        if name == "relu" and kwargs:  # Keras ReLU(max_value=6) is relu6; other arguments are not a post-op
            plain = not kwargs.get("negative_slope") and not kwargs.get("threshold")
            return {None: "relu", 6.0: "relu6", 6: "relu6"}.get(kwargs.get("max_value"), None) if plain else None
        return name if name in POST_OPS and not kwargs else None
    if isinstance(module_or_fn, nn.GELU):
        return "gelu" if module_or_fn.approximate == "none" else None
    try:
        return _STOCK_ACTIVATIONS.get(type(module_or_fn) if isinstance(module_or_fn, nn.Module) else module_or_fn)
    except TypeError:  # an unhashable call target
        return None


@dataclass
class _ConvSpec:
    """A 2-D convolution as the rewrite sees it: weight (out, in/groups, kh, kw), bias, and how it pads."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: list
    dilation: list
    groups: int
    padding: list | None  # symmetric padding the kernel applies; None: TensorFlow's 'same' from the input size
    activation: str = "linear"


def _conv_specs(module: nn.Module) -> list[_ConvSpec] | None:
    """The convolution(s) ``module`` computes, applied one after the other (SeparableConv: depthwise, pointwise),
    or None if it is not a 2-D convolution this rewrite takes."""
    if isinstance(module, SeparableConv):
        inner = [_conv_specs(module.depthwise), _conv_specs(module.pointwise)]
        if None in inner:
            return None
        inner[1][0].activation = module.config["activation"]
        return inner[0] + inner[1]
    if isinstance(module, Conv):
        c = module.config
        if c["rank"] != 2 or c["padding"] not in ("valid", "same"):
            return None
        padding = [0, 0]
        if c["padding"] == "same":  # stride 1: the same pads whatever the size; else from the size at run time
            pads = same_pads([1 << 20] * 2, c["kernel_size"], c["strides"], c["dilation"])
            padding = symmetric(pads) if all(s == 1 for s in c["strides"]) else None
            if padding is None and all(s == 1 for s in c["strides"]):
                return None  # an even kernel at stride 1: asymmetric everywhere; left to the twin's own op
        return [_ConvSpec(module.weight.detach(), None if module.bias is None else module.bias.detach(),
                          list(c["strides"]), list(c["dilation"]), c["groups"], padding, c["activation"])]
    if type(module) is nn.Conv2d and module.padding_mode == "zeros" and not isinstance(module.padding, str):
        return [_ConvSpec(module.weight.detach(), None if module.bias is None else module.bias.detach(),
                          list(module.stride), list(module.dilation), module.groups, list(module.padding))]
    return None


class OneDNNConv2d(nn.Module):
    """One oneDNN convolution with its weight pre-reordered, bias (BN folded in), and fused post-ops:
    ``unary(conv(x) [+ other])``. Inputs: float32 CPU tensors, NCHW or channels-last; output channels-last."""

    def __init__(self, spec: _ConvSpec, add: bool = False, after_add: str = "linear"):
        super().__init__()
        self.stride, self.dilation, self.groups, self.padding = spec.stride, spec.dilation, spec.groups, spec.padding
        self.kernel_size = list(spec.weight.shape[2:])
        self.add = add
        self.unary = POST_OPS.get(after_add if add else spec.activation, ("none", [], ""))
        self.register_buffer("weight", spec.weight.contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", None if spec.bias is None else spec.bias.contiguous())
        self._packed = (None, None)  # (input size it was reordered for, the weight in oneDNN's blocked layout)

    def _packed_weight(self, x: torch.Tensor, padding: list) -> torch.Tensor:
        """The weight reordered for inputs of x's size: oneDNN picks its blocked layout (and kernel) from the
        input's size, and a weight reordered for another size ran 40x slower here (1x1 conv on 3x3 inputs)."""
        size, packed = self._packed
        if size != x.shape[1:]:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, padding, self.stride, self.dilation, self.groups, [1, *x.shape[1:]])
            self._packed = (x.shape[1:], packed)
        return packed

    def forward(self, x, other=None):
        x = x.contiguous(memory_format=torch.channels_last)
        padding = self.padding
        if padding is None:  # TensorFlow's 'same' at stride > 1: the odd pixel at the end when the size needs it
            pads = same_pads(x.shape[2:], self.kernel_size, self.stride, self.dilation)
            padding = symmetric(pads)
            if padding is None:
                x, padding = F.pad(x, pads), [0, 0]
        attr, scalars, algorithm = self.unary
        weight = self._packed_weight(x, padding)
        if other is None:
            return torch.ops.mkldnn._convolution_pointwise(x, weight, self.bias, padding, self.stride,
                                                           self.dilation, self.groups, attr, scalars, algorithm)
        if attr == "none":  # the binary op takes no unary post-op as None
            attr, algorithm = None, None
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other.contiguous(memory_format=torch.channels_last), weight, self.bias, padding, self.stride,
            self.dilation, self.groups, "add", None, attr, scalars, algorithm)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding or 'same'}, "
                f"groups={self.groups}, post_ops={(['add'] if self.add else []) + [self.unary[0]]}")


class ScaleShift(nn.Module):
    """An unfolded inference BN (x * scale + shift per channel), then optionally a ReLU in place."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, relu: bool):
        super().__init__()
        self.register_buffer("scale", scale.reshape(-1, 1, 1).clone())
        self.register_buffer("shift", shift.reshape(-1, 1, 1).clone())
        self.relu = relu

    def forward(self, x):
        y = torch.addcmul(self.shift, x, self.scale)
        return y.relu_() if self.relu else y


class _Rewriter:
    """Rewrites an eval-mode copy of a twin in place: convolutions into ``OneDNNConv2d``, lone BNs into
    ``ScaleShift``. Each node is looked at once, in graph order."""

    def __init__(self, gm: fx.GraphModule):
        self.gm, self.graph = gm, gm.graph
        self.modules = dict(gm.named_modules())
        self.count = 0
        self.erased: set[fx.Node] = set()

    def _module(self, node) -> nn.Module | None:
        return self.modules.get(node.target) if node.op == "call_module" else None

    def _only_user(self, node) -> fx.Node | None:
        return next(iter(node.users)) if len(node.users) == 1 else None

    def _activation_of(self, node) -> str | None:
        if node is None or len(node.args) != 1:
            return None
        if node.op == "call_module":
            return _activation_name(self._module(node))
        return _activation_name(node.target) if node.op == "call_function" and not node.kwargs else None

    def _is_add(self, node) -> bool:
        if node is None or len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in node.args):
            return False
        if node.op == "call_module":
            module = self._module(node)
            return isinstance(module, Merge) and module.config["kind"] == "add"
        return node.op == "call_function" and node.target in (operator.add, torch.add) and not node.kwargs

    def _absorb(self, node, into) -> None:
        """Removes ``node`` (a one-input op now done by ``into``'s module) from the graph."""
        node.replace_all_uses_with(into)
        self._erase(node)

    def _erase(self, node) -> None:
        self.graph.erase_node(node)
        self.erased.add(node)

    def _add_module(self, module: nn.Module) -> str:
        self.count += 1
        name = f"onednn_{self.count}"
        self.gm.add_module(name, module)
        return name

    def _fold_bn(self, spec: _ConvSpec, node) -> bool:
        bn = self._module(node) if node is not None else None
        if bn is None or not _channel_bn(bn):
            return False
        scale, shift = _bn_scale_shift(bn, _eps(bn))
        spec.weight = spec.weight * scale.reshape(-1, 1, 1, 1)
        spec.bias = shift if spec.bias is None else spec.bias * scale + shift
        return True

    def _take_padding(self, spec: _ConvSpec, node) -> fx.Node:
        """The conv's input; a symmetric zero padding before it (its only use) goes into the kernel's padding."""
        source = node.args[0]
        pad = self._module(source) if isinstance(source, fx.Node) else None
        if not isinstance(pad, Pad2d) or len(source.users) != 1 or spec.padding is None:
            return source
        top, bottom, left, right = pad.config["pads"]
        if top != bottom or left != right or min(top, left) < 0:
            return source
        spec.padding = [spec.padding[0] + top, spec.padding[1] + left]
        return source.args[0]

    def conv(self, node, specs: list[_ConvSpec]) -> None:
        x = self._take_padding(specs[0], node)
        last = specs[-1]
        tail = node
        with self.graph.inserting_before(node):
            for spec in specs[:-1]:
                x = self.graph.call_module(self._add_module(OneDNNConv2d(spec)), (x,))
        if last.activation == "linear" and self._fold_bn(last, self._only_user(tail)):
            bn_node = self._only_user(tail)
            self._absorb(bn_node, tail)
        if last.activation == "linear":
            name = self._activation_of(self._only_user(tail))
            if name is not None:
                last.activation = name
                self._absorb(self._only_user(tail), tail)
        add = self._only_user(tail)
        if last.activation == "linear" and self._is_add(add) and add.args[0] is not add.args[1]:
            other = add.args[1] if add.args[0] is tail else add.args[0]
            after = self._only_user(add)
            after_name = self._activation_of(after) or "linear"
            module = OneDNNConv2d(last, add=True, after_add=after_name)
            with self.graph.inserting_before(add):
                fused = self.graph.call_module(self._add_module(module), (x, other))
            if after_name != "linear":
                self._absorb(after, add)
            add.replace_all_uses_with(fused)
            self._erase(add)
            self._erase(node)
            return
        with self.graph.inserting_before(node):
            fused = self.graph.call_module(self._add_module(OneDNNConv2d(last)), (x,))
        node.replace_all_uses_with(fused)
        self._erase(node)

    def lone_bn(self, node, bn: nn.Module) -> None:
        scale, shift = _bn_scale_shift(bn, _eps(bn))
        after = self._only_user(node)
        relu = self._activation_of(after) == "relu"
        with self.graph.inserting_before(node):
            fused = self.graph.call_module(self._add_module(ScaleShift(scale, shift, relu)), (node.args[0],))
        if relu:
            self._absorb(after, node)
        node.replace_all_uses_with(fused)
        self._erase(node)

    def run(self) -> None:
        for node in list(self.graph.nodes):
            if node in self.erased or node.op != "call_module":
                continue
            module = self._module(node)
            specs = _conv_specs(module) if module is not None else None
            if specs is not None:
                self.conv(node, [copy.copy(s) for s in specs])
            elif module is not None and _channel_bn(module) and len(node.args) == 1:
                self.lone_bn(node, module)
        self.graph.eliminate_dead_code()
        self.graph.lint()
        self.gm.delete_all_unused_submodules()
        self.gm.recompile()


def onednn_available(twin: nn.Module) -> bool:
    """Whether the oneDNN copy can be made: torch built with oneDNN, every weight float32 on the CPU."""
    return torch.backends.mkldnn.is_available() and all(
        t.device.type == "cpu" and t.dtype == torch.float32 for t in [*twin.parameters(), *twin.buffers()]
        if t.is_floating_point())


def prepare_for_inference(twin: fx.GraphModule, channels_last: bool = True, onednn: bool | None = None
                          ) -> fx.GraphModule:
    """The fast inference copy of ``twin`` (see the module docstring); ``onednn`` None: wherever it can be made.

    Inputs stay as the twin takes them (NCHW images); outputs equal the twin's up to float32 summation order.
    """
    if onednn is None:
        onednn = onednn_available(twin)
    if not onednn:
        fused = fuse_for_inference(twin)
        return fused.to(memory_format=torch.channels_last) if channels_last else fused
    fast = copy.deepcopy(twin).eval()
    with torch.no_grad():
        _Rewriter(fast).run()
    fast.requires_grad_(False)
    return fast.to(memory_format=torch.channels_last) if channels_last else fast
