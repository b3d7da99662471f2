"""The fake-quant model computes onnxruntime's QLinearAveragePool codes bit for bit (quant/qlinear_average_pool.py):
a float32 window sum divided by the count, then rne(y / s_y + zp_y), the zero point added before rounding.
Float average + QuantizeLinear rounds ties the other way where the zero point is odd: nasnetalarge's 3x3
count_include_pad=False pools (averages of 4 and 6 codes) had 1.4 % of their codes one step off."""
import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import fxcompress
from fxcompress.core.verify import TOLERANCES
from fxcompress.onnx.runtime import optimized_graph, ort_session
from fxcompress.passes import ExportONNX, QuantizeINT8
from fxcompress.quant.emulate import IntegerEmulation
from fxcompress.quant.qlinear_average_pool import average_pool_variant, covers_whole_map, qlinear_average_pool

# (input shape, kernel, stride, padding, ceil_mode, count_include_pad, (s_x, zp_x, s_y, zp_y))
CASES = [((2, 8, 9, 11), 3, 1, 1, False, False, (0.05, 3, 0.05, 3)),     # nasnet's pool: ties, odd zero point
         ((2, 8, 9, 11), 3, 1, 1, False, True, (0.05, 7, 0.021, 125)),
         ((2, 4, 10, 10), 2, 2, 0, False, True, (0.1, 128, 0.1, 128)),
         ((1, 4, 11, 7), 3, 2, 1, True, False, (0.03, 0, 0.011, 9)),       # ceil mode: windows past the map
         ((2, 6, 13), 3, 2, 1, False, False, (0.05, 5, 0.05, 5))]          # 1-d


def _ort_pool(codes, kernel, stride, padding, ceil, include, q, path):
    sx, zx, sy, zy = q
    n = codes.dim() - 2
    inits = [numpy_helper.from_array(np.array(v, t), name) for v, t, name in
             ((sx, np.float32, "sx"), (zx, np.uint8, "zx"), (sy, np.float32, "sy"), (zy, np.uint8, "zy"))]
    pool = helper.make_node("AveragePool", ["xf"], ["yf"], kernel_shape=[kernel] * n, strides=[stride] * n,
                            pads=[padding] * (2 * n), ceil_mode=int(ceil), count_include_pad=int(include))
    nodes = [helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xf"]), pool,
             helper.make_node("QuantizeLinear", ["yf", "sy", "zy"], ["y"])]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.UINT8, list(codes.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    assert "QLinearAveragePool" in {n.op_type for n in optimized_graph(path).graph.node}
    return torch.from_numpy(ort_session(path).run(None, {"x": codes.numpy()})[0].astype(np.float32))


@pytest.mark.parametrize("case", range(len(CASES)))
def test_qlinear_average_pool_is_onnxruntimes(case, tmp_path):
    shape, kernel, stride, padding, ceil, include, q = CASES[case]
    codes = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(case), dtype=torch.uint8)
    y = _ort_pool(codes, kernel, stride, padding, ceil, include, q, str(tmp_path / "pool.onnx"))
    n = len(shape) - 2
    variant = ((kernel,) * n, (stride,) * n, (padding,) * n, include)
    ours = qlinear_average_pool(codes.float(), variant, tuple(y.shape[2:]), torch.tensor(q[0]), q[1],
                                torch.tensor(q[2]), q[3])
    assert torch.equal(ours, y)
    if case == 0:   # why it is needed: float average + QuantizeLinear rounds nasnet's ties the other way
        pool = F.avg_pool2d((codes.float() - q[1]) * q[0], kernel, stride, padding, ceil, include)
        plain = torch.clamp(torch.round(pool / q[2]) + q[3], 0, 255)
        assert float((plain != y).float().mean()) > TOLERANCES["int8_code_flip_fraction"]


def test_pool_variants_and_the_global_case():
    gm = torch.fx.symbolic_trace(Pooled())
    modules = dict(gm.named_modules())
    variants = {n.name: average_pool_variant(n, modules) for n in gm.graph.nodes if n.op in ("call_module",
                                                                                          "call_function")}
    assert variants["pool"] == ((3, 3), (1, 1), (1, 1), False)
    assert variants["avg_pool2d"] == ((2, 2), (2, 2), (0, 0), True)   # stride defaults to the kernel
    assert variants["a"] is None
    assert covers_whole_map(((4, 4), (1, 1), (0, 0), True), (4, 4))
    assert not covers_whole_map(((4, 4), (1, 1), (1, 1), True), (4, 4))


class Pooled(nn.Module):
    """conv -> nasnet's 3x3 average pool -> conv, then a 2x2 pool by function into a conv."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)

    def forward(self, x):
        return self.c(F.avg_pool2d(self.b(self.pool(self.a(x))), 2))


def test_average_pools_export_with_every_code_agreeing(tmp_path):
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(4, 3, 12, 12, generator=g) for _ in range(3)]
    torch.manual_seed(0)
    result = fxcompress.compile(Pooled().eval(), [QuantizeINT8(progress=False), ExportONNX(str(tmp_path / "p.onnx"))],
                                (calib[0],), calib_loader=calib, val_loader=calib[:1], progress=False)
    assert result.report.records[0].metrics["emulated_pools"] == 2
    kinds = [m.kind for m in result.model.modules() if isinstance(m, IntegerEmulation)]
    assert kinds.count("average_pool") == 2
    metrics = result.report.records[-1].metrics
    assert metrics["max_code_step"] == 0 and metrics["code_flip_fraction"] == 0.0
