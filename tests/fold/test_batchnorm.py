import pytest
import torch
import torch.nn as nn

from fxcompress.fold.batchnorm import bn_scale_shift, fold_batchnorms, fold_bn_into
from fxcompress.graph.tracing import trace


def _randomise(bn):
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    return bn.eval()


@pytest.mark.parametrize("layer,bn,x", [
    (nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), torch.randn(2, 3, 9, 9)),
    (nn.Conv2d(4, 8, 3, groups=4, bias=False), nn.BatchNorm2d(8), torch.randn(2, 4, 9, 9)),
    (nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5), torch.randn(2, 3, 11)),
    (nn.Linear(6, 7), nn.BatchNorm1d(7), torch.randn(4, 6)),
    (nn.ConvTranspose2d(3, 6, 3, stride=2), nn.BatchNorm2d(6), torch.randn(2, 3, 5, 5)),
])
def test_fold_bn_into_is_exact(layer, bn, x):
    torch.manual_seed(0)
    layer.eval()
    _randomise(bn)
    with torch.no_grad():
        expected = bn(layer(x))
        fold_bn_into(layer, bn)
        got = layer(x)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_bn_scale_shift_matches_module():
    bn = _randomise(nn.BatchNorm2d(4))
    scale, shift = bn_scale_shift(bn)
    y = torch.randn(3, 4, 2, 2)
    assert torch.allclose(bn(y), y * scale.float().view(1, -1, 1, 1) + shift.float().view(1, -1, 1, 1), atol=1e-6)


def test_channel_mismatch_is_rejected():
    with pytest.raises(ValueError, match="channels"):
        fold_bn_into(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(4))


class Branchy(nn.Module):
    """conv1 -> bn1 is foldable; conv2's output is also used raw, so bn2 must stay."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv2(self.bn1(self.conv1(x)))
        return self.bn2(y) + y


def test_fold_batchnorms_skips_shared_outputs():
    m = Branchy().eval()
    _randomise(m.bn1), _randomise(m.bn2)
    gm = trace(m)
    x = torch.randn(2, 3, 8, 8)
    expected = m(x)
    folded, skipped = fold_batchnorms(gm)
    gm.recompile()
    assert folded == ["bn1"]
    assert len(skipped) == 1 and skipped[0].startswith("bn2")
    assert not hasattr(gm, "bn1") and hasattr(gm, "bn2")
    assert torch.allclose(gm(x), expected, atol=1e-5)
