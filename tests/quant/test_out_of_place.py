"""In-place adds (csatv2's `x.add_(y)`) are rewritten out of place before INT8: the same function, and the
add's integer emulation reads its inputs as they were (in place, it read x + y as x: every code off)."""
import operator

import torch
import torch.nn as nn

import fxcompress
from fxcompress.graph.tracing import trace
from fxcompress.passes import ExportONNX, QuantizeINT8
from fxcompress.quant.out_of_place import out_of_place_arithmetic


class InPlaceResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h.add_(torch.relu(self.b(x)))   # written into h
        h = h + 0.5 * h                 # reads the written h
        return self.c(h)


def test_rewritten_out_of_place_is_the_same_function():
    model, x = InPlaceResidual().eval(), torch.randn(2, 3, 8, 8)
    gm = trace(model)
    assert out_of_place_arithmetic(gm) == ["add_"]
    assert not any(n.target in ("add_", operator.iadd) for n in gm.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))


def test_an_in_place_add_passes_the_int8_check(tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 3, 8, 8, generator=g) for _ in range(3)]
    result = fxcompress.compile(InPlaceResidual().eval(), [QuantizeINT8(progress=False),
                                                           ExportONNX(str(tmp_path / "m.onnx"))],
                                (calib[0],), calib_loader=calib, val_loader=calib[:1], progress=False)
    assert result.report.records[-1].metrics["max_code_step"] <= 1
    assert len(result.report.records[0].metrics["out_of_place"]) == 1
