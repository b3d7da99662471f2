"""The fake-quant model computes onnxruntime's softmaxes bit for bit (quant/ort_float_ops.py, quant/emulate.py).

A float Softmax runs as MLAS's kernel (its own exp polynomial, sums over 16 or 8 SIMD lanes, a multiply by
1 / sum): torch.softmax differs on about half of the values. A softmax between two quantizers
(DequantizeLinear -> Softmax -> QuantizeLinear) is fused into QLinearSoftmax, a lookup table on the uint8 codes
that requantizes with floor(1 / scale): YOLOv8n's DFL softmax (near-uniform at random init, so a tiny scale) had
5.7e-2 of its codes one step off and the INT8 check refused the model.
"""
import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

import fxcompress
import fxcompress.quant.emulate as emulate
from fxcompress.core.errors import VerificationError
from fxcompress.core.verify import TOLERANCES
from fxcompress.onnx.runtime import optimized_graph, ort_session, run_ort
from fxcompress.passes import ExportONNX, QuantizeINT8
from fxcompress.quant.codes import compare_codes
from fxcompress.quant.emulate import IntegerEmulation
from fxcompress.quant.ort_float_ops import (mlas_softmax, ort_qlinear_softmax_exact, ort_softmax_variant,
                                            qlinear_softmax)


def _save(nodes, inputs, outputs, path, inits=()):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits)),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _ort_softmax(x: torch.Tensor, axis: int, path: str) -> torch.Tensor:
    _save([helper.make_node("Softmax", ["x"], ["y"], axis=axis)],
          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))], path)
    return torch.from_numpy(run_ort(ort_session(path), (x,))[0])


# (shape, axis, spread): YOLOv8's DFL ([B, 16, 4, A], axis 1), masked tails (10, 33, 37), 48-wide steps with
# tails (100, 4097), attention-like rows (49), spreads that reach MLAS's clamp of x - max at -103.97
SOFTMAX_CASES = [((4, 16, 4, 300), 1, 3.0), ((64, 10), -1, 5.0), ((8, 7, 33), 2, 2.0), ((3, 100, 5), 1, 20.0),
                 ((2, 4097), 1, 10.0), ((5, 3, 64, 5), 2, 0.01), ((32, 49, 49), -1, 4.0), ((64, 37), 1, 60.0),
                 ((16, 17), 0, 1e3), ((1000, 1), 1, 1.0)]


def test_mlas_softmax_is_onnxruntimes(tmp_path):
    variant = ort_softmax_variant()
    assert variant is not None, "no variant of MLAS's softmax reproduces this onnxruntime's Softmax"
    g = torch.Generator().manual_seed(0)
    same = total = torch_same = 0
    for k, (shape, axis, spread) in enumerate(SOFTMAX_CASES):
        x = torch.randn(*shape, generator=g) * spread
        if k == 0:
            x[:, 3, :, ::7] = float("-inf")
        y = _ort_softmax(x, axis, str(tmp_path / f"softmax_{k}.onnx"))
        ours = mlas_softmax(x, axis, variant)
        same += int((ours.view(torch.int32) == y.view(torch.int32)).sum())
        total += y.numel()
        torch_same += int((torch.softmax(x, axis) == y).sum())
    assert same == total, f"{same / total:.6f} of the values bit-identical"
    assert torch_same / total < 0.8      # why it is needed: torch's softmax is another kernel


def _ort_qdq_softmax(codes, axis, sx, zx, sy, zy, path):
    inits = [numpy_helper.from_array(np.array(v, t), n) for v, t, n in
             ((sx, np.float32, "sx"), (zx, np.uint8, "zx"), (sy, np.float32, "sy"), (zy, np.uint8, "zy"))]
    nodes = [helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xf"]),
             helper.make_node("Softmax", ["xf"], ["yf"], axis=axis),
             helper.make_node("QuantizeLinear", ["yf", "sy", "zy"], ["y"])]
    _save(nodes, [helper.make_tensor_value_info("x", TensorProto.UINT8, list(codes.shape))],
          [helper.make_tensor_value_info("y", TensorProto.UINT8, list(codes.shape))], path, inits)
    assert "QLinearSoftmax" in {n.op_type for n in optimized_graph(path).graph.node}
    return torch.from_numpy(run_ort(ort_session(path), (codes,))[0].astype(np.float32))


