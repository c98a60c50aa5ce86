"""The oneDNN inference copy (``prepare_for_inference`` / ``Speed.inference_model``) computes what the network does.

TF-free: small stock-module networks with every pattern the rewrite fuses (conv -> BN -> activation, conv -> BN
-> residual add -> ReLU, a lone BN -> ReLU after a concatenation, symmetric zero padding taken into the conv,
depthwise conv -> relu6, silu; Dense -> ReLU; 1x1 convolutions as one matrix product; a repeated ReLU or pooling
of one tensor run once) and a documented model. Tolerance: max |copy - network| <= 1e-5 x the largest
|output| (float32: folding BN and fusing post-ops only changes rounding, ~1e-7 relative per layer; a wrong fold,
padding or layout is O(1)). The acceptance models are checked against Keras in parity_tests.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from lightning_cnn.converted import inference, prepare_for_inference
from lightning_cnn.converted.inference import OneDNNConv2d, OneDNNLinear, ScaleShift
from lightning_cnn.speed import Speed

RTOL = 1e-5  # relative to the largest |output|; see the module docstring

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


class Patterns(nn.Module):
    """One of each pattern, in the stock modules and functions a converted twin is made of."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d(1)
        self.stem = nn.Conv2d(3, 8, 3, stride=2)
        self.stem_bn = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(8)
        self.project = nn.Conv2d(8, 8, 1)
        self.project_bn = nn.BatchNorm2d(8)
        self.concat_bn = nn.BatchNorm2d(16)
        self.expand = nn.Conv2d(16, 12, 3, padding=1)
        self.hidden = nn.Linear(12, 12)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(self.pad(x))))
        y = F.relu6(self.depthwise_bn(self.depthwise(x)))
        x = torch.relu(self.project_bn(self.project(y)) + x)
        x = torch.relu(self.concat_bn(torch.cat([x, y], 1)))
        x = F.silu(self.expand(x))
        return self.head(torch.relu(self.hidden(x.mean((2, 3)))))


def _randomized(model: nn.Module) -> nn.Module:
    """Seeded weights and BN statistics away from 0/1, so a BN folded wrongly shows."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.5 if tensor.dim() == 1
                             else torch.randn(tensor.shape, generator=generator) * 0.3)
    return model.eval()


def assert_close(expected: torch.Tensor, got: torch.Tensor):
    scale = expected.abs().max()
    assert scale > 1e-3, "outputs are ~0: the comparison would prove nothing"
    assert (got - expected).abs().max() <= RTOL * scale


@pytest.fixture(scope="module")
def twin():
    return _randomized(fx.symbolic_trace(Patterns()))


@pytest.fixture(params=["addmm", "onednn"])
def matmul_path(request, monkeypatch):
    """Each matrix product of the copy as it runs for these small sizes (addmm), then all of them through oneDNN's
    linear, the path larger products take (``MATMUL_BELOW`` 0)."""
    if request.param == "onednn":
        monkeypatch.setattr(inference, "MATMUL_BELOW", 0)
    return request.param


def test_every_pattern_is_fused_and_matches(twin, matmul_path):
    fast = prepare_for_inference(twin)
    modules = list(fast.modules())
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.ZeroPad2d, nn.Linear)) for m in modules)
    assert sorted(m.post_op[0] for m in modules if isinstance(m, OneDNNLinear)) == ["none", "relu"]
    convs = [m for m in modules if isinstance(m, OneDNNConv2d)]
    post_ops = sorted((m.add, m.post_op[0]) for m in convs)
    assert post_ops == [(False, "hardtanh"), (False, "relu"), (False, "swish"), (True, "relu")]
    assert [m.padding for m in convs][0] == [1, 1]  # the ZeroPad2d went into the stem's own padding
    assert sum(isinstance(m, ScaleShift) and m.relu for m in modules) == 1  # the BN after the concatenation
    for shape in ((1, 3, 17, 17), (3, 3, 32, 24), (1, 3, 17, 17)):  # a new size reorders the weights again
        x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.inference_mode():
            assert_close(twin(x), fast(x))
    with torch.inference_mode():  # a copy that has run (holding oneDNN-layout weights) can still be copied
        assert_close(twin(x), copy.deepcopy(fast)(x))
    assert all(isinstance(m, nn.BatchNorm2d) for m in (twin.stem_bn, twin.concat_bn))  # the twin is unchanged
    assert twin.stem.weight.is_contiguous()


def test_plain_module_and_switch(twin):
    """model.py is a plain nn.Module: traced, then the same rewrite; Speed(inference_copy=False) keeps the model."""
    plain = _randomized(Patterns())
    fast = Speed().inference_model(plain)
    assert any(isinstance(m, OneDNNConv2d) for m in fast.modules())
    x = torch.randn(2, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert_close(plain(x), fast(x))
    assert Speed(inference_copy=False).inference_model(plain) is plain
    assert Speed().inference_model(plain.double()) is plain  # not float32: nothing to fuse in oneDNN


def test_documented_model_prediction_copy_matches():
    """lightning-cnn-predict's default: the documented CNN's layers.Conv2d(activation="relu") become fused calls."""
    from lightning_cnn.nets.models import build_model

    torch.manual_seed(0)
    model = build_model("mnist_cnn_small").eval()
    fast = Speed().inference_model(model)
    assert any(isinstance(m, OneDNNConv2d) and m.post_op[0] == "relu" for m in fast.modules())
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert_close(model(x), fast(x))


class Branches(nn.Module):
    """NASNet's shape of cell: branches that each repeat the ReLU (and pooling) of the same input, 1x1
    convolutions with each kind of post-op, and 1x1 ones that are not a plain matrix product."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pool_a, self.pool_b = nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.AvgPool2d(3, 1, 1)
        self.pool_c = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.relu6 = nn.Conv2d(8, 8, 1)
        self.relu6_bn = nn.BatchNorm2d(8)
        self.silu = nn.Conv2d(8, 8, 1, bias=False)
        self.plain = nn.Conv2d(8, 8, 1)
        self.strided = nn.Conv2d(8, 8, 1, stride=2)
        self.padded = nn.Conv2d(8, 8, 1, padding=1)

    def forward(self, x):
        x = self.stem(x)
        a = F.relu6(self.relu6_bn(self.relu6(torch.relu(x))))
        b = F.silu(self.silu(torch.relu(x)))
        c = self.plain(self.pool_a(x)) + self.pool_c(x) + self.pool_b(x)
        return torch.cat([a, b, c], 1), self.strided(torch.relu(a)), self.padded(b)


