import pytest
import torch
import torch.nn as nn
import torchvision

from fxcompress.graph.macs import count_macs
from fxcompress.models import get_model
from fxcompress.graph.tracing import propagate_shapes, trace


def macs_of(model, shape):
    gm = trace(model.eval())
    propagate_shapes(gm, (torch.randn(*shape),))
    return count_macs(gm)


# torchvision's published figures (its "GFLOPS" column counts multiply-accumulates)
@pytest.mark.parametrize("name,published", [
    ("resnet50", 4.09e9), ("resnet18", 1.81e9), ("mobilenet_v2", 0.30e9), ("mobilenet_v3_small", 0.06e9),
    ("densenet121", 2.83e9), ("efficientnet_b0", 0.39e9), ("regnet_x_400mf", 0.41e9),
    ("convnext_tiny", 4.46e9), ("vit_b_16", 17.56e9), ("swin_t", 4.49e9),
])
def test_torchvision_macs_match_published(name, published):
    result = macs_of(torchvision.models.get_model(name, weights=None), (1, 3, 224, 224))
    tol = 0.02 if published > 0.2e9 else 0.1  # published small figures are rounded to 2 digits
    assert abs(result.macs - published) / published < tol, result.macs


def test_resnet50_params_exact():
    assert macs_of(torchvision.models.resnet50(), (1, 3, 224, 224)).params == 25_557_032


@pytest.mark.parametrize("name,macs", [("resnet20", 40.8e6), ("resnet56", 125.5e6), ("resnet110", 253.0e6)])
def test_cifar_resnet_macs(name, macs):
    assert abs(macs_of(get_model(name), (1, 3, 32, 32)).macs - macs) / macs < 0.01


def test_rules_count_functional_and_attention_ops():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 4, 3, 3))
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x, tokens):
            y = nn.functional.conv2d(x, self.w, padding=1)             # 8*4*9 per output pixel
            a, _ = self.attn(tokens, tokens, tokens)
            return y, a @ tokens.transpose(1, 2)

    x, tokens = torch.randn(1, 4, 5, 5), torch.randn(1, 6, 16)
    gm = trace(M())
    propagate_shapes(gm, (x, tokens))
    result = count_macs(gm)
    conv = 8 * 25 * 4 * 9
    attn = 3 * 6 * 16 * 16 + 2 * 6 * 6 * 16 + 6 * 16 * 16
    matmul = 6 * 6 * 16
    assert result.macs == conv + attn + matmul