def test_qlinear_softmax_is_onnxruntimes(tmp_path):
    assert ort_qlinear_softmax_exact()
    g = torch.Generator().manual_seed(1)
    same = total = 0
    flips = []
    # YOLOv8's DFL at random init (a near-uniform softmax over 16), ties of equal codes, masked and long rows
    for k, (shape, axis, sx, zx, sy, zy, low) in enumerate([((4, 16, 4, 500), 1, 0.05, 128, 2.7e-4, 0, 120),
                                                             ((20000, 2), -1, 0.0667, 128, 0.00328, 7, 0),
                                                             ((64, 17, 30), 1, 0.0063, 0, 5.2e-4, 26, 0),
                                                             ((8, 33), 1, 0.02, 0, 1 / 255, 3, 0),
                                                             ((8, 7, 100), 2, 0.2, 200, 1 / 256, 0, 0)]):
        codes = torch.randint(low, 256, shape, generator=g, dtype=torch.uint8)
        y = _ort_qdq_softmax(codes, axis, sx, zx, sy, zy, str(tmp_path / f"qdq_softmax_{k}.onnx"))
        ours = qlinear_softmax(codes.float(), axis, torch.tensor(sx), torch.tensor(sy), zy)
        same += int((ours == y).sum())
        total += y.numel()
        float_softmax = torch.softmax((codes.float() - zx) * torch.tensor(sx), axis)
        plain = torch.clamp(torch.round(float_softmax / torch.tensor(sy, dtype=torch.float32)) + zy, 0, 255)
        flips.append(float((plain != y).float().mean()))
    assert same == total, f"{same / total:.6f} of the codes identical"
    assert flips[0] > TOLERANCES["int8_code_flip_fraction"], flips    # why it is needed


class SoftmaxNet(nn.Module):
    """conv -> softmax over channels -> 1x1 conv (a QLinearSoftmax between two quantizers), the same with the
    channels moved last and back around the softmax (CaiT's talking heads: onnxruntime moves the quantizers
    past the Transposes and fuses it as well), and a softmax over channels of a float product (a float
    Softmax whose output is quantized for the 1x1 conv after it)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 8, 1), nn.Conv2d(8, 8, 1)
        self.d, self.e = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        permuted = self.e(self.d(x).permute(0, 2, 3, 1).softmax(-1).permute(0, 3, 1, 2))
        return self.b(self.a(x).softmax(1)) + self.c(torch.softmax(x * 0.25, dim=1)) + permuted


def _compile(path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 8, 24, 24, generator=g) for _ in range(2)]
    return fxcompress.compile(SoftmaxNet().eval(), [QuantizeINT8(progress=False), ExportONNX(path)], (calib[0],),
                              calib_loader=calib, progress=False), torch.randn(32, 8, 24, 24, generator=g)


def test_softmax_int8_export_passes_the_check(tmp_path, monkeypatch):
    path = str(tmp_path / "softmax.onnx")
    result, x = _compile(path)
    assert result.report.records[0].metrics["emulated_softmaxes"] == 3
    gm = result.model.eval()
    kinds = [m.kind for m in gm.modules() if isinstance(m, IntegerEmulation)]
    assert kinds.count("qlinear_softmax") == 2 and "softmax" in kinds
    ops = [n.op_type for n in optimized_graph(path).graph.node]
    assert ops.count("QLinearSoftmax") == 2 and "Softmax" in ops
    model = onnx.load(path)
    assert compare_codes(model, gm, (x,))["code_flip_fraction"] == 0.0
    # without the emulation, QLinearSoftmax's codes (floor(1 / scale)) differ beyond the check's tolerance
    switches = [m for m in gm.modules() if isinstance(m, IntegerEmulation) and m.kind == "qlinear_softmax"]
    for m in switches:
        m.enabled = False
    try:
        assert compare_codes(model, gm, (x,))["code_flip_fraction"] > TOLERANCES["int8_code_flip_fraction"]
    finally:
        for m in switches:
            m.enabled = True
    monkeypatch.setattr(emulate, "softmax_dim", lambda node, modules: None)
    with pytest.raises(VerificationError, match="act_quant_(softmax|permute)"):
        _compile(str(tmp_path / "plain.onnx"))
