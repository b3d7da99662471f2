"""Small hand-written models, one per channel coupling the pruning passes must handle (shared by tests)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def cbr(cin, cout, k=3, stride=1, groups=1, dilation=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding=dilation * (k // 2), groups=groups,
                                   dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Head(nn.Module):
    def __init__(self, c, classes=5):
        super().__init__()
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ResidualProjection(nn.Module):
    """Two residual blocks, the second with a strided 1x1 projection: add couples both branches."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.a1, self.a2 = cbr(8, 12), nn.Sequential(nn.Conv2d(12, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.b1 = cbr(8, 16, stride=2)
        self.b2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.proj = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.head = Head(16)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.a2(self.a1(x)))
        x = F.relu(self.proj(x) + self.b2(self.b1(x)))
        return self.head(x)


class ConcatBranches(nn.Module):
    """Inception-style: three branches concatenated, then a conv reads the concat."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.b1, self.b2 = cbr(8, 6, k=1), nn.Sequential(cbr(8, 4, k=1), cbr(4, 10, dilation=2))
        self.b3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), cbr(8, 5, k=1))
        self.mix = cbr(21, 12)
        self.head = Head(12)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.b1(x), self.b2(x), self.b3(x)], 1)
        return self.head(self.mix(x))


def channel_shuffle(x, groups: int):
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(b, c, h, w)


class ShuffleBlocks(nn.Module):
    """ShuffleNetV2-style: chunk into halves, one half through a depthwise branch, concat, shuffle."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.branches = nn.ModuleList([nn.Sequential(cbr(8, 8, k=1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                                                     nn.BatchNorm2d(8), cbr(8, 8, k=1)) for _ in range(2)])
        self.head = Head(16)

    def forward(self, x):
        x = self.stem(x)
        for branch in self.branches:
            a, b = x.chunk(2, dim=1)
            x = channel_shuffle(torch.cat([a, branch(b)], 1), 2)
        return self.head(x)


class DepthwiseSeparable(nn.Module):
    """MobileNet-style inverted residual with a depthwise conv (and a depthwise x2 multiplier)."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.expand, self.dw = cbr(8, 24, k=1), cbr(24, 24, groups=24)
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.dw2 = nn.Conv2d(8, 16, 3, padding=1, groups=8)  # channel multiplier 2
        self.head = Head(16)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        return self.head(F.relu6(self.dw2(x)))


class GroupedConv(nn.Module):
    """ResNeXt-style grouped 3x3 conv between 1x1 convs, plus a GroupNorm."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.reduce = cbr(8, 16, k=1)
        self.grouped = cbr(16, 16, groups=4)
        self.expand = nn.Sequential(nn.Conv2d(16, 12, 1), nn.GroupNorm(3, 12), nn.ReLU())
        self.head = Head(12)

    def forward(self, x):
        return self.head(self.expand(self.grouped(self.reduce(self.stem(x)))))


class SEGate(nn.Module):
    """Squeeze-excitation: a sigmoid gate (B, C, 1, 1) multiplies the feature map (broadcast)."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = cbr(3, 8), cbr(8, 16)
        self.fc1, self.fc2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.head = Head(16)

    def forward(self, x):
        x = self.conv(self.stem(x))
        gate = torch.sigmoid(self.fc2(F.silu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.head(x * gate)


class FlattenLinear(nn.Module):
    """conv -> flatten with spatial size 4x4 -> linear: channel c owns 16 input columns of fc1."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(cbr(3, 8), nn.MaxPool2d(2), cbr(8, 12), nn.AdaptiveAvgPool2d(4))
        self.fc1, self.fc2 = nn.Linear(12 * 16, 20), nn.Linear(20, 5)

    def forward(self, x):
        x = self.features(x).view(x.size(0), -1)
        return self.fc2(F.relu(self.fc1(x)))


