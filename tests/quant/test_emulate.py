"""The fake-quant model emulates onnxruntime's integer kernels: only true global pools are emulated as
QLinearGlobalAveragePool."""
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxcompress
from fxcompress.passes import ExportONNX, QuantizeINT8
from fxcompress.quant.emulate import IntegerEmulation
from fxcompress.quant.fake_quant import ActivationQuantizer


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
    assert export["max_code_step"] <= 1


class ConstantTable(nn.Module):
    """Swin v2's relative-position MLP: a linear layer on a constant buffer, added to the input's path."""

    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.linspace(-1.1, 1.1, 64).reshape(16, 4))
        self.mlp = nn.Linear(4, 8)
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x) + self.mlp(self.table).sum(0)


def test_a_constant_is_quantized_as_the_exporter_folds_it_not_as_onnxruntime_would(tmp_path):
    """The exporter folds QuantizeLinear of a constant into codes with torch's rounding (x * (1/s)), where
    onnxruntime divides; swin_v2_t's table has an x with x / s = 127.5 exactly, 254 in the file, 255 by division."""
    torch.manual_seed(0)
    calib = [(torch.randn(16, 8), torch.zeros(16)) for _ in range(2)]
    result = fxcompress.compile(ConstantTable().eval(), [QuantizeINT8(), ExportONNX(str(tmp_path / "m.onnx"))],
                                torch.randn(2, 8), calib_loader=calib, val_loader=calib, progress=False)
    divides = {name: m.divide for name, m in result.model.named_modules() if isinstance(m, ActivationQuantizer)}
    # the table's QuantizeLinear is folded by the exporter (torch's rounding); the MLP's and the sum's, computed
    # from it, stay in the file for onnxruntime to compute, and round as it does
    assert divides == {"act_quant_x": True, "act_quant_table": False, "act_quant_fc": True, "act_quant_mlp": True,
                       "act_quant_sum_1": True, "act_quant_add": True}
    assert result.report.records[-1].metrics["max_code_step"] == 0


class _NearlyDeadChannels(torch.nn.Module):
    """A residual block's last conv after a zero-initialised BatchNorm: weights ~0 beside the bias, so the int32
    bias b / (s_x * s_w) would pass 2^31, and onnxruntime's int32 accumulator would wrap."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 1)
        with torch.no_grad():
            self.b.weight.mul_(1e-9)
            self.b.bias.uniform_(0.5, 1.0)

    def forward(self, x):
        return torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3))


def test_int32_biases_keep_headroom_so_the_accumulator_never_wraps(tmp_path):
    import fxcompress
    from fxcompress.passes import ExportONNX, QuantizeINT8
    gen = torch.Generator().manual_seed(0)
    x, calib = torch.rand(1, 3, 8, 8), [torch.rand(4, 3, 8, 8, generator=gen) for _ in range(2)]
    result = fxcompress.compile(_NearlyDeadChannels().eval(), [QuantizeINT8(method="minmax"),
                                ExportONNX(str(tmp_path / "m.onnx"))], x, calib_loader=calib, progress=False)
    assert result.report.records[0].metrics["int32_bias_channels_rescaled"] == 8
    assert result.report.records[1].metrics["max_code_step"] == 0


class ConstantTable4d(nn.Module):
    """timm's Swin v2: the table is a non-persistent 4-D buffer [1, 2w-1, 2w-1, 2] read by a linear layer: the
    exporter writes it as a Constant node and leaves its QuantizeLinear in the file, for onnxruntime to compute
    (x / s); it flipped 14 % of a tiny Swin v2's table codes while the fake-quant model rounded as torch."""

    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.linspace(-8, 8, 98).reshape(1, 7, 7, 2), persistent=False)
        self.mlp = nn.Linear(2, 16)
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return self.fc(x) + self.mlp(self.table).mean((1, 2))


def test_a_constant_left_in_the_file_rounds_as_onnxruntime(tmp_path):
    torch.manual_seed(0)
    calib = [(torch.randn(16, 16), torch.zeros(16)) for _ in range(2)]
    path = str(tmp_path / "m.onnx")
    result = fxcompress.compile(ConstantTable4d().eval(), [QuantizeINT8(), ExportONNX(path)], torch.randn(2, 16),
                                calib_loader=calib, val_loader=calib, progress=False)
    metrics = result.report.records[-1].metrics
    in_file = {n.name.split("/")[1] for n in onnx.load(path).graph.node if n.op_type == "QuantizeLinear"}
    assert "act_quant_table" in in_file and metrics["constant_quantizers_in_file"] >= 1
    assert dict(result.model.named_modules())["act_quant_table"].divide   # as onnxruntime computes it
    assert metrics["max_code_step"] == 0 and metrics["code_flip_fraction"] == 0.0
