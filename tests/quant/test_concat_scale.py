"""A concat lends its quantizer to the tensors it concatenates (quant/concat_scale.py), so that onnxruntime's
QLinearConcat copies their codes instead of requantizing them; a tensor feeding two concats keeps its own."""
import collections

import onnx
import torch
import torch.fx as fx
import torch.nn as nn

import fxcompress
from fxcompress.graph.shapes import record_shapes
from fxcompress.passes import ExportONNX, QuantizeINT8
from fxcompress.quant.insert import plan_quantization


class TwoBranches(nn.Module):
    def __init__(self, shared_input=False, act=nn.SiLU):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)
        self.shared_input, self.act = shared_input, act()

    def forward(self, x):
        a, b = self.act(self.a(x)), self.b(x)
        y = self.head(torch.cat([a, b], 1))
        return y + self.head(torch.cat([b, a], 1)) if self.shared_input else y


def _plan(model):
    gm = fx.symbolic_trace(model.eval())
    record_shapes(gm, (torch.randn(2, 3, 16, 16),))
    return gm, plan_quantization(gm)


def _nodes(gm, *names):
    return [next(n for n in gm.graph.nodes if n.name == name) for name in names]


def test_the_inputs_of_a_concat_take_its_quantizer():
    gm, plan = _plan(TwoBranches())
    relu, b, cat = _nodes(gm, "act", "b", "cat")
    assert cat in plan.quantized
    assert plan.shared[relu] is cat and plan.shared[b] is cat
    assert relu not in plan.quantized and b not in plan.quantized


def test_a_tensor_feeding_two_concats_keeps_its_own_quantizer():
    gm, plan = _plan(TwoBranches(shared_input=True))
    relu, b = _nodes(gm, "act", "b")
    assert relu in plan.quantized and b in plan.quantized
    assert relu not in plan.shared and b not in plan.shared


def test_qlinear_concat_copies_and_the_int8_check_passes(tmp_path):
    path = str(tmp_path / "m.onnx")
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(4, 3, 16, 16, generator=g) for _ in range(3)]
    torch.manual_seed(0)
    result = fxcompress.compile(TwoBranches().eval(), [QuantizeINT8(progress=False), ExportONNX(path)],
                                (calib[0],), calib_loader=calib, val_loader=calib[:1], progress=False)
    graph = onnx.load(path).graph
    concat = next(n for n in graph.node if n.op_type == "Concat")
    producer = {o: n for n in graph.node for o in n.output}
    scales = {producer[i].input[1] for i in concat.input}   # the DequantizeLinears' scales
    out_q = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == concat.output[0])
    assert scales == {out_q.input[1]}
    metrics = result.report.records[-1].metrics
    assert metrics["max_code_step"] == 0 and metrics["code_flip_fraction"] == 0
    assert collections.Counter(n.op_type for n in graph.node)["Concat"] == 1


def test_a_relu_output_keeps_a_quantizer_with_zero_point_zero():
    # with the concat's range (b's negative values) onnxruntime could not drop the ReLU: conv a ran in float
    gm, plan = _plan(TwoBranches(act=nn.ReLU))
    relu, b = _nodes(gm, "act", "b")
    assert relu in plan.quantized and b in plan.quantized
