"""Canonical forms: timm's norm+activation layers and 'SAME' convolutions become standard layers, exactly,
sharing their tensors, in eval and in training mode; a wrong rule is caught."""
import pytest
import torch
import torch.nn as nn
import timm.layers

import fxcompress
from fxcompress.core.errors import VerificationError
from fxcompress.graph.capture import capture
from fxcompress.ops.registry import CANONICAL
from fxcompress.passes import ChannelGroups, ExportONNX, FoldBatchNorm, MagnitudePrune


class TimmBlock(nn.Module):
    def __init__(self, stride=2):
        super().__init__()
        self.conv1 = timm.layers.Conv2dSame(3, 8, 3, stride=stride, bias=False)
        self.bn1 = timm.layers.BatchNormAct2d(8, act_layer=nn.SiLU)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = timm.layers.BatchNormAct2d(8, act_layer=nn.ReLU)
        self.head = nn.Linear(8, 5)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2):
                bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)

    def forward(self, x):
        return self.head(self.bn2(self.conv2(self.bn1(self.conv1(x)))).mean((2, 3)))


@pytest.mark.parametrize("size", [16, 15])   # stride 2: uneven 'SAME' padding at 16, even at 15
def test_norm_act_and_same_conv_become_standard_layers_exactly(size):
    model, x = TimmBlock().eval(), torch.randn(2, 3, size, size)
    gm, info = capture(model, (x,))
    assert info["canonicalized"] == {"Conv2dSame": 1, "BatchNormAct2d": 2}
    kinds = [type(gm.get_submodule(n.target)) for n in gm.graph.nodes if n.op == "call_module"]
    uneven = [nn.ZeroPad2d] if size == 16 else []
    assert kinds == uneven + [nn.Conv2d, nn.BatchNorm2d, nn.SiLU, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Linear]
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-6)
    assert gm.get_submodule("bn1").weight is model.bn1.weight and gm.get_submodule("conv1").weight is model.conv1.weight
    assert type(model.bn1) is timm.layers.BatchNormAct2d and type(model.conv1) is timm.layers.Conv2dSame


def test_training_mode_still_uses_batch_statistics():
    """Traced through, BatchNormAct2d's `self.training` would be frozen at eval: the canonical BatchNorm2d
    follows train() like the layer does."""
    model, x = TimmBlock().eval(), torch.randn(4, 3, 16, 16)
    gm, _ = capture(model, (x,))
    reference = TimmBlock()
    reference.load_state_dict(model.state_dict())
    torch.testing.assert_close(gm.train()(x), reference.train()(x))
    torch.testing.assert_close(gm.get_submodule("bn1").running_mean, reference.bn1.running_mean)


def test_pruned_folded_and_exported(tmp_path):
    model, x = TimmBlock().eval(), torch.randn(1, 3, 16, 16)
    result = fxcompress.compile(model, [ChannelGroups(), MagnitudePrune(0.5), FoldBatchNorm(),
                                        ExportONNX(str(tmp_path / "m.onnx"))], x, progress=False)
    prune, fold = result.report.records[1], result.report.records[2]
    assert prune.params_after < prune.params_before and fold.metrics["folded"] == 2
    assert any(isinstance(m, nn.SiLU) for m in result.model.modules())   # the activation survives folding


class Doubled(nn.BatchNorm2d):
    def forward(self, x):
        return 2 * super().forward(x)


def test_a_wrong_canonical_form_is_caught():
    CANONICAL.register(Doubled, rule=lambda m, shape: [(None, nn.BatchNorm2d(m.num_features).eval())])
    try:
        model = nn.Sequential(nn.Conv2d(3, 4, 1), Doubled(4)).eval()
        with pytest.raises(VerificationError, match="canonical forms"):
            capture(model, (torch.randn(1, 3, 4, 4),))
    finally:
        del CANONICAL.modules[Doubled]


class StandardizedBlock(nn.Module):
    """NF-ResNet style: weight-standardized convs (one scaled with a learnable gain, one 'SAME'-padded), no
    normalisation layer, a residual add."""

    def __init__(self):
        super().__init__()
        self.stem = timm.layers.ScaledStdConv2d(3, 16, 3, padding=1, gain_init=1.0)
        self.body = timm.layers.StdConv2d(16, 16, 3, padding=1, bias=True)
        self.down = timm.layers.ScaledStdConv2dSame(16, 24, 3, stride=2)
        self.head = nn.Linear(24, 5)
        with torch.no_grad():
            self.stem.gain.uniform_(0.5, 2.0)   # distinct per-filter gains: a wrong gain shows

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.body(x))
        return self.head(self.down(x).mean((2, 3)))


def test_weight_standardized_convs_become_plain_convs_exactly():
    model, x = StandardizedBlock().eval(), torch.randn(2, 3, 16, 16)
    gm, info = capture(model, (x,))
    assert info["canonicalized"] == {"ScaledStdConv2d": 1, "StdConv2d": 1, "ScaledStdConv2dSame": 1}
    convs = [gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module"
             and isinstance(gm.get_submodule(n.target), nn.Conv2d)]
    assert [type(c) for c in convs] == [nn.Conv2d] * 3
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-6)
    # each filter of the new weight is the standardized one: zero mean, unit variance times gain x scale
    stem = gm.get_submodule("stem").weight.detach().flatten(1)
    gain = (model.stem.gain * model.stem.scale).detach().flatten()
    torch.testing.assert_close(stem.mean(1), torch.zeros(16), atol=1e-6, rtol=0)
    # (eps=1e-6 against a filter variance of about 0.01: 1e-4 relative)
    torch.testing.assert_close(stem.var(1, unbiased=False), gain ** 2, rtol=1e-3, atol=0)
    assert gm.get_submodule("body").bias is model.body.bias   # the bias is shared, the weight is new
    assert type(model.stem) is timm.layers.ScaledStdConv2d   # the user's model is untouched


def test_weight_standardized_convs_prune_their_input_channels_exactly(tmp_path):
    model, x = StandardizedBlock().eval(), torch.randn(2, 3, 16, 16)
    result = fxcompress.compile(model, [ChannelGroups(), MagnitudePrune(0.5), ExportONNX(str(tmp_path / "m.onnx"))],
                                x, progress=False)
    convs = [m for m in result.model.modules() if isinstance(m, nn.Conv2d)]
    # the residual stream (stem's and body's outputs) is halved, so body's and down's inputs are too
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 8), (8, 8), (8, 12)]
