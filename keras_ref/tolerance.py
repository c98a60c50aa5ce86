"""The one tolerance rule for "the twin computes what the Keras model computes" (forward outputs, float32).

    max |Keras - twin|  <=  FACTOR * max |twin - twin in float64|  +  atol * max(1, max |Keras output|)

Why this rule and not a fixed tolerance: both frameworks run the same graph in float32 and sum in different
orders, so they disagree by their float32 rounding errors, and those grow with depth and with how the model's
weights amplify them (a random-weight EfficientNetV2-L is 100% off its own float64 run in Keras itself; a trained
MobileNet is 1e-7 off). The twin in float64 is the float64 reference of the graph: on every ``keras.applications``
model it matches Keras run in float64 (``keras.config.set_floatx('float64')``, same weights) within ~1e-12 of the
largest output (docs/parity.md). So ``max |twin - twin in float64|`` is the twin's own float32 error e_t, Keras's
is e_k, and a correct conversion gives ``max |Keras - twin| <= e_k + e_t``. Measured e_k / e_t: 1.05 to 1.7
(InceptionV3, EfficientNetV2B0-B3, random and calibrated BatchNorm statistics), so FACTOR = 4 leaves e_k room up
to 3 e_t. A conversion mistake (layout, padding, epsilon, weight order) moves the twin in float32 and float64
alike, so it shows in ``|Keras - twin|`` but not in e_t: it fails unless it is below 4x float32 rounding, where it
cannot be told from rounding anyway. ``atol`` (default 1e-6, relative to max(1, the largest output), ~8 float32
ulps) is the floor for graphs whose float32 and float64 runs agree exactly (no summation: pads, pools, reshapes).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

FACTOR = 4.0
ATOL = 1e-6
RULE = "max_abs_diff <= 4 * twin_float32_error + atol * max(1, max_abs_output)"


def tolerance(twin_float32_error: float, max_abs_output: float, atol: float = ATOL) -> float:
    """The largest max |Keras - twin| the rule accepts for one output."""
    return FACTOR * twin_float32_error + atol * max(1.0, max_abs_output)


def within(report: dict, atol: float = ATOL) -> bool:
    """Whether one output's report (``max_abs_diff``, ``twin_float32_error``, ``max_abs_output``) passes."""
    return report["max_abs_diff"] <= tolerance(report["twin_float32_error"], report["max_abs_output"], atol)


def float64_twin(twin, shifted_grouped_convs: bool = True):
    """A float64 copy of the twin (the module itself is untouched), in eval mode.

    ``shifted_grouped_convs``: every grouped nn.Conv2d (depthwise, separable) of the copy computed by
    ShiftedGroupedConv2d, the same sums in another order; CPU float64 has no grouped kernel and makes one call
    per group (NASNetMobile: 15,549 calls, 90% of its float64 run). False: the stock modules."""
    exact = copy.deepcopy(twin).double().eval()
    if shifted_grouped_convs:
        for name, module in list(exact.named_modules()):
            if ShiftedGroupedConv2d.applies_to(module):
                exact.set_submodule(name, ShiftedGroupedConv2d(module))
    return exact


class ShiftedGroupedConv2d(torch.nn.Module):
    """A grouped nn.Conv2d as one multiply-add per kernel offset over the whole batch and every group.

    Each output is the same sum of the same products as the convolution's, added in another order (float64:
    ~1e-16 relative, far below the float32 error it is the reference for)."""

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        self.conv = conv

    @staticmethod
    def applies_to(module) -> bool:
        return (type(module) is torch.nn.Conv2d and module.groups > 1 and module.padding_mode == "zeros"
                and not isinstance(module.padding, str))

    def forward(self, x):
        conv = self.conv
        (ph, pw), (sh, sw), (dh, dw), (kh, kw) = conv.padding, conv.stride, conv.dilation, conv.kernel_size
        x = F.pad(x, (pw, pw, ph, ph))
        n, channels, h, w = x.shape
        groups = conv.groups
        cin, cout = channels // groups, conv.out_channels // groups
        ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
        x = x.view(n, groups, cin, h, w)
        weight = conv.weight.view(groups, cout, cin, kh, kw)
        out = x.new_zeros(n, groups, cout, ho, wo)
        for i in range(kh):
            for j in range(kw):
                patch = x[..., i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
                if cin == 1:  # depthwise: an elementwise multiply-add
                    out.addcmul_(patch, weight[:, :, :, i, j].view(1, groups, cout, 1, 1))
                else:
                    out += torch.einsum("gdc,ngchw->ngdhw", weight[:, :, :, i, j], patch)
        out = out.view(n, groups * cout, ho, wo)
        return out if conv.bias is None else out + conv.bias.view(1, -1, 1, 1)


def float64_inputs(inputs: list) -> list:
    """Floating inputs as float64 (integer ids stay integers)."""
    return [x.double() if x.is_floating_point() else x for x in inputs]


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))