class Decoder(nn.Module):
    """U-Net-style: strided encoder, conv-transpose upsampling, skip concat, per-pixel output."""

    def __init__(self):
        super().__init__()
        self.enc1, self.enc2 = cbr(3, 8), cbr(8, 16, stride=2)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec = cbr(16, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        s = self.enc1(x)
        y = F.relu(self.up(self.enc2(s)))
        return self.out(self.dec(torch.cat([y, s], 1)))


class SharedModule(nn.Module):
    """The same conv (and its weights) used twice: both call sites prune the same channels."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.mid = cbr(8, 12)
        self.head = Head(12)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.shared(x))
        x = F.relu(self.shared(x))
        return self.head(self.mid(x))


class MultiOutput(nn.Module):
    """Two outputs: logits and a feature map; output widths stay, inner channels may go."""

    def __init__(self):
        super().__init__()
        self.stem, self.body = cbr(3, 8), cbr(8, 12)
        self.feat = nn.Conv2d(12, 6, 1)
        self.head = Head(12)

    def forward(self, x):
        x = self.body(self.stem(x))
        return self.head(x), self.feat(x)


class FunctionalConv(nn.Module):
    """F.conv2d / F.linear with weights held as plain parameters (get_attr nodes), one depthwise."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
        self.b1 = nn.Parameter(torch.randn(8) * 0.1)
        self.w_dw = nn.Parameter(torch.randn(8, 1, 3, 3) * 0.3)
        self.w2 = nn.Parameter(torch.randn(12, 8, 1, 1) * 0.3)
        self.fc_w = nn.Parameter(torch.randn(5, 12) * 0.3)

    def forward(self, x):
        x = F.relu(F.conv2d(x, self.w1, self.b1, 1, 1))
        x = F.relu(F.conv2d(x, self.w_dw, None, 1, 1, 1, 8))
        x = F.relu(F.conv2d(x, self.w2))
        return F.linear(x.mean((2, 3)), self.fc_w)


class TinyAttention(nn.Module):
    """A transformer block with nn.MultiheadAttention, LayerNorms and an MLP (tokens B, N, C)."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, dim))
        self.fc = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        x = x + self.mlp(self.ln2(x))
        return self.fc(x.mean(1))


class ChannelsLast(nn.Module):
    """ConvNeXt-style block: depthwise conv, permute to channels-last, MLP, layer scale, permute back."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.dw = nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.pw1, self.pw2 = nn.Linear(16, 48), nn.Linear(48, 16)
        self.scale = nn.Parameter(torch.full((16, 1, 1), 0.5))
        self.head = Head(16)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(y))).permute(0, 3, 1, 2)
        return self.head(x + self.scale * y)


COUPLING_MODELS = {
    "residual_projection": ResidualProjection, "concat_branches": ConcatBranches, "shuffle": ShuffleBlocks,
    "depthwise_separable": DepthwiseSeparable, "grouped_conv": GroupedConv, "se_gate": SEGate,
    "flatten_linear": FlattenLinear, "decoder_skip_concat": Decoder, "shared_module": SharedModule,
    "multi_output": MultiOutput, "functional_conv": FunctionalConv, "attention": TinyAttention,
    "channels_last": ChannelsLast,
}


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affines, so that zeroed and removed channels really differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            for name, p in m.named_parameters(recurse=False):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


class SliceSplitReshape(nn.Module):
    """Constants baked into the graph: slice bounds, split sizes, a reshape to a fixed width."""

    def __init__(self):
        super().__init__()
        self.stem, self.a = cbr(3, 8), cbr(8, 12)
        self.b, self.c = cbr(5, 6), cbr(7, 6)
        self.fc = nn.Linear(6 * 2 * 2 + 4, 5)

    def forward(self, x):
        y = self.a(self.stem(x))
        p, q = torch.split(y, [5, 7], dim=1)
        z = self.b(p) + self.c(q)
        z = F.adaptive_avg_pool2d(z, 2).reshape(-1, 24)
        return self.fc(torch.cat([z, y[:, 1:5].mean((2, 3))], 1))


COUPLING_MODELS["slice_split_reshape"] = SliceSplitReshape
