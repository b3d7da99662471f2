"""quant/codes.py: which QuantizeLinear of the file belongs to which quantizer call, and the forced comparison."""
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import helper

import fxcompress
from fxcompress.passes import ExportONNX, QuantizeINT8
from fxcompress.quant.codes import _quantizer_call, compare_codes
from fxcompress.quant.fake_quant import ActivationQuantizer


def _q(name, scale):
    return helper.make_node("QuantizeLinear", ["x", scale, "zp"], ["y"], name=name)


@pytest.mark.parametrize("node,quantizers,expected", [
    (_q("/act_quant_a/QuantizeLinear", "act_quant_a.scale"), {"act_quant_a": 1}, ("act_quant_a", 0)),
    # `a_1`: quantizer a's second call or quantizer a_1's first: the scale's name tells
    (_q("/act_quant_a_1/QuantizeLinear", "act_quant_a.scale"), {"act_quant_a": 2, "act_quant_a_1": 1},
     ("act_quant_a", 1)),
    (_q("/act_quant_a_1/QuantizeLinear_1", "act_quant_a_1.scale"), {"act_quant_a": 2, "act_quant_a_1": 1},
     ("act_quant_a_1", 0)),
    # the exporter named a concatenation's scale after an equal one (inception_v3): cat has one call only
    (_q("/act_quant_cat_8/QuantizeLinear", "act_quant_relu_69.scale"),
     {"act_quant_cat": 1, "act_quant_cat_8": 1, "act_quant_relu_69": 1}, ("act_quant_cat_8", 0)),
    (_q("/Constant_3/QuantizeLinear", "act_quant_b.scale"), {"act_quant_b": 1}, ("act_quant_b", None)),
    (_q("/something/QuantizeLinear", "weight.scale"), {"act_quant_b": 1}, None),
])
def test_quantize_linear_is_mapped_to_its_quantizer_call(node, quantizers, expected):
    assert _quantizer_call(node, quantizers) == expected


class Shared(nn.Module):
    """Two max-pools share their input's quantization: one quantizer, several calls."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.a(x)), 2)
        x = F.max_pool2d(F.relu(self.b(x)), 2)
        return self.head(x.mean((2, 3)))


def test_every_quantizer_call_is_compared_and_agrees(tmp_path):
    torch.manual_seed(0)
    calib = [(torch.randn(8, 3, 16, 16), torch.zeros(8)) for _ in range(2)]
    path = str(tmp_path / "m.onnx")
    result = fxcompress.compile(Shared().eval(), [QuantizeINT8(), ExportONNX(path)], torch.randn(2, 3, 16, 16),
                                calib_loader=calib, val_loader=calib, progress=False)
    gm = result.model
    calls = sum(1 for n in gm.graph.nodes if n.op == "call_module"
                and isinstance(gm.get_submodule(n.target), ActivationQuantizer))
    stats = compare_codes(onnx.load(path), gm, calib[0][:1])
    assert stats["quantizer_calls_compared"] == calls and not stats["quantizers_not_in_file"]
    assert stats["max_code_step"] <= 1 and stats["snr_forced_db"] > 60
