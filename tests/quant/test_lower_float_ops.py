"""quant/lower_float_ops.py: the exported erf-GELU becomes one com.microsoft Gelu, the same function, and an
INT8 model with GELU between quantized layers runs it as one kernel and passes the INT8 check."""
import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxcompress
from fxcompress.onnx.runtime import optimized_graph, ort_session, run_ort
from fxcompress.onnx.write import to_onnx_proto
from fxcompress.passes import ExportONNX, QuantizeINT8
from fxcompress.quant.lower_float_ops import fuse_gelu


class GeluMLP(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        return self.head((self.down(F.gelu(self.up(x))) + x).mean(1))


def test_exported_gelu_becomes_one_op_computing_the_same(tmp_path):
    torch.manual_seed(0)
    model, x = GeluMLP().eval(), torch.randn(4, 7, 32) * 3
    proto = to_onnx_proto(nn.GELU().eval(), (x,))
    assert [n.op_type for n in proto.graph.node if n.op_type != "Constant"] == ["Div", "Erf", "Add", "Mul", "Mul"]
    fused = fuse_gelu(proto)
    assert [(n.op_type, n.domain) for n in fused.graph.node] == [("Gelu", "com.microsoft")]
    path = str(tmp_path / "gelu.onnx")
    onnx.save(fused, path)
    np.testing.assert_allclose(run_ort(ort_session(path), (x,))[0], F.gelu(x).numpy(), rtol=1e-5, atol=1e-6)
    other = to_onnx_proto(model, (x,))   # a model whose GELU sits between layers: fused too
    assert [n.op_type for n in fuse_gelu(other).graph.node].count("Gelu") == 1


def test_int8_model_runs_gelu_as_one_kernel_and_passes_the_check(tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 7, 32, generator=g) for _ in range(3)]
    path = str(tmp_path / "m.onnx")
    result = fxcompress.compile(GeluMLP().eval(), [QuantizeINT8(progress=False), ExportONNX(path)], (calib[0],),
                                calib_loader=calib, val_loader=calib[:1], progress=False)
    ops = [n.op_type for n in optimized_graph(path).graph.node]
    assert ops.count("Gelu") == 1 and "Erf" not in ops
    assert result.report.records[-1].metrics["max_code_step"] <= 1


def test_constants_of_shape_one_are_read_too():
    """maxvit_t's GELU divides by a [1]-shaped sqrt(2)."""
    from onnx import TensorProto, helper, numpy_helper
    consts = {"sqrt2": np.array([np.sqrt(2.0)], np.float32), "one": np.array([1.0], np.float32),
              "half": np.array([0.5], np.float32)}
    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    fused = fuse_gelu(helper.make_model(graph))
    assert [n.op_type for n in fused.graph.node] == ["Gelu"]
