"""The fake-quant model computes, bit for bit, the float kernels onnxruntime runs between quantizers
(quant/emulate.py): Sigmoid and SiLU, unfolded BatchNorms, and QuantizeLinear's rounding.

torch.sigmoid and MLAS's rational approximation differ by one ulp on about half of the values, so once in a
while the next quantizer rounds to another code. One such code in 245760, at efficientnet_b7's 14th gate, was
enough to bring onnxruntime vs fake-quant down to 16.5 dB (quantization itself: 6.7 dB) and the export check
refused the model. The QuantizeLinear after a float op rounds x / scale, torch.fake_quantize x * (1 / scale):
another ~2e-6 of the codes. BatchNormalization (densenet121's, after each concatenation) scales by a reciprocal
square root that torch.rsqrt reproduces (not 1 / sqrt), unfused: torch's BatchNorm differs on a third of the
values. Here every activation code of a small net with all of them (and a QLinearConcat, a QLinearAveragePool)
is compared between onnxruntime (each QuantizeLinear read out as an extra output) and the fake-quant model.
"""
import numpy as np
import onnx
import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import fxcompress
from fxcompress.onnx.runtime import optimized_graph, ort_session, run_ort
from fxcompress.passes import ExportONNX, QuantizeINT8
from fxcompress.quant.emulate import IntegerEmulation
from fxcompress.quant.ort_float_ops import (fma32, mlas_logistic, ort_batch_norm, ort_batch_norm_variant,
                                            ort_logistic_variant)
from fxcompress.quant.fake_quant import ActivationQuantizer


def _ort_sigmoid(x: torch.Tensor) -> torch.Tensor:
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "sigmoid",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    import onnxruntime as ort
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


def test_fma32_rounds_once():
    # a * b + c = 1 + 2^-24 + 2^-70: the float64 sum rounds onto the float32 midpoint 1 + 2^-24, whose tie
    # would go to 1.0; the exact value lies above it
    a, b, c = (torch.tensor([v], dtype=torch.float32)
               for v in (2 ** -24 * (1 + 2 ** -23), -(1 - 2 ** -23), 1 + 2 ** -23))
    assert float((a.double() * b.double() + c.double()).float()) == 1.0
    assert float(fma32(a, b, c)) == 1 + 2 ** -23
    x = torch.randn(10000)
    assert torch.equal(fma32(x, x, x), (x.double() * x.double() + x.double()).float())


def test_mlas_logistic_is_onnxruntimes_sigmoid():
    variant = ort_logistic_variant()
    assert variant is not None, "no variant of MLAS's logistic reproduces this onnxruntime's Sigmoid"
    bits = torch.arange(0, 2 ** 31 - 1, 1009, dtype=torch.int64).to(torch.int32).view(torch.float32)
    x = bits[torch.isfinite(bits) & (bits.abs() < 40)]
    typical = torch.linspace(-20, 20, 100001)
    x = torch.cat([x, -x, typical])
    ort = _ort_sigmoid(x)
    assert torch.equal(mlas_logistic(x, *variant), ort)
    assert (torch.sigmoid(typical) != ort[-len(typical):]).float().mean() > 0.2     # why it is needed


class FloatOpsNet(nn.Module):
    """BatchNorm, SiLU and Sigmoid on the (unquantized) input, the last two as functions; conv/SiLU layers and
    a squeeze-excitation gate as in an EfficientNet block, as modules (their inputs are quantized: the emulation
    looks them up); a concatenation, a BatchNorm after it and a 2x2 average pool as in a DenseNet."""

    def __init__(self, cin=16, c=32):
        super().__init__()
        self.norm_in = nn.BatchNorm2d(cin)
        self.a, self.b = nn.Conv2d(cin, c, 1), nn.Conv2d(cin, c, 1)
        self.dw = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.SiLU(inplace=True))
        self.fc1, self.act, self.fc2 = nn.Conv2d(c, 8, 1), nn.SiLU(inplace=True), nn.Conv2d(8, c, 1)
        self.gate = nn.Sigmoid()
        self.project, self.grow = nn.Conv2d(c, 16, 1), nn.Conv2d(16, 8, 3, padding=1)
        self.norm, self.relu, self.transition = nn.BatchNorm2d(24), nn.ReLU(inplace=True), nn.Conv2d(24, 16, 1)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x):
        x = self.norm_in(x)
        x = self.dw(self.a(F.silu(x)) + self.b(torch.sigmoid(x)))
        s = self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        x = self.project(x * self.gate(s))
        x = torch.cat([x, self.grow(x)], 1)
        return self.pool(self.transition(self.relu(self.norm(x))))


def _randomize_batch_norms(model):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5, generator=g)
                m.running_var.uniform_(0.2, 3.0, generator=g)
                m.weight.normal_(1, 0.3, generator=g)
                m.bias.normal_(0, 0.3, generator=g)
    return model


def _codes_in_onnxruntime(path: str, x: torch.Tensor) -> dict:
    """{quantizer name: uint8 codes} of every activation QuantizeLinear, read out through a DequantizeLinear
    of scale 1 (an extra branch: the QDQ groups onnxruntime fuses into integer kernels stay as they were)."""
    model = onnx.load(path)
    inits = {i.name for i in model.graph.initializer}
    model.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), "probe_one"))
    names = []
    for node in list(model.graph.node):
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            name = node.name.split("/")[1]
            model.graph.node.append(helper.make_node("DequantizeLinear", [node.output[0], "probe_one"],
                                                     [f"probe_{name}"]))
            model.graph.output.append(helper.make_tensor_value_info(f"probe_{name}", TensorProto.FLOAT, None))
            names.append(name)
    probed = path.replace(".onnx", "_probed.onnx")
    onnx.save(model, probed)
    return dict(zip(names, run_ort(ort_session(probed), (x,))[1:]))


