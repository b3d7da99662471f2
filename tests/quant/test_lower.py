"""The INT8 lowering of linear layers on 3-D / 4-D inputs (transformer MLPs, ConvNeXt's channels-last
pointwise layers): rewritten from MatMul + Add into a 1x1 convolution over the rows that onnxruntime fuses
into QLinearConv (quantized output, at least 16 outputs, inputs a multiple of 4) or a 2-D Gemm it fuses into
QGemm; the export check passes, and a wrong scale in the rewritten part fails it."""
import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

import fxcompress
from fxcompress.core.errors import VerificationError
from fxcompress.onnx.runtime import optimized_graph
from fxcompress.passes import ExportONNX, QuantizeINT8
from fxcompress.quant import lower
from fxcompress.quant.check import assert_faithful, int8_fidelity


class TokenMLP(nn.Module):
    """Linear layers on [batch, tokens, features], one followed by ReLU, one by GELU, a residual add."""

    def __init__(self, d=16):
        super().__init__()
        self.up, self.down, self.mix = nn.Linear(d, 2 * d), nn.Linear(2 * d, d), nn.Linear(d, d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        h = self.down(F.relu(self.up(x)))
        h = F.gelu(self.mix(h)) + x
        return self.head(h.mean(1))


class ChannelsLastBlock(nn.Module):
    """ConvNeXt's pattern: conv, permute to NHWC, two linear layers on the 4-D tensor, permute back."""

    def __init__(self, c=8):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.conv(x)
        h = self.pw2(F.gelu(self.pw1(x.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
        return self.head((x + h).mean((2, 3)))


def _export(model, shape, path, seed=0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    calib = [torch.randn(8, *shape, generator=g) for _ in range(4)]
    held = [(torch.randn(8, *shape, generator=g),) for _ in range(2)]
    result = fxcompress.compile(model.eval(), [QuantizeINT8(progress=False), ExportONNX(path)], (calib[0],),
                                calib_loader=calib, val_loader=[b[0] for b in held], progress=False)
    return result, held


@pytest.mark.parametrize("model,shape", [(TokenMLP, (5, 16)), (ChannelsLastBlock, (3, 6, 6))])
def test_nd_linear_layers_run_as_integer_kernels_and_pass_the_check(tmp_path, model, shape):
    torch.manual_seed(0)
    path = str(tmp_path / "m.onnx")
    result, _ = _export(model(), shape, path)
    metrics = result.report.records[-1].metrics
    linears = [n for n, m in result.model.named_modules() if isinstance(m, nn.Linear)]
    assert metrics["int8_mac_fraction"] == 1.0
    assert metrics["snr_lower_db"] >= metrics["snr_quant_db"] + 30   # emulated exactly, any rank
    ops = [n.op_type for n in optimized_graph(path).graph.node]
    # the head (2-D, float logits) and linear layers with under 16 outputs stay QGemm, the others 1x1 convs
    model_linears = dict(result.model.named_modules())
    as_conv = [n for n in linears if n != "head" and model_linears[n].out_features >= 16]
    assert ops.count("QLinearConv") - (model is ChannelsLastBlock) == len(as_conv) and as_conv
    assert ops.count("QGemm") == len(linears) - len(as_conv)
    # onnxruntime removed the layout transposes (ChannelsLastBlock keeps two: into and out of its NHWC stem conv)
    assert "MatMul" not in ops and ops.count("Transpose") == 2 * (model is ChannelsLastBlock)


class SharedMLP(nn.Module):
    """coat's parallel blocks: one MLP run on two branches of different scales (the exporter gives the shared
    weight one DequantizeLinear with a Transpose per call)."""

    def __init__(self, d=16):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        x2, x3 = self.a(x), 3.0 * self.b(x)
        return self.head((self.mlp(x2) + self.mlp(x3)).mean(1))


def test_a_linear_layer_shared_by_several_calls_runs_as_one_integer_kernel_per_call(tmp_path):
    """Each call becomes a 1x1 QLinearConv on the one int8 kernel (left as MatMulIntegerToFloat, it computed
    in float what the fake-quant model emulates in integers: coat_tiny's shared MLP had 1.2e-3 of its codes a
    step off)."""
    path = str(tmp_path / "m.onnx")
    result, _ = _export(SharedMLP(), (5, 16), path)
    metrics = result.report.records[-1].metrics
    ops = [n.op_type for n in optimized_graph(path).graph.node]
    assert "MatMulIntegerToFloat" not in ops and "MatMul" not in ops
    assert ops.count("QLinearConv") == 2 + 2 * 2          # a, b, and the MLP's two layers twice
    assert metrics["code_flip_fraction"] == 0 and metrics["int8_mac_fraction"] == 1.0
    kernels = [i for i in onnx.load(path).graph.initializer if list(i.dims) == [32, 16, 1, 1]]
    assert len(kernels) == 1                              # one kernel for both calls


def test_without_the_rewrite_the_file_is_refused(tmp_path, monkeypatch):
    """Left as MatMul on a transposed weight, onnxruntime runs the layers as MatMulIntegerToFloat (integer
    products, a float output the fake-quant model does not emulate): the kernel check follows the folded
    transposes and accepts the kernels, the code comparison refuses the file."""
    monkeypatch.setattr(lower, "lower_nd_linears", lambda model: model)
    with pytest.raises(VerificationError, match="does not compute what the fake-quant model computes"):
        _export(TokenMLP(), (5, 16), str(tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()


def test_wrong_scale_after_a_rewritten_layer_fails_the_check(tmp_path):
    path = str(tmp_path / "m.onnx")
    result, held = _export(TokenMLP(), (5, 16), path)
    proto = onnx.load(path)
    inits = {i.name: i for i in proto.graph.initializer}
    convs = {n.output[0] for n in proto.graph.node if n.op_type == "Conv" and n.name.endswith("_Conv")}
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in convs)   # down's
    scale = numpy_helper.to_array(inits[q.input[1]]) * np.float32(1.5)
    proto.graph.initializer.append(numpy_helper.from_array(scale, "bad_scale"))
    q.input[1] = "bad_scale"
    bad = str(tmp_path / "bad.onnx")
    onnx.save(proto, bad)
    metrics = int8_fidelity(bad, result.model, held)
    with pytest.raises(VerificationError, match="does not compute what the fake-quant model computes"):
        assert_faithful(metrics, bad)
