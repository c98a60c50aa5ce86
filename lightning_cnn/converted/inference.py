"""The fast CPU inference copy of a twin: BN folded, convolutions fused with what follows them, in oneDNN.

TensorFlow's graph optimizer (grappler's remapper) folds inference-mode BN into the preceding convolution and
runs conv + bias + activation (and + residual add) as one oneDNN primitive; eager PyTorch runs each of them as a
separate pass over the activations, and at one thread and batch < 16 sends 1x1 convolutions (and at batch 1 most
3x3 ones) to its slow im2col kernel instead of oneDNN. ``prepare_for_inference`` does on a copy of the twin's fx
graph what grappler does: each 2-D convolution becomes one ``OneDNNConv2d`` call of oneDNN's fused convolution
(``torch.ops.mkldnn._convolution_pointwise``, the kernel ``torch.compile`` emits on CPU) with its weight reordered
into oneDNN's blocked layout once per input size, the BN that only normalizes its output folded into it, the
activation and the residual ``Add`` that consume it fused as oneDNN post-ops, the zero padding before it taken
into the kernel's own padding where symmetric; activations stay channels-last (NHWC, Keras's layout) from the
first convolution on. A stride-1 1x1 convolution, and a Dense layer with its activation, run as one matrix product
instead (``Conv1x1AsMatmul``, ``OneDNNLinear``: oneDNN's linear call or ``addmm``, see ``_Matmul``), and an
activation, padding or pooling the twin repeats on the same tensor runs once. A strided 1x1 pooling reads the
tensor under the paddings and crops before it (``StridedSample``); a max pooling is shifted maxima
(``SeparableMaxPool2d``).
A BN that cannot be folded (after a concatenation, DenseNet's pre-activation BN) becomes one multiply-add, with
the ReLU after it done in place.

The copy is built from the weights as they are now (prepare again after training), for eval only (a folded conv
cannot use batch statistics), for float32 on the CPU (``onednn=False`` or a machine without oneDNN: BN folded
and channels-last weights only, which also runs on a GPU). The training twin itself is never changed.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..nets import layers
from .vocabulary import HELPERS

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


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference-mode BN as y = x * scale + shift, per channel."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0)
    return scale.detach(), shift.detach()


# The activations the twin writes (call targets, as rules/activations.py emits them) -> oneDNN post-op, scalars,
# algorithm.
POST_OPS = {
    torch.relu: ("relu", [], ""), F.relu: ("relu", [], ""), F.relu6: ("hardtanh", [0.0, 6.0], ""),
    F.silu: ("swish", [], ""), torch.sigmoid: ("sigmoid", [], ""), torch.tanh: ("tanh", [], ""),
    F.hardswish: ("hardswish", [], ""), F.gelu: ("gelu", [], "none"),
}
_NO_POST_OP = ("none", [], "")
# Keyword arguments a call may carry at these values and still be the plain op (torch.fx's tracer writes them out).
ACTIVATION_DEFAULTS = {"inplace": (False,), "approximate": ("none",)}
PAD_DEFAULTS = {"mode": ("constant",), "value": (None, 0, 0.0)}


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _defaults_only(kwargs: dict, defaults: dict) -> bool:
    return all(key in defaults and value in defaults[key] for key, value in kwargs.items())


@dataclass
class _ConvSpec:
    """A 2-D convolution as the rewrite sees it: weight (out, in/groups, kh, kw), bias, symmetric padding."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: list
    dilation: list
    groups: int
    padding: list
    post_op: tuple = _NO_POST_OP


# Activation modules -> the post-op: those a documented model's ``layers.Conv2d`` fuses, and nn.ReLU in a graph.
_MODULE_POST_OPS = {nn.ReLU: POST_OPS[torch.relu], nn.Identity: _NO_POST_OP, nn.Sigmoid: POST_OPS[torch.sigmoid],
                    nn.Tanh: POST_OPS[torch.tanh]}


def _conv_spec(module: nn.Module) -> _ConvSpec | None:
    """The 2-D convolution ``module`` computes, or None if it is not one this rewrite takes: a plain nn.Conv2d,
    or the documented models' ``layers.Conv2d`` with its fused activation (symmetric padding only)."""
    post_op = _NO_POST_OP
    if isinstance(module, layers.Conv2d):
        post_op = _MODULE_POST_OPS.get(type(module.activation))
        if module.same_pad is not None or post_op is None:
            return None
    elif type(module) is not nn.Conv2d:
        return None
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        return None
    return _ConvSpec(module.weight.detach(), None if module.bias is None else module.bias.detach(),
                     list(module.stride), list(module.dilation), module.groups, list(module.padding), post_op)


