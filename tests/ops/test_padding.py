"""Padding passes the channels it does not pad; padding the channel dim fixes them, naming the op. torch.stack
moves every input dim after the new one up by one."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxcompress
from fxcompress.passes import ChannelGroups, MagnitudePrune


class Padded(nn.Module):
    def __init__(self, pad, b_in=8):
        super().__init__()
        self.pad = pad
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(b_in, 4, 3)

    def forward(self, x):
        return self.b(F.pad(self.a(x), self.pad)).mean((2, 3))


def groups_of(model, x):
    result = fxcompress.compile(model, [ChannelGroups()], x, progress=False)
    return result, result.report.records[0].metrics


def test_spatial_padding_keeps_channels_prunable_and_exact():
    model, x = Padded((1, 2, 0, 1)).eval(), torch.randn(1, 3, 6, 6)
    result = fxcompress.compile(model, [MagnitudePrune(0.5)], x, progress=False)
    assert result.model.a.out_channels == 4 and result.report.records[0].metrics["max_rel_error"] < 1e-5


def test_padding_the_channel_dim_fixes_the_group_and_says_why():
    _, metrics = groups_of(Padded((0, 0, 0, 0, 0, 2), b_in=10).eval(), torch.randn(1, 3, 6, 6))
    assert any("pads the channel dim" in reason for reason in metrics["fixed_reasons"])


class Stacked(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        paths = torch.stack([self.a(x), self.b(x)], dim=1)   # [N, 2, C, H, W]
        return self.c(paths.sum(1)).mean((2, 3))


def test_stack_couples_its_inputs_channels_and_prunes_exactly():
    model, x = Stacked().eval(), torch.randn(2, 3, 5, 5)
    result = fxcompress.compile(model, [MagnitudePrune(0.5)], x, progress=False)
    assert result.model.a.out_channels == result.model.b.out_channels == result.model.c.in_channels == 4
    assert result.report.records[0].metrics["max_rel_error"] < 1e-5


class PaddedPools(nn.Module):
    """timm's same-padding max pool (F.pad with -inf, then max_pool2d), a zero pad and a reflection pad between
    quantized convs, and a constant pad of 3 (a value the codes need not hold)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)
        self.c, self.d = nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 1)
        self.zero, self.reflect = nn.ZeroPad2d(1), nn.ReflectionPad2d(1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = F.max_pool2d(F.pad(h, (0, 1, 0, 1), value=-float("inf")), 3, 2)
        h = self.c(self.reflect(self.b(self.zero(h))))
        return self.d(F.pad(h, (1, 1, 1, 1), value=3.0)).mean((2, 3))


def test_pads_keep_their_input_codes_where_the_codes_hold_the_padding_value(tmp_path):
    import torch.fx as fx
    from fxcompress.graph.shapes import record_shapes
    from fxcompress.passes import ExportONNX, FoldBatchNorm, QuantizeINT8
    from fxcompress.quant.insert import plan_quantization
    model = PaddedPools().eval()
    gm = fx.symbolic_trace(model)
    record_shapes(gm, (torch.randn(2, 3, 16, 16),))
    plan = plan_quantization(gm)
    by_name = {n.name: n for n in gm.graph.nodes}
    shared = {n.name: src.name for n, src in plan.shared.items()}
    # the -inf pad, its max pool and the zero pad move the ReLU's codes to conv b (the quantizer moved up onto
    # the ReLU, no quantizer on the -inf padded tensor); the reflection pad moves conv b's codes to conv c
    assert shared == {"zero": "relu", "reflect": "b"}
    # a pad of 3 keeps a quantizer of its own, which observes the padding value
    assert by_name["pad_1"] in plan.quantized and "pad_1" not in shared
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(4, 3, 16, 16, generator=g) for _ in range(3)]
    path = str(tmp_path / "padded_int8.onnx")
    result = fxcompress.compile(model, [FoldBatchNorm(), QuantizeINT8(progress=False), ExportONNX(path)],
                                (calib[0],), calib_loader=calib, val_loader=calib[:1], progress=False)
    metrics = result.report.records[-1].metrics   # the INT8 check compared every quantizer's codes
    assert metrics["max_code_step"] == 0 and metrics["quantizers_not_in_file"] == []


class FloatBeforeSamePool(nn.Module):
    """pnasnet5large's cell: a same-padding max pool (-inf pad) after a float op whose output also has a float
    reader, so no quantizer can move up onto it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = self.a(x) * 1.5 + 0.25                      # float ops: no quantizer of their own
        p = F.max_pool2d(F.pad(h, (0, 1, 0, 1), value=-float("inf")), 3, 2)
        return self.b(p).mean((2, 3)), h.mean((2, 3))   # h also read in float


def test_a_minus_inf_pad_never_gets_a_quantizer_of_its_own(tmp_path):
    import torch.fx as fx
    from fxcompress.graph.shapes import record_shapes
    from fxcompress.passes import ExportONNX, QuantizeINT8
    from fxcompress.quant.insert import plan_quantization
    model = FloatBeforeSamePool().eval()
    gm = fx.symbolic_trace(model)
    record_shapes(gm, (torch.randn(2, 3, 16, 16),))
    plan = plan_quantization(gm)
    quantized = {n.name for n in plan.quantized}
    assert "pad" not in quantized and "max_pool2d" in quantized
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(4, 3, 16, 16, generator=g) for _ in range(3)]
    result = fxcompress.compile(model, [QuantizeINT8(progress=False), ExportONNX(str(tmp_path / "m.onnx"))],
                                (calib[0],), calib_loader=calib, val_loader=calib[:1], progress=False)
    assert result.report.records[-1].metrics["max_code_step"] <= 1
