"""SiLU between quantizers lowers to QLinearSigmoid + QLinearMul, and the fake-quant model gives the codes
onnxruntime computes (the INT8 check, bit for bit); a SiLU whose output is not quantized stays float."""
import numpy as np
import onnx
import torch
import torch.nn as nn

import fxcompress
from fxcompress.onnx.runtime import optimized_graph
from fxcompress.passes import ExportONNX, FoldBatchNorm, QuantizeINT8
from fxcompress.quant.lower_silu import (fuse_qlinear_silu, ort_qlinear_silu_exact, qlinear_silu_table,
                                         _silu_graph, _run)


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


def test_the_table_is_silu_on_the_codes_within_a_step():
    assert ort_qlinear_silu_exact()
    sx, zx, sy, zy = 0.05, 128, 0.04, 10
    table = qlinear_silu_table(sx, zx, sy, zy).numpy()
    x = (np.arange(256) - zx) * sx
    exact = np.clip(np.round(x / (1 + np.exp(-x)) / sy) + zy, 0, 255)
    # the sigmoid is quantized to 1/255 in between: at most a step off silu's own codes, never more
    assert np.abs(table - exact).max() <= 1 and (table != exact).mean() < 0.25


def test_the_fused_graph_computes_the_table():
    proto = _silu_graph(0.1, 100, 0.05, 7)
    codes = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8)
    assert np.array_equal(_run(proto, codes), qlinear_silu_table(0.1, 100, 0.05, 7).numpy().astype(np.uint8)[codes])


def test_int8_model_runs_silu_on_codes_and_the_check_passes_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(4, 3, 16, 16, generator=g) for _ in range(3)]
    path = str(tmp_path / "m.onnx")
    result = fxcompress.compile(ConvSiLU().eval(), [FoldBatchNorm(), QuantizeINT8(progress=False), ExportONNX(path)],
                                (calib[0],), calib_loader=calib, val_loader=calib[:1], progress=False)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops.count("QLinearSigmoid") == 2 and ops.count("QLinearMul") == 2 and "Sigmoid" not in ops
    assert "Sigmoid" not in [n.op_type for n in optimized_graph(path).graph.node]
    metrics = result.report.records[-1].metrics
    assert metrics["max_code_step"] == 0 and metrics["code_flip_fraction"] == 0


def test_a_silu_without_quantized_codes_on_both_sides_is_left_alone():
    from onnx import TensorProto, helper
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph)
    assert [n.op_type for n in fuse_qlinear_silu(model).graph.node] == ["Sigmoid", "Mul"]
