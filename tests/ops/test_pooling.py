"""Adaptive pools export whatever torch's exporter can read of their input's size: a plain pool where the
windows divide the input, an averaging matrix per spatial dim where they do not (timm's bat_resnext26ts,
csatv2)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxcompress
from fxcompress.ops.pooling import _averaging_matrix
from fxcompress.passes import ExportONNX


class PaddedAdaptive(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.conv, self.pool = nn.Conv2d(3, 4, 1), pool

    def forward(self, x):
        y = F.pad(self.conv(x), [1, 1, 1, 1])   # behind a Pad the exporter cannot read the pooled size
        return self.pool(y)


@pytest.mark.parametrize("pool", [
    lambda y: F.adaptive_max_pool2d(y, (8, 1)),          # divides: MaxPool
    lambda y: F.adaptive_max_pool2d(y, (1, 4)),
    nn.AdaptiveAvgPool2d(7),                              # 16 -> 7: uneven windows, averaging matrices
    lambda y: F.adaptive_avg_pool2d(y, (4, 2)),
])
def test_adaptive_pools_export_with_onnxruntime_parity(pool, tmp_path):
    model = PaddedAdaptive(pool if isinstance(pool, nn.Module) else _Lambda(pool)).eval()
    x = torch.randn(1, 3, 14, 14)
    out = fxcompress.compile(model, [ExportONNX(str(tmp_path / "m.onnx"))], x, progress=False)
    assert out.report.records[0].metrics["max_rel_error"] < 1e-4


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def test_averaging_matrix_is_adaptive_average_pooling():
    x = torch.randn(2, 3, 16, 9)
    ref = F.adaptive_avg_pool2d(x, (7, 4))
    got = (x @ _averaging_matrix(9, 4)).transpose(-1, -2) @ _averaging_matrix(16, 7)
    torch.testing.assert_close(got.transpose(-1, -2), ref)
