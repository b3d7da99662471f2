"""Small models for the ResRep tests: a residual net on digits (1x8x8) and its channel analysis."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from fxcompress.core.context import PassContext
from fxcompress.graph.tracing import trace
from fxcompress.passes import ChannelGroups

X = torch.randn(2, 1, 8, 8)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


class ResNetDigits(nn.Module):
    """stem -> two residual blocks (one residual group of 3 producers) -> linear head."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.Sequential(Block(c), Block(c))
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def analysed(model: nn.Module, x: torch.Tensor = X):
    """(traced graph, its ChannelGroups result)."""
    gm = trace(model.eval())
    ctx = PassContext(gm, (x,), progress=False)
    return gm, ctx.get(ChannelGroups)