def _call_sites(gm) -> dict:
    """{fx node calling an activation quantizer: its name in the ONNX file}: the exporter names the k-th call
    of a module (in graph order) after the module, with "_k" from the second call on."""
    modules, seen, out = dict(gm.named_modules()), {}, {}
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(modules[n.target], ActivationQuantizer):
            k = seen[n.target] = seen.get(n.target, -1) + 1
            out[n] = n.target if k == 0 else f"{n.target}_{k}"
    return out


def _codes_in_torch(gm, names, x) -> dict:
    """{quantizer call site, named as the exporter names its QuantizeLinear: uint8 codes}; a quantizer shared
    by several call sites (a concat's inputs, quant/concat_scale.py) gives each its own codes."""
    codes, site = {}, _call_sites(gm)

    class Capture(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if site.get(n) in names:
                m = gm.get_submodule(n.target)
                codes[site[n]] = (torch.round(out / m.scale) + m.zero_point).numpy()
            return out

    with torch.no_grad():
        Capture(gm).run(x)
    return codes


@pytest.fixture(scope="module")
def float_ops_export(tmp_path_factory):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 16, 32, 32, generator=g) for _ in range(2)]
    path = str(tmp_path_factory.mktemp("float_ops") / "float_ops.onnx")
    model = _randomize_batch_norms(FloatOpsNet()).eval()
    result = fxcompress.compile(model, [QuantizeINT8(progress=False), ExportONNX(path)], (calib[0],),
                                calib_loader=calib, progress=False)
    return result, path, torch.randn(64, 16, 32, 32, generator=g)


def test_batch_norm_is_onnxruntimes():
    variant = ort_batch_norm_variant()
    assert variant is not None, "no variant of the BatchNormalization formula reproduces this onnxruntime's"
    bn = _randomize_batch_norms(nn.BatchNorm2d(64)).eval()
    x = torch.randn(8, 64, 9, 7)
    params = [numpy_helper.from_array(t.detach().numpy(), n) for t, n in
              ((bn.weight, "w"), (bn.bias, "b"), (bn.running_mean, "m"), (bn.running_var, "v"))]
    node = helper.make_node("BatchNormalization", ["x", "w", "b", "m", "v"], ["y"], epsilon=bn.eps)
    graph = helper.make_graph([node], "bn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64, None, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=params)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    import onnxruntime as ort
    y = torch.from_numpy(ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
                         .run(None, {"x": x.numpy()})[0])
    with torch.no_grad():
        assert torch.equal(ort_batch_norm(x, bn, *variant), y)
        assert not torch.equal(bn(x), y)


def test_every_code_is_onnxruntimes(float_ops_export):
    result, path, x = float_ops_export
    gm = result.model.eval()
    metrics = result.report.records[0].metrics
    # the SiLUs run as QuickGelu (lower_silu.py), the sigmoids as Sigmoid, all in float between quantizers
    assert metrics["emulated_sigmoids"] == 5 and metrics["emulated_batch_norms"] == 2
    ort = _codes_in_onnxruntime(path, x)
    assert sorted(ort) == sorted(_call_sites(gm).values())   # every call of a quantizer has its QuantizeLinear
    kernels = {n.op_type for n in optimized_graph(path).graph.node}
    assert {"QLinearConcat", "QLinearAveragePool", "BatchNormalization", "Sigmoid", "QuickGelu"} <= kernels
    ours = _codes_in_torch(gm, list(ort), x)
    differ = {name: int((ort[name] != ours[name]).sum()) for name in ort}
    assert not any(differ.values()), differ

    # the comparison sees each difference: with torch's own sigmoid and SiLU, or its own BatchNorm, codes
    # after them flip (the quantizers' rounding: test_quantizer_rounds_as_quantize_linear)
    for kinds in (("sigmoid", "silu", "quick_gelu"), ("batch_norm",)):
        switches = [m for m in gm.modules() if isinstance(m, IntegerEmulation) and m.kind in kinds]
        for m in switches:
            m.enabled = False
        try:
            plain = _codes_in_torch(gm, list(ort), x)
        finally:
            for m in switches:
                m.enabled = True
        assert sum(int((ort[name] != plain[name]).sum()) for name in ort) > 0, kinds


def test_quantizer_rounds_as_quantize_linear():
    """On float values (not codes of an integer kernel) onnxruntime's QuantizeLinear rounds x / scale."""
    import onnxruntime as ort
    from fxcompress.quant.observers import CalibrationConfig
    g = torch.Generator().manual_seed(2)
    flipped = 0
    for scale, zero_point in ((0.00123, 0), (0.0314159, 37), (0.0039215, 128)):
        graph = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])], "q",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                                  [helper.make_tensor_value_info("q", TensorProto.UINT8, [None])],
                                  initializer=[numpy_helper.from_array(np.array(scale, np.float32), "s"),
                                               numpy_helper.from_array(np.array(zero_point, np.uint8), "z")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        x = (torch.rand(2_000_000, generator=g) * 300 - 40) * scale
        expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]) \
            .run(None, {"x": x.numpy()})[0].astype(np.float32)
        q = ActivationQuantizer(CalibrationConfig()).eval()
        q.scale.fill_(scale)
        q.zero_point.fill_(zero_point)
        q.mode = "quantize"
        q.divide = True
        assert np.array_equal((torch.round(q(x) / q.scale) + zero_point).numpy(), expected)
        q.divide = False   # torch.fake_quantize_per_tensor_affine: x * (1 / scale)
        flipped += int(((torch.round(q(x) / q.scale) + zero_point).numpy() != expected).sum())
    assert flipped > 0