class _ConvLeafTracer(fx.Tracer):
    """torch.fx's tracer, keeping as one module call every nn.Conv2d subclass (``layers.Conv2d``) and the helper
    modules a model.py copies from ``lightning_cnn.nets.layers`` (``SamePad`` computes its pads from the input's size,
    which a trace cannot follow)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, nn.Conv2d) or type(module).__name__ in HELPERS or \
            super().is_leaf_module(module, qualified_name)


def as_graph_module(model: nn.Module) -> fx.GraphModule:
    """``model`` itself if it is a GraphModule (a twin), else an fx trace of an eval-mode copy."""
    if isinstance(model, fx.GraphModule):
        return model
    model = copy.deepcopy(model).eval()
    return fx.GraphModule(model, _ConvLeafTracer().trace(model), type(model).__name__)


class _ReorderedWeight(nn.Module):
    """A module whose weight oneDNN takes in a layout of its own, picked from the input's size: one reordered copy,
    for the last size seen (a weight reordered for another size ran 40x slower here: 1x1 conv on 3x3 inputs).
    Copies (``copy.deepcopy``, pickling) leave it out: oneDNN's tensors have no storage to copy, and the copy
    reorders again on its first call."""

    def __init__(self):
        super().__init__()
        self._reordered = (None, None)  # (the size it was reordered for, the weight in oneDNN's layout)

    def __getstate__(self):
        return {**super().__getstate__(), "_reordered": (None, None)}

    def _reordered_for(self, size, reorder) -> torch.Tensor:
        seen, weight = self._reordered
        if seen != size:
            weight = reorder()
            self._reordered = (size, weight)
        return weight


class OneDNNConv2d(_ReorderedWeight):
    """One oneDNN convolution with its weight pre-reordered, bias (BN folded in), and fused post-ops:
    ``post_op(conv(x) [+ other])``. Inputs: float32 CPU tensors, NCHW or channels-last; output channels-last."""

    def __init__(self, spec: _ConvSpec, add: bool = False):
        super().__init__()
        self.stride, self.dilation, self.groups, self.padding = spec.stride, spec.dilation, spec.groups, spec.padding
        self.kernel_size = list(spec.weight.shape[2:])
        self.add, self.post_op = add, spec.post_op
        self.register_buffer("weight", spec.weight.contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", None if spec.bias is None else spec.bias.contiguous())

    def forward(self, x, other=None):
        x = x.contiguous(memory_format=torch.channels_last)
        weight = self._reordered_for(x.shape[1:], lambda: torch.ops.mkldnn._reorder_convolution_weight(
            self.weight, self.padding, self.stride, self.dilation, self.groups, [1, *x.shape[1:]]))
        attr, scalars, algorithm = self.post_op
        if other is None:
            return torch.ops.mkldnn._convolution_pointwise(x, weight, self.bias, self.padding, self.stride,
                                                           self.dilation, self.groups, attr, scalars, algorithm)
        if attr == "none":  # the binary op takes "no unary post-op" as None
            attr, algorithm = None, None
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other.contiguous(memory_format=torch.channels_last), weight, self.bias, self.padding, self.stride,
            self.dilation, self.groups, "add", None, attr, scalars, algorithm)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"groups={self.groups}, post_ops={(['add'] if self.add else []) + [self.post_op[0]]}")


# oneDNN post-op -> the same activation applied in place to a matmul's output (``_Matmul``).
_IN_PLACE = {"none": lambda y, scalars: y, "relu": lambda y, scalars: y.relu_(),
             "hardtanh": lambda y, scalars: y.clamp_(*scalars), "swish": lambda y, scalars: F.silu(y, inplace=True),
             "sigmoid": lambda y, scalars: y.sigmoid_(), "tanh": lambda y, scalars: y.tanh_(),
             "hardswish": lambda y, scalars: F.hardswish(y, inplace=True), "gelu": lambda y, scalars: F.gelu(y)}


MATMUL_BELOW = 2 ** 20
NARROW_ROWS = 1024  # from this many rows, a product with a width not a multiple of 8 goes to oneDNN at any size


class _Matmul(_ReorderedWeight):
    """``post_op(rows @ weight.T + bias [+ other])`` for 2-D float32 CPU rows, ``weight`` (out, in) a buffer of the
    subclass. From ``MATMUL_BELOW`` multiply-adds up, one call of oneDNN's fused linear (``mkldnn._linear_pointwise``;
    with ``other`` the add fused, the post-op then in place) on the weight reordered once per row count
    (``_ReorderedWeight``; unreordered, oneDNN reorders it on every call: 157 against 92 us for 9x512 by 512x2048).
    ``torch.mm``/``F.linear`` go to MKL, whose float32 GEMM runs AVX2 code on AMD CPUs (105-112 GFLOP/s against
    oneDNN's 150-250 on this AVX-512 EPYC, 1 thread). Below it ``addmm`` then the post-op in place: oneDNN's call has
    a fixed cost of ~12-15 us (9x176 by 176x176: 10 us against 14 us), except for many rows of a width that is not a
    multiple of 8 (``NARROW_ROWS``), where MKL's edge code is slow: NASNetMobile's 4608x11 by 11x11, 114 us against
    23 us (1152x22 by 22x22: 22 against 19; 576x11 by 11x11, 15 against 12.5, stays)."""

    post_op: tuple

    def _matrix(self) -> torch.Tensor:
        return self.weight.view(self.weight.shape[0], -1)

    def matmul(self, rows: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        attr, scalars, algorithm = self.post_op
        matrix = self._matrix()
        (m, k), n = rows.shape, matrix.shape[0]
        if m * n * k < MATMUL_BELOW and (m < NARROW_ROWS or (n % 8 == 0 and k % 8 == 0)):
            y = torch.mm(rows, matrix.t()) if self.bias is None else torch.addmm(self.bias, rows, matrix.t())
            return _IN_PLACE[attr](y if other is None else y.add_(other), scalars)
        packed = self._reordered_for(m, lambda: torch.ops.mkldnn._reorder_linear_weight(matrix, m))
        if other is None:
            return torch.ops.mkldnn._linear_pointwise(rows, packed, self.bias, attr, scalars, algorithm)
        return _IN_PLACE[attr](torch.ops.mkldnn._linear_pointwise.binary(rows, other, packed, self.bias, "add"),
                               scalars)


class Conv1x1AsMatmul(OneDNNConv2d, _Matmul):
    """A 1x1, stride-1, unpadded, ungrouped convolution on channels-last input, which is one matrix product
    (N*H*W, C_in) x (C_in, C_out) + bias (``_Matmul``): oneDNN's convolution call costs ~60-100 us more than its
    linear call (it makes its primitive descriptor again each call), as much as the product itself on
    NASNetMobile's 72x176 by 176x176 pointwise convolutions."""

    @staticmethod
    def takes(spec: _ConvSpec) -> bool:
        return spec.weight.shape[2:] == (1, 1) and spec.stride == [1, 1] and spec.padding == [0, 0] and \
            spec.groups == 1

    def forward(self, x, other=None):
        n, _, h, w = x.shape
        rows = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(n * h * w, -1)
        if other is not None:
            other = other.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(n * h * w, -1)
        return self.matmul(rows, other).view(n, h, w, -1).permute(0, 3, 1, 2)


def _fused_conv(spec: _ConvSpec, add: bool = False) -> OneDNNConv2d:
    return (Conv1x1AsMatmul if Conv1x1AsMatmul.takes(spec) else OneDNNConv2d)(spec, add)


class OneDNNLinear(_Matmul):
    """A Dense layer (nn.Linear) and the activation after it as one ``_Matmul`` on the last axis of an input of any
    rank."""

    def __init__(self, linear: nn.Linear, post_op: tuple):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().contiguous())
        self.post_op = post_op

    def forward(self, x):
        return self.matmul(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1)

    def extra_repr(self):
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, post_op={self.post_op[0]}"


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


