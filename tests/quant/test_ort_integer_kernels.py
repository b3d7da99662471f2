"""The u8 x s8 saturation probe, 7-bit weights, and the check catching a saturated file."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import fxcompress
from fxcompress.core.errors import PassError, VerificationError
from fxcompress.passes import ExportONNX, QuantizeINT8
from fxcompress.quant.fake_quant import WEIGHT_CODE_RANGES, WeightQuantizer
from fxcompress.quant.ort_integer_kernels import PROBE_CHANNELS, _probe_models, _session, ort_u8s8_saturates


def _conv_codes(weight_code: int) -> np.ndarray:
    conv, _ = _probe_models(weight_code)
    return _session(conv).run(None, {"x": np.full((1, PROBE_CHANNELS, 2, 2), 255, np.uint8)})[0]


def test_seven_bit_weights_sum_exactly_and_the_probe_says_whether_eight_bit_ones_do():
    assert (_conv_codes(64) == round(PROBE_CHANNELS * 255 * 64 / 2 ** 15)).all()   # never saturates
    exact = (_conv_codes(127) == round(PROBE_CHANNELS * 255 * 127 / 2 ** 15)).all()
    assert ort_u8s8_saturates() == (not exact)
    if not exact:   # AVX2 without VNNI: each int16 pair clipped to 32767, 32 pairs
        assert (_conv_codes(127) == round(PROBE_CHANNELS // 2 * 32767 / 2 ** 15)).all()


@pytest.mark.parametrize("symmetric", [True, False])
def test_seven_bit_weight_codes_stay_within_minus_64_to_64(symmetric):
    w = torch.randn(8, 5, 3, 3) * torch.linspace(0.01, 3, 8).reshape(8, 1, 1, 1)
    for bits, (qmin, qmax) in WEIGHT_CODE_RANGES.items():
        q = WeightQuantizer(w, axis=0, symmetric=symmetric, bits=bits)
        codes = torch.round(w / q.scale.reshape(8, 1, 1, 1)) + q.zero_point.reshape(8, 1, 1, 1)
        assert codes.min() >= qmin and codes.max() <= qmax
        assert codes.max() == qmax or codes.min() == qmin   # the range is used, not wasted
        if symmetric:
            assert torch.allclose(q.scale, w.abs().amax(dim=(1, 2, 3)) / min(-qmin, qmax))
    with pytest.raises(ValueError, match="weight bits"):
        WeightQuantizer(w, axis=0, bits=4)


def test_weight_bits_option_is_checked():
    for bad in (4, "7", True, None):
        with pytest.raises(PassError, match="weight_bits"):
            QuantizeINT8(weight_bits=bad)


class AllPositive(nn.Module):
    """A conv whose int8 weight codes are all 127 on inputs whose codes are near 255: every int16 pair of
    products saturates on AVX2 without VNNI."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(32, 16, 1)
        with torch.no_grad():
            self.conv.weight.fill_(0.05)
            self.conv.bias.zero_()

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("bits", ["auto", 7, 8])
def test_the_check_catches_a_saturated_file_and_auto_avoids_it(tmp_path, bits):
    g = torch.Generator().manual_seed(0)
    calib = [torch.rand(4, 32, 6, 6, generator=g) * 0.1 + 0.9 for _ in range(2)]   # codes near 255
    passes = [QuantizeINT8(progress=False, bias_correction=False, weight_bits=bits),
              ExportONNX(str(tmp_path / "m.onnx"))]
    saturated = bits == 8 and ort_u8s8_saturates()
    if saturated:   # the file computes something else than the fake-quant model: refused, no file left
        with pytest.raises(VerificationError, match="codes differ"):
            fxcompress.compile(AllPositive().eval(), passes, (calib[0],), calib_loader=calib, progress=False)
        assert not (tmp_path / "m.onnx").exists()
        return
    result = fxcompress.compile(AllPositive().eval(), passes, (calib[0],), calib_loader=calib, progress=False)
    quant, export = result.report.records
    assert quant.metrics["weight_bits"] == (bits if bits != "auto" else 7 if ort_u8s8_saturates() else 8)
    assert export.metrics["max_code_step"] == 0