def test_repeated_calls_shared_and_1x1_as_matmul(matmul_path):
    """The repeated ReLU and the repeated pooling (same settings) run once, the pooling with other settings
    stays; stride-1 unpadded 1x1 convolutions are one matrix product (addmm when small, oneDNN's linear otherwise)
    with their post-op (or residual add then post-op); the others stay oneDNN convolutions."""
    from lightning_cnn.converted.inference import Conv1x1AsMatmul

    model = _randomized(fx.symbolic_trace(Branches()))
    fast = prepare_for_inference(model)
    relus = [n for n in fast.graph.nodes if n.target is torch.relu]
    assert len(relus) == 2  # relu(x) once for both branches, relu(a)
    assert sum(isinstance(m, nn.AvgPool2d) for m in fast.modules()) == 2
    matmuls = sorted((m.add, m.post_op[0]) for m in fast.modules() if isinstance(m, Conv1x1AsMatmul))
    assert matmuls == [(False, "hardtanh"), (False, "swish"), (True, "none")]
    assert sum(type(m) is OneDNNConv2d for m in fast.modules()) == 3  # stem, strided, padded
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        for expected, got in zip(model(x), fast(x)):
            assert_close(expected, got)


def test_dense_on_a_sequence_acts_on_the_last_axis(matmul_path):
    """Keras's Dense on a rank-3 input (a sequence model's head) applies to the last axis; so does its copy."""
    dense = _randomized(nn.Linear(6, 4))
    fast = OneDNNLinear(dense, ("relu", [], ""))
    x = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        assert_close(torch.relu(dense(x)), fast(x))
    assert fast(x).shape == (2, 3, 4)


class Pools(nn.Module):
    """NASNet's adjust block (pad, crop, then a 1x1 pooling with stride 2), other paddings under strided 1x1
    poolings, max poolings with and without Keras's 'same' padding, and a max pooling too wide to rewrite."""

    def __init__(self):
        super().__init__()
        from lightning_cnn.nets.layers import SamePool

        self.pad_end = nn.ZeroPad2d((0, 1, 0, 1))
        self.sample2, self.sample3 = nn.AvgPool2d(1, 2), nn.MaxPool2d(1, 3)
        self.max3s2, self.max2, self.max32 = nn.MaxPool2d(3, 2), nn.MaxPool2d(2), nn.MaxPool2d((3, 2), (1, 2))
        self.same_max = SamePool("max", (3, 3), (2, 2))

    def forward(self, x):
        adjusted = self.sample2(F.pad(self.pad_end(x), (-1, 0, -1, 0)))  # Keras: ZeroPadding2D -> Cropping2D
        padded = self.sample3(F.pad(x, (2, 1, 0, 3)))
        cropped = self.sample2(F.pad(x, (-1, -2, -3, 0)))
        wide = self.max3s2(torch.cat([x] * 30, 1))  # 150 channels: torch's own max pooling is kept
        return (adjusted, padded, cropped, self.max3s2(x), self.max2(x), self.max32(x), self.same_max(x), wide)


def test_strided_samples_and_max_poolings_equal_torchs():
    """1x1 strided poolings read the unpadded tensor (the paddings and crops under them gone from the graph) and
    max poolings are shifted maxima: both exactly torch's result (a max and a 1x1 average round nothing), on odd and
    even sizes, with a NaN propagated as max pooling propagates it."""
    from lightning_cnn.converted.inference import SeparableMaxPool2d, StridedSample

    model = Pools().eval()  # traced as model.py is: SamePool stays one call
    fast = prepare_for_inference(model)
    assert sum(isinstance(m, StridedSample) for m in fast.modules()) == 3
    assert sum(isinstance(m, SeparableMaxPool2d) for m in fast.modules()) == 5  # the wide one calls torch at run time
    assert not any(n.target is F.pad or isinstance(fast.get_submodule(n.target) if n.op == "call_module" else None,
                                                   nn.ZeroPad2d) for n in fast.graph.nodes)
    for shape in ((2, 5, 11, 11), (1, 5, 12, 10), (3, 5, 7, 16)):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
        x[0, 1, 3, 4] = float("nan")
        with torch.inference_mode():
            outputs = list(zip(model(x), fast(x)))
        for expected, got in outputs:
            assert expected.shape == got.shape
            assert torch.equal(expected.isnan(), got.isnan())
            assert torch.equal(expected.nan_to_num(), got.nan_to_num())
        assert sum(bool(expected.isnan().any()) for expected, _ in outputs) >= 5  # every max pooling saw the NaN