class StridedSample(nn.Module):
    """A 1x1 pooling with a stride (Keras's ``AveragePooling2D((1, 1), strides=2)``) of a zero-padded or cropped
    tensor: every s-th pixel of the unpadded tensor, as a strided view, copied into zeros where samples fall in the
    padding. NASNet's adjust blocks pad, crop and then pool a whole activation to keep a quarter of it: three
    passes over it (2.5, 2 and 1 ms at batch 32, 32x47x47) become one copy of the quarter."""

    def __init__(self, pads, stride):
        super().__init__()
        self.pads, self.stride = tuple(pads), tuple(stride)  # pads in F.pad's order, (left, right, top, bottom)

    def forward(self, x):
        take, place, shape = [slice(None)] * 4, [slice(None)] * 4, list(x.shape[:2])
        for dim, before, after, step in ((2, *self.pads[2:], self.stride[0]), (3, *self.pads[:2], self.stride[1])):
            size = x.shape[dim]
            out = (size + before + after - 1) // step + 1
            first = max(0, -(-before // step))  # the first output that samples the tensor, not its padding
            last = min(out - 1, (size - 1 + before) // step)
            count = max(0, last - first + 1)
            start = first * step - before
            take[dim], place[dim] = slice(start, start + count * step, step), slice(first, first + count)
            shape.append(out)
        sample = x[tuple(take)]
        if list(sample.shape) == shape:
            return sample.contiguous(memory_format=torch.channels_last)
        y = x.new_zeros(shape).contiguous(memory_format=torch.channels_last)
        y[tuple(place)] = sample
        return y

    def extra_repr(self):
        return f"pads={self.pads}, stride={self.stride}"


class SeparableMaxPool2d(nn.Module):
    """k x k max pooling without padding (``same``: Keras's 'same', padding -inf first), as the maximum over k
    column-shifted strided views and then over k row-shifted views of that: 2(k-1) elementwise maxima, exact.
    torch's channels-last max pooling also computes argmax indices it never returns: 2-6x slower up to 128
    channels (11x49x49 at batch 32: 2.1 ms against 0.35; 64x49x49 at batch 8: 0.40 against 0.22), so more channels
    keep it."""

    def __init__(self, kernel_size, stride, same: bool = False):
        super().__init__()
        self.kernel_size, self.stride, self.same = tuple(kernel_size), tuple(stride), same

    def forward(self, x):
        if self.same:
            x = F.pad(x, layers.tf_same_pads(x.shape[2:], self.kernel_size, self.stride, (1, 1)), value=-math.inf)
        if x.shape[1] > 128:
            return F.max_pool2d(x, self.kernel_size, self.stride)
        for dim, k, step in ((3, self.kernel_size[1], self.stride[1]), (2, self.kernel_size[0], self.stride[0])):
            out = (x.shape[dim] - k) // step + 1
            shifted = [x.narrow(dim, offset, (out - 1) * step + 1) for offset in range(k)]
            if step > 1:
                shifted = [t[:, :, ::step] if dim == 2 else t[:, :, :, ::step] for t in shifted]
            if k > 1:
                y = torch.maximum(shifted[0], shifted[1])
                for t in shifted[2:]:
                    torch.maximum(y, t, out=y)
                x = y
            else:
                x = shifted[0]
        return x

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, same={self.same}"


# Modules without weights whose output depends only on their input and settings (``_Rewriter.share_repeated``).
_STATELESS = (nn.ZeroPad2d, nn.ReLU, nn.AvgPool2d, nn.MaxPool2d)


class _Rewriter:
    """Rewrites an eval-mode copy of a twin in place: 2-D convolutions into ``OneDNNConv2d``, the BNs left into
    ``ScaleShift``, Dense layers into ``OneDNNLinear``, poolings into ``StridedSample``/``SeparableMaxPool2d``.
    Each node is looked at once, in graph order."""

    def __init__(self, gm: fx.GraphModule):
        self.gm, self.graph = gm, gm.graph
        self.modules = dict(gm.named_modules())
        self.count = 0
        self.erased: set[fx.Node] = set()

    def _module(self, node) -> nn.Module | None:
        return self.modules.get(node.target) if isinstance(node, fx.Node) and node.op == "call_module" else None

    def _only_user(self, node) -> fx.Node | None:
        return next(iter(node.users)) if len(node.users) == 1 else None

    def _post_op(self, node) -> tuple | None:
        """The oneDNN post-op for the activation ``node`` applies to its one input, or None."""
        if node is None or len(node.args) != 1 or not _defaults_only(node.kwargs, ACTIVATION_DEFAULTS):
            return None
        if node.op == "call_module":
            post_op = _MODULE_POST_OPS.get(type(self._module(node)))
            return None if post_op == _NO_POST_OP else post_op
        return POST_OPS.get(node.target) if node.op == "call_function" else None

    def _is_add(self, node) -> bool:
        return (node is not None and node.op == "call_function" and node.target in (operator.add, torch.add)
                and len(node.args) == 2 and not node.kwargs and all(isinstance(a, fx.Node) for a in node.args)
                and node.args[0] is not node.args[1])

    def _erase(self, node) -> None:
        self.graph.erase_node(node)
        self.erased.add(node)

    def _absorb(self, node, into) -> None:
        """Removes ``node`` (a one-input op now done by ``into``'s module) from the graph."""
        node.replace_all_uses_with(into)
        self._erase(node)

    def _replace(self, node, module: nn.Module, args: tuple) -> None:
        """Puts a call of ``module`` where ``node`` is, and removes ``node``."""
        self.count += 1
        name = f"onednn_{self.count}"
        self.gm.add_module(name, module)
        with self.graph.inserting_before(node):
            new = self.graph.call_module(name, args)
        node.replace_all_uses_with(new)
        self._erase(node)

    def _fold_bn(self, spec: _ConvSpec, node) -> bool:
        bn = self._module(node)
        if type(bn) is not nn.BatchNorm2d or not bn.track_running_stats:
            return False
        scale, shift = _bn_scale_shift(bn)
        spec.weight = spec.weight * scale.reshape(-1, 1, 1, 1)
        spec.bias = shift if spec.bias is None else spec.bias * scale + shift
        return True

    def _zero_pads(self, node) -> list | None:
        """The 2-D pads (F.pad's order; negative: a crop) of ``node`` when it is a zero padding, else None."""
        pad = self._module(node)
        if type(pad) is nn.ZeroPad2d:
            pads = list(pad.padding)
        elif isinstance(node, fx.Node) and node.op == "call_function" and node.target is F.pad and \
                _defaults_only(node.kwargs, PAD_DEFAULTS) and len(node.args) == 2:
            pads = list(node.args[1])
        else:
            return None
        return pads if len(pads) == 4 else None

    def _take_padding(self, spec: _ConvSpec, node) -> fx.Node:
        """The conv's input; a symmetric zero padding before it (its only use) goes into the kernel's padding."""
        source = node.args[0]
        pads = self._zero_pads(source)
        if pads is None or len(source.users) != 1 or min(pads) < 0 or pads[0] != pads[1] or pads[2] != pads[3]:
            return source
        spec.padding = [spec.padding[0] + pads[2], spec.padding[1] + pads[0]]
        return source.args[0]

    def _unpadded(self, node) -> tuple[fx.Node, list]:
        """The tensor under a chain of zero paddings and crops ending at ``node``, and their net pads: a padding
        followed by anything adds up side by side (a crop first and a padding after would not, so the chain stops
        at a crop that something else pads)."""
        total, source = [0, 0, 0, 0], node
        while (pads := self._zero_pads(source)) is not None and (source is node or min(pads) >= 0):
            total = [a + b for a, b in zip(total, pads)]
            source = source.args[0]
        return source, total

    def pool(self, node, pool: nn.Module) -> None:
        """A 1x1 pooling with a stride reads every s-th pixel of the tensor under its paddings (``StridedSample``);
        a max pooling without padding, or a Keras 'same' one, is taken as shifted maxima (``SeparableMaxPool2d``)."""
        if type(pool).__name__ == "SamePool":
            if pool.kind == "max" and len(pool.kernel_size) == 2:
                self._replace(node, SeparableMaxPool2d(pool.kernel_size, pool.stride, same=True), (node.args[0],))
            return
        kernel, stride, padding = (_pair(v) for v in (pool.kernel_size, pool.stride, pool.padding))
        if padding != (0, 0) or pool.ceil_mode or getattr(pool, "divisor_override", None) is not None or \
                _pair(getattr(pool, "dilation", 1)) != (1, 1) or getattr(pool, "return_indices", False):
            return
        if kernel == (1, 1):
            source, pads = self._unpadded(node.args[0])
            self._replace(node, StridedSample(pads, stride), (source,))
        elif type(pool) is nn.MaxPool2d:
            self._replace(node, SeparableMaxPool2d(kernel, stride), (node.args[0],))

    def conv(self, node, spec: _ConvSpec) -> None:
        x = self._take_padding(spec, node)
        if spec.post_op == _NO_POST_OP and self._fold_bn(spec, self._only_user(node)):
            self._absorb(self._only_user(node), node)
        post_op = self._post_op(self._only_user(node)) if spec.post_op == _NO_POST_OP else None
        if post_op is not None:
            spec.post_op = post_op
            self._absorb(self._only_user(node), node)
            self._replace(node, _fused_conv(spec), (x,))
            return
        add = self._only_user(node)
        if spec.post_op != _NO_POST_OP or not self._is_add(add):
            self._replace(node, _fused_conv(spec), (x,))
            return
        other = add.args[1] if add.args[0] is node else add.args[0]
        after = self._post_op(self._only_user(add))
        if after is not None:
            spec.post_op = after
            self._absorb(self._only_user(add), add)
        self._replace(add, _fused_conv(spec, add=True), (x, other))
        self._erase(node)

    def lone_bn(self, node, bn: nn.BatchNorm2d) -> None:
        scale, shift = _bn_scale_shift(bn)
        after = self._only_user(node)
        relu = self._post_op(after) == POST_OPS[torch.relu]
        if relu:
            self._absorb(after, node)
        self._replace(node, ScaleShift(scale, shift, relu), (node.args[0],))

    def linear(self, node, linear: nn.Linear) -> None:
        post_op = self._post_op(self._only_user(node))
        if post_op is not None:
            self._absorb(self._only_user(node), node)
        self._replace(node, OneDNNLinear(linear, post_op or _NO_POST_OP), (node.args[0],))

    def share_repeated(self) -> None:
        """One call where the twin repeats the same activation, zero padding or pooling of the same tensor:
        NASNetMobile's separable-conv branches each start with their own ReLU of the cell's input (64 of its 112
        ReLUs are repeats), and it average-pools the same input twice in each cell."""
        seen: dict = {}
        for node in list(self.graph.nodes):
            module = self._module(node)
            if node.op == "call_function" and (node.target in POST_OPS or node.target is F.pad):
                key = (node.target, node.args, tuple(sorted(node.kwargs.items())))
            elif type(module) in _STATELESS and not node.kwargs:
                settings = sorted((k, v) for k, v in vars(module).items() if not k.startswith("_") and k != "training")
                key = (type(module), tuple(settings), node.args)
            else:
                continue
            if key in seen:
                node.replace_all_uses_with(seen[key])
                self.graph.erase_node(node)
            else:
                seen[key] = node

    def run(self) -> None:
        self.share_repeated()
        for node in list(self.graph.nodes):
            if node in self.erased or node.op != "call_module" or len(node.args) != 1 or node.kwargs:
                continue
            module = self._module(node)
            spec = _conv_spec(module)
            if spec is not None:
                self.conv(node, spec)
            elif type(module) is nn.BatchNorm2d and module.track_running_stats:
                self.lone_bn(node, module)
            elif type(module) is nn.Linear:
                self.linear(node, module)
            elif type(module) in (nn.MaxPool2d, nn.AvgPool2d) or type(module).__name__ == "SamePool":
                self.pool(node, module)
        self.graph.eliminate_dead_code()
        self.graph.lint()
        self.gm.delete_all_unused_submodules()
        self.gm.recompile()


def onednn_available(twin: nn.Module) -> bool:
    """Whether the oneDNN copy can be made: torch built with oneDNN, every weight float32 on the CPU."""
    return torch.backends.mkldnn.is_available() and all(
        t.device.type == "cpu" and t.dtype == torch.float32 for t in [*twin.parameters(), *twin.buffers()]
        if t.is_floating_point())


def prepare_for_inference(model: nn.Module, channels_last: bool = True, onednn: bool | None = None
                          ) -> fx.GraphModule:
    """The fast inference copy of ``model`` (see the module docstring): a twin, or any module ``torch.fx`` can
    trace (a converted folder's ``model.py``); ``onednn`` None: wherever it can be made.

    Inputs stay as the model takes them (NCHW images); outputs equal its own up to float32 summation order.
    """
    twin = as_graph_module(model)
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
