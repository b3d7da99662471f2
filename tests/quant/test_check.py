"""The INT8 export check can fail: faults injected into a lowered file (a wrong scale, a wrong zero point,
a transposed weight) make onnxruntime's codes differ from the fake-quant model's given the same inputs, at
the faulty layer; the clean file agrees code for code. The same rule as ExportONNX
(quant.check.assert_faithful)."""
import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

import fxcompress
from fxcompress.core.errors import VerificationError
from fxcompress.passes import ExportONNX, QuantizeINT8
from fxcompress.quant.check import assert_faithful, int8_fidelity, snr_db


class Net(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.b(self.a(x)) + x)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


PATTERNS = torch.randn(10, 3, 12, 12, generator=torch.Generator().manual_seed(7))


def batches(n, seed, labels=False):
    """A separable task (a pattern per class plus noise): a briefly trained model is confident, so its
    quantization noise is low and the check's bar high."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.randint(0, 10, (16,), generator=g)
        x = PATTERNS[y] + torch.randn(16, 3, 12, 12, generator=g)
        out.append((x, y) if labels else x)
    return out


@pytest.fixture(scope="module")
def lowered(tmp_path_factory):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for x, y in batches(30, 0, labels=True):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    path = str(tmp_path_factory.mktemp("check") / "net.onnx")
    result = fxcompress.compile(model, [QuantizeINT8(), ExportONNX(path)], torch.randn(2, 3, 12, 12),
                                calib_loader=batches(3, 1), progress=False)
    held_out = [(x,) for x in batches(2, 2)]
    assert result.report.records[-1].metrics["snr_quant_db"] > 20
    return result, path, held_out


def _activation_node(proto, op_type, index):
    inits = {i.name for i in proto.graph.initializer}
    nodes = [n for n in proto.graph.node if n.op_type == op_type and n.input[0] not in inits]
    return nodes[index]


def _replace_input(proto, node, i, array, name):
    proto.graph.initializer.append(numpy_helper.from_array(array, name))
    node.input[i] = name


def _inject(path, tmp_path, fault):
    proto = onnx.load(path)
    inits = {i.name: i for i in proto.graph.initializer}
    # onnxruntime's QDQ fusion reads an activation's scale and zero point from the QuantizeLinear that makes
    # it (a DequantizeLinear feeding a fused conv is not consulted): faults go where onnxruntime reads them
    if fault == "scale":        # the stem's output quantized with a 1.5x scale
        q = _activation_node(proto, "QuantizeLinear", 1)
        _replace_input(proto, q, 1, numpy_helper.to_array(inits[q.input[1]]) * np.float32(1.5), "bad_scale")
    elif fault == "zero_point":  # the classifier reads its input codes 10 steps off
        dq = _activation_node(proto, "DequantizeLinear", -1)
        zp = numpy_helper.to_array(inits[dq.input[2]]).astype(np.int32) + 10
        _replace_input(proto, dq, 2, np.clip(zp, 0, 255).astype(np.uint8), "bad_zero_point")
    elif fault == "transposed_weight":  # a square int8 conv weight with its in/out channel axes swapped
        w = next(i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4
                 and i.dims[0] == i.dims[1])
        w.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(w).transpose(1, 0, 2, 3)),
                                           w.name))
    out = str(tmp_path / f"{fault}.onnx")
    onnx.save(proto, out)
    return out


def test_clean_file_passes_with_a_wide_margin(lowered):
    result, path, held_out = lowered
    metrics = int8_fidelity(path, result.model, held_out)
    assert_faithful(metrics, path)
    assert metrics["snr_lower_db"] >= metrics["snr_quant_db"] + 30   # the emulation is (nearly) bit-exact
    export = result.report.records[-1].metrics
    assert export["max_code_step"] <= 1 and export["code_flip_fraction"] <= 1e-3


@pytest.mark.parametrize("fault,culprit", [("scale", "quantizer 'act_quant_stem_2'"),
                                           ("transposed_weight", "quantizer 'act_quant_a_2'"),
                                           ("zero_point", "after its last quantizers")])
def test_injected_faults_fail_the_check_naming_where(lowered, tmp_path, fault, culprit):
    """The wrong scale and the transposed weight flip most codes of the quantizer after the faulty layer
    (measured: 48% and 72% of the codes, up to 84 and 255 steps); the classifier reading its input 10 codes
    off has no quantizer after it: the outputs computed from the forced codes disagree."""
    result, path, held_out = lowered
    bad = _inject(path, tmp_path, fault)
    metrics = int8_fidelity(bad, result.model, held_out)
    with pytest.raises(VerificationError, match="does not compute what the fake-quant model computes") as error:
        assert_faithful(metrics, bad)
    assert culprit in str(error.value)


def test_snr_db():
    x = torch.randn(1000, dtype=torch.float64)
    assert snr_db(x, x) == float("inf")
    assert abs(snr_db(x + 0.1 * x, x) - 20.0) < 1e-9   # noise a tenth of the signal: 20 dB
