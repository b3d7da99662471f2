"""The fake-quant model emulates onnxruntime's integer kernels: only true global pools are emulated as
QLinearGlobalAveragePool."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxcompress
from fxcompress.passes import ExportONNX, QuantizeINT8
from fxcompress.quant.emulate import IntegerEmulation


class PaddedPoolOnOnePixel(nn.Module):
    """inception_v3's Mixed_7 branch pool at a small input: avg_pool2d(3, stride 1, padding 1) on a 1x1 map,
    whose output is 1x1 but is x / 9 (count_include_pad), not the global mean x."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.branch = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.branch(F.avg_pool2d(x, 3, stride=1, padding=1)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_padded_pool_with_a_one_pixel_output_is_not_a_global_pool(tmp_path):
    torch.manual_seed(0)
    calib = [(torch.randn(16, 3, 4, 4), torch.zeros(16)) for _ in range(2)]
    held = [(torch.randn(16, 3, 4, 4), torch.zeros(16))]
    result = fxcompress.compile(PaddedPoolOnOnePixel().eval(), [QuantizeINT8(), ExportONNX(str(tmp_path / "m.onnx"))],
                                torch.randn(2, 3, 4, 4), calib_loader=calib, val_loader=held, progress=False)
    emulated = [m.kind for m in result.model.modules() if isinstance(m, IntegerEmulation)]
    assert emulated.count("global_average_pool") == 1    # the adaptive pool only
    export = result.report.records[-1].metrics
    assert export["snr_lower_db"] >= export["snr_lower_required_db"]
