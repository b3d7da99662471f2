"""Adaptive pools export whatever torch's exporter can read of their input's size: a plain pool where the
windows divide the input, an averaging matrix per spatial dim where they do not (timm's bat_resnext26ts,
csatv2); for INT8, a mean over H and W runs as the global average pool it is."""
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxcompress
from fxcompress.ops.pooling import _averaging_matrix
from fxcompress.passes import ExportONNX, QuantizeINT8
from fxcompress.quant.emulate import IntegerEmulation


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


class SqueezeExcite(nn.Module):
    """fbnetv3's SE: the squeeze is `x.mean((2, 3), keepdim=True)`; the head pools with `x.mean([-2, -1])`."""

    def __init__(self):
        super().__init__()
        self.stem, self.reduce, self.expand = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = x * torch.sigmoid(self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return self.head(x.mean([-2, -1]))


def test_spatial_means_run_in_int8_as_global_average_pools(tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    calib = [(torch.randn(8, 3, 12, 12, generator=g), torch.zeros(8)) for _ in range(3)]
    held = [(torch.randn(8, 3, 12, 12, generator=g), torch.zeros(8))]
    path = tmp_path / "se.onnx"
    result = fxcompress.compile(SqueezeExcite().eval(), [QuantizeINT8(), ExportONNX(str(path))],
                                torch.randn(2, 3, 12, 12), calib_loader=calib, val_loader=held, progress=False)
    quant, export = result.report.records[0].metrics, result.report.records[-1].metrics
    assert len(quant["decomposed"]) == 2
    assert not any(n.target in ("mean", torch.mean) for n in result.model.graph.nodes)
    emulated = [m.kind for m in result.model.modules() if isinstance(m, IntegerEmulation)]
    assert emulated.count("global_average_pool") == 2
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("GlobalAveragePool") == 2 and "ReduceMean" not in ops
    assert export["max_code_step"] <= 1
