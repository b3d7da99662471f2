"""SiLU lowers to QuickGelu (one float kernel instead of Sigmoid and Mul), which onnxruntime computes bit for
bit as the pair, so the fake-quant model gives onnxruntime's codes (the INT8 check, bit for bit)."""
import collections

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import TensorProto, helper

import fxcompress
from fxcompress.onnx.runtime import optimized_graph
from fxcompress.passes import ExportONNX, FoldBatchNorm, QuantizeINT8
from fxcompress.quant.lower_silu import fuse_quick_gelu, ort_quick_gelu_form, run_unoptimized, silu_graphs


class ConvSiLU(nn.Module):
    """conv-BN-SiLU blocks as YOLO's, a residual add, and a SiLU feeding the float head (not quantized)."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.SiLU())
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.SiLU(inplace=True))
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        y = self.stem(x)
        return self.head(self.body(y) + y)


def _model(nodes, inputs=("x",), shape=(4,)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(i, TensorProto.FLOAT, shape) for i in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return helper.make_model(graph)


def _sigmoid(x):
    return run_unoptimized(_model([helper.make_node("Sigmoid", ["x"], ["y"])], shape=[None]), x)


def test_quick_gelu_is_the_pair_in_the_form_the_probe_names():
    form = ort_quick_gelu_form()
    assert form in ("clamped", "plain")   # onnxruntime 1.32 on x86-64: one or the other, by CPU
    pair, fused = silu_graphs()
    x = np.linspace(-40, 40, 200_001, dtype=np.float32)
    y, s = run_unoptimized(fused, x), _sigmoid(x)
    over = s > 1
    assert over.any()   # onnxruntime's Sigmoid overshoots 1 here: the two forms differ there
    if form == "clamped":
        assert np.array_equal(y, x * np.minimum(s, np.float32(1)))
        assert not np.array_equal(y[over], run_unoptimized(pair, x)[over])   # the cap is needed
    else:
        assert np.array_equal(y, x * s) and np.array_equal(y, run_unoptimized(pair, x))
    assert np.array_equal(y[~over], run_unoptimized(pair, x)[~over])
    # and it is SiLU (MLAS's logistic: a few float32 ulps from the exact one)
    assert np.abs(y - x / (1 + np.exp(-x.astype(np.float64)))).max() < 1e-5


def test_the_pair_becomes_one_node_with_the_mul_output():
    model = _model([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "x"], ["y"])])
    nodes = fuse_quick_gelu(model).graph.node
    assert [(n.op_type, n.domain, list(n.input), list(n.output)) for n in nodes] == \
        [("QuickGelu", "com.microsoft", ["x"], ["y"])]
    assert nodes[0].attribute[0].name == "alpha" and nodes[0].attribute[0].f == 1.0
    x = np.array([-3.0, -0.5, 0.25, 6.0], np.float32)
    assert np.array_equal(run_unoptimized(model, x), run_unoptimized(silu_graphs()[0], x))
    output = _model([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "x"], ["y"])])
    output.graph.output.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, [4]))   # read outside
    assert [n.op_type for n in fuse_quick_gelu(output).graph.node] == ["Sigmoid", "Mul"]


def test_a_gate_or_a_shared_sigmoid_is_left_alone():
    gate = _model([helper.make_node("Sigmoid", ["g"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])],
                  inputs=("x", "g"))     # squeeze-excitation: x * sigmoid(g), not SiLU
    assert [n.op_type for n in fuse_quick_gelu(gate).graph.node] == ["Sigmoid", "Mul"]
    shared = _model([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["m"]),
                     helper.make_node("Add", ["m", "s"], ["y"])])   # the sigmoid is read twice
    assert [n.op_type for n in fuse_quick_gelu(shared).graph.node] == ["Sigmoid", "Mul", "Add"]


def test_int8_model_runs_each_silu_as_quick_gelu_and_the_check_passes_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(4, 3, 16, 16, generator=g) for _ in range(3)]
    path = str(tmp_path / "m.onnx")
    result = fxcompress.compile(ConvSiLU().eval(), [FoldBatchNorm(), QuantizeINT8(progress=False), ExportONNX(path)],
                                (calib[0],), calib_loader=calib, val_loader=calib[:1], progress=False)
    ops = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    assert ops["QuickGelu"] == 2 and ops["Sigmoid"] == 0 and ops["Mul"] == 0
    optimized = collections.Counter(n.op_type for n in optimized_graph(path).graph.node)
    assert optimized["QuickGelu"] == 2 and optimized["QLinearConv"] == 3 and optimized["Sigmoid"] == 0
    assert result.report.records[1].metrics["emulated_sigmoids"] == 2
    metrics = result.report.records[-1].metrics
    assert metrics["max_code_step"] == 0 and metrics["code_flip_fraction"] == 0


class WrittenOutSwish(nn.Module):
    """SiLU written as x * torch.sigmoid(x) (timm's and EfficientDet's Swish), between two convs."""

    def __init__(self, c=8):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, 4, 1)

    def forward(self, x):
        h = self.a(x)
        return self.b(h * torch.sigmoid(h))


def test_a_written_out_swish_is_fused_too_and_emulated_with_quick_gelus_sigmoid(tmp_path):
    from fxcompress.quant.emulate import IntegerEmulation
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(4, 3, 12, 12, generator=g) * 4 for _ in range(3)]
    path = str(tmp_path / "m.onnx")
    result = fxcompress.compile(WrittenOutSwish().eval(), [QuantizeINT8(progress=False), ExportONNX(path)],
                                (calib[0],), calib_loader=calib, val_loader=calib[:1], progress=False)
    assert collections.Counter(n.op_type for n in onnx.load(path).graph.node)["QuickGelu"] == 1
    kinds = [m.kind for m in result.model.modules() if isinstance(m, IntegerEmulation)]
    # the sigmoid is emulated capped at 1 where this CPU's QuickGelu caps it, as onnxruntime's Sigmoid else
    capped = ort_quick_gelu_form() == "clamped"
    assert ("silu_sigmoid" in kinds) == capped and ("sigmoid" in kinds) != capped
    metrics = result.report.records[-1].metrics
    assert metrics["max_code_step"] == 0 and metrics["code_flip_fraction"] == 0
