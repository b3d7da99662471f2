import os

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxcompress
from fxcompress.core.errors import DataError, PassError, VerificationError
from fxcompress.onnx.runtime import ort_session, run_ort
from fxcompress.onnx.write import to_onnx_proto
from fxcompress.passes import ExportONNX, FoldBatchNorm, QuantizeINT8
from fxcompress.onnx.runtime import optimized_graph
from fxcompress.quant.check import assert_faithful, int8_fidelity, snr_db
from fxcompress.quant.emulate import float_mode
from fxcompress.quant.lower import integer_kernel_check


class ResidualNet(nn.Module):
    """Conv/BN/ReLU stem, max-pool, a residual block (functional relu, add), a ReLU6 block and a classifier:
    every role of the quantization registry."""

    def __init__(self, width=64, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.dw = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width), nn.BatchNorm2d(width), nn.ReLU6())
        self.expand = nn.Conv2d(width, 2 * width, 1)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.pool(self.stem(x))
        y = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(y)) + x)
        x = self.expand(self.dw(x))
        return self.fc(torch.flatten(self.avg(x), 1))


PATTERNS = torch.randn(10, 3, 16, 16, generator=torch.Generator().manual_seed(123))


def _synthetic(n_batches=4, batch=16, seed=1):
    """A separable 10-class task (a fixed pattern per class plus noise), so a briefly trained model is
    confident and top-1 agreement measures the lowering rather than near-ties of a random model."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        y = torch.randint(0, 10, (batch,), generator=g)
        batches.append((PATTERNS[y] + torch.randn(batch, 3, 16, 16, generator=g), y))
    return batches


def _trained_like(model, steps=40):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for x, y in _synthetic(steps, 32, seed=99):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _calib(n_batches=4, batch=16, seed=1):
    return _synthetic(n_batches, batch, seed)


@pytest.fixture(scope="module")
def model():
    return _trained_like(ResidualNet())


@pytest.fixture(scope="module")
def kl_export(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "model_int8.onnx"
    result = fxcompress.compile(model, [FoldBatchNorm(), QuantizeINT8(method="kl"), ExportONNX(str(out))],
                                torch.randn(2, 3, 16, 16), calib_loader=_calib(), progress=False)
    return result, str(out)


def test_int8_export_runs_integer_kernels_for_every_layer(kl_export):
    result, path = kl_export
    quant, export = result.report.records[1], result.report.records[2]
    assert quant.metrics["quantized_layers"] == 6
    # the export verified it in code: every quantized layer is an integer kernel in ORT's optimized graph
    assert export.metrics["int8_layers"] == 6
    assert export.metrics["int8_mac_fraction"] == 1.0
    assert export.metrics["float_conv_matmul_left"] == 0
    # the lowering adds far less noise than quantization (the export enforced it; the figures are reported)
    assert export.metrics["max_code_step"] <= 1 and export.metrics["quantizer_calls_compared"] > 0
    assert {"snr_quant_db", "top1_agreement", "check_samples"} <= set(export.metrics)
    # and independently here
    ops = [n.op_type for n in optimized_graph(path).graph.node]
    assert ops.count("QLinearConv") == 5 and "QGemm" in ops
    assert not {"Conv", "FusedConv", "Gemm", "MatMul"} & set(ops)


def test_int8_file_is_int8_and_small(kl_export, model, tmp_path):
    _, path = kl_export
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    int8_weights = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert len(int8_weights) == 6
    assert not [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2]
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(to_onnx_proto(model, (torch.randn(1, 3, 16, 16),)), str(fp32))
    assert os.path.getsize(path) <= 0.30 * os.path.getsize(fp32)


def test_fake_quant_graph_is_what_onnxruntime_runs_on_fresh_data(kl_export):
    """The fake-quant model emulates the integer kernels: onnxruntime's output on data neither calibration
    nor the export check saw is the fake-quant output up to float32 rounding of the logits."""
    result, path = kl_export
    x = torch.cat([b[0] for b in _synthetic(4, 16, seed=7)])
    with torch.no_grad():
        expected = result.model(x)
        with float_mode(result.model):
            fp32 = result.model(x)
    got = torch.from_numpy(run_ort(ort_session(path), (x,))[0])
    assert snr_db(got, expected) > snr_db(expected, fp32) + 20
    metrics = int8_fidelity(path, result.model, [(x,)])
    assert_faithful(metrics, path)   # the same rule the export applies, on other data
    assert metrics["max_code_step"] <= 1 and metrics["quantizer_calls_compared"] > 0


@pytest.mark.parametrize("kwargs", [dict(method="minmax"), dict(method="percentile", percentile=99.9),
                                    dict(method="kl", per_channel=False)])
def test_other_methods_export(model, tmp_path, kwargs):
    out = tmp_path / "m.onnx"
    result = fxcompress.compile(model, [QuantizeINT8(**kwargs), ExportONNX(str(out))], torch.randn(1, 3, 16, 16),
                                calib_loader=_calib(2), progress=False)
    metrics = result.report.records[-1].metrics
    assert result.report.records[0].metrics["bn_folded"] == 4      # folded even without FoldBatchNorm
    assert metrics["int8_mac_fraction"] == 1.0 and metrics["max_code_step"] <= 1


class Slim(ResidualNet):
    """ResidualNet with channels removed by hand, as a pruner leaves it (odd widths)."""

    def __init__(self):
        super().__init__(width=64)
        self.stem[0], self.stem[1] = nn.Conv2d(3, 37, 3, padding=1, bias=False), nn.BatchNorm2d(37)
        self.conv1, self.bn1 = nn.Conv2d(37, 13, 3, padding=1, bias=False), nn.BatchNorm2d(13)
        self.conv2, self.bn2 = nn.Conv2d(13, 37, 3, padding=1, bias=False), nn.BatchNorm2d(37)
        self.dw = nn.Sequential(nn.Conv2d(37, 37, 3, padding=1, groups=37), nn.BatchNorm2d(37), nn.ReLU6())
        self.expand = nn.Conv2d(37, 50, 1)
        self.fc = nn.Linear(50, 10)


def test_pruned_model_quantizes_and_exports(tmp_path):
    out = tmp_path / "slim.onnx"
    result = fxcompress.compile(_trained_like(Slim()), [FoldBatchNorm(), QuantizeINT8(), ExportONNX(str(out))],
                                torch.randn(1, 3, 16, 16), calib_loader=_calib(2), progress=False)
    metrics = result.report.records[-1].metrics
    assert metrics["int8_layers"] == 6 and metrics["int8_mac_fraction"] == 1.0 and out.exists()


def test_magnitude_pruned_model_quantizes_and_exports(tmp_path):
    """The real pipeline: physical channel removal, then BN folding and INT8 lowering of the slimmer graph."""
    from fxcompress.passes import MagnitudePrune
    out = tmp_path / "pruned_int8.onnx"
    model = _trained_like(ResidualNet(width=32))
    result = fxcompress.compile(model, [MagnitudePrune(ratio=0.5, round_to=8), FoldBatchNorm(), QuantizeINT8(),
                                        ExportONNX(str(out))], torch.randn(1, 3, 16, 16), calib_loader=_calib(2),
                                progress=False)
    prune, export = result.report.records[0], result.report.records[-1]
    assert prune.macs_after < 0.6 * prune.macs_before
    assert export.metrics["int8_mac_fraction"] == 1.0 and export.metrics["float_conv_matmul_left"] == 0
    assert export.metrics["max_code_step"] <= 1


def test_empty_calibration_loader(model, tmp_path):
    out = tmp_path / "never.onnx"
    with pytest.raises(DataError, match="calib_loader yielded no batches"):
        fxcompress.compile(model, [QuantizeINT8(), ExportONNX(str(out))], torch.randn(1, 3, 16, 16),
                           calib_loader=[], progress=False)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_non_finite_calibration_batch(model, tmp_path):
    out = tmp_path / "never.onnx"
    bad = _calib(3)
    bad[2][0][0, 0, 0, 0] = float("inf")
    with pytest.raises(DataError, match="batch 2 contains NaN or Inf"):
        fxcompress.compile(model, [QuantizeINT8(), ExportONNX(str(out))], torch.randn(1, 3, 16, 16),
                           calib_loader=bad, progress=False)
    assert not list(tmp_path.iterdir())


def test_thin_input_conv_can_stay_float(model, tmp_path):
    out = tmp_path / "float_stem.onnx"
    result = fxcompress.compile(model, [QuantizeINT8(min_input_channels=4), ExportONNX(str(out))],
                                torch.randn(1, 3, 16, 16), calib_loader=_calib(2), progress=False)
    quant, export = result.report.records[0].metrics, result.report.records[-1].metrics
    assert list(quant["kept_float"]) == ["stem.0"] and "3 input channel" in quant["kept_float"]["stem.0"]
    assert quant["quantized_layers"] == 5 and 0.5 < export["int8_mac_fraction"] < 1.0
    ops = [n.op_type for n in optimized_graph(str(out)).graph.node]
    assert ops.count("QLinearConv") == 4 and sum(op in ("Conv", "FusedConv") for op in ops) == 1
    assert export["max_code_step"] <= 1


def test_bad_options_fail_at_construction():
    with pytest.raises(PassError, match="min_input_channels"):
        QuantizeINT8(min_input_channels=0)
    with pytest.raises(PassError, match="unknown calibration method 'max'"):
        QuantizeINT8(method="max")
    with pytest.raises(PassError, match="calib_batches"):
        QuantizeINT8(calib_batches=0)


def test_missing_calib_loader(model):
    with pytest.raises(PassError, match="calib_loader"):
        fxcompress.compile(model, [QuantizeINT8()], torch.randn(1, 3, 16, 16), progress=False)


def test_integer_kernel_check_names_float_layers():
    from onnx import helper
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w_q"], ["y"]),
                               helper.make_node("QLinearConv", ["a"] * 3 + ["w2_q"] + ["b"] * 4, ["z"])],
                              "g", [], [])
    with pytest.raises(VerificationError, match="layer1 \\(Conv\\)"):
        integer_kernel_check(helper.make_model(graph), {"w_q": "layer1", "w2_q": "layer2"})
    assert integer_kernel_check(helper.make_model(graph), {"w2_q": "layer2"}) == {"layer2": "QLinearConv"}


def test_integer_kernel_check_follows_a_weight_onnxruntime_rewrote():
    """A module called twice (CoaT's shared MLP) reads its int8 weight through a Transpose per call; onnxruntime
    folds those into new initializers, so the weight itself is unread in the optimized graph: the nodes it fed
    in the file are found by name, and each must be an integer kernel."""
    from onnx import helper
    lowered = helper.make_model(helper.make_graph([
        helper.make_node("DequantizeLinear", ["w_q", "s"], ["w"], name="dq"),
        helper.make_node("Transpose", ["w"], ["wt1"], name="t1"), helper.make_node("Transpose", ["w"], ["wt2"], name="t2"),
        helper.make_node("MatMul", ["x1", "wt1"], ["y1"], name="/fc_1/MatMul"),
        helper.make_node("MatMul", ["x2", "wt2"], ["y2"], name="/fc_2/MatMul")], "g", [], []))

    def optimized(second: str):
        return helper.make_model(helper.make_graph([
            helper.make_node("MatMulIntegerToFloat", ["x1", "w_folded_1", "s"], ["y1"], name="/fc_1/MatMul"),
            helper.make_node(second, ["x2", "w_folded_2", "s"], ["y2"], name="/fc_2/MatMul")], "g", [], []))
    assert integer_kernel_check(optimized("MatMulIntegerToFloat"), {"w_q": "fc"}, lowered) == \
        {"fc": "MatMulIntegerToFloat"}
    with pytest.raises(VerificationError, match="fc \\(MatMulIntegerToFloat, MatMul\\)"):   # one call left in float
        integer_kernel_check(optimized("MatMul"), {"w_q": "fc"}, lowered)
    with pytest.raises(VerificationError, match="fc \\(no consumer\\)"):   # without the file: as before
        integer_kernel_check(optimized("MatMulIntegerToFloat"), {"w_q": "fc"})


def _loss(model, batches):
    with torch.no_grad():
        return float(sum(F.cross_entropy(model(x), y) for x, y in batches) / len(batches))


def test_qat_changes_the_weights_and_lowers_the_quantized_loss(tmp_path):
    """QAT trains the fake-quant model itself: weights move, its loss on the training data drops, and the
    result still lowers to a verified INT8 file."""
    torch.manual_seed(0)
    base = _trained_like(ResidualNet(width=16), steps=15)   # under-trained: QAT has something to learn
    train = _synthetic(8, 16, seed=5)
    x = torch.randn(1, 3, 16, 16)
    plain = fxcompress.compile(base, [QuantizeINT8()], x, calib_loader=_calib(2), progress=False).model
    out = tmp_path / "qat.onnx"
    result = fxcompress.compile(base, [QuantizeINT8(qat_epochs=3, qat_lr=0.05), ExportONNX(str(out))], x,
                                calib_loader=_calib(2), train_loader=train, progress=False)
    qat = result.model
    assert result.report.records[0].metrics["qat_epochs"] == 3
    moved = [n for n, p in qat.named_parameters() if not torch.equal(p, dict(plain.named_parameters())[n])]
    assert len(moved) >= 6
    assert _loss(qat, train) < 0.97 * _loss(plain, train)   # measured: 2.24 -> 2.13
    export = result.report.records[-1].metrics
    assert export["int8_mac_fraction"] == 1.0 and export["max_code_step"] <= 1


def test_quantize_checks_its_own_batchnorm_folding(model, monkeypatch):
    """QuantizeINT8 folds BatchNorms itself: that folding is checked exactly, like FoldBatchNorm's."""
    from fxcompress.fold import batchnorm

    def wrong_fold(module, bn):   # forgets the shift
        scale, _ = batchnorm.bn_scale_shift(bn)
        with torch.no_grad():
            module.weight.mul_(scale.view(-1, *[1] * (module.weight.dim() - 1)).to(module.weight.dtype))
    monkeypatch.setattr(batchnorm, "fold_bn_into", wrong_fold)
    with pytest.raises(VerificationError, match="QuantizeINT8's BatchNorm folding"):
        fxcompress.compile(model, [QuantizeINT8()], torch.randn(2, 3, 16, 16), calib_loader=_calib(2),
                           progress=False)


def test_quantizing_twice_is_refused(model):
    with pytest.raises(PassError, match="already quantized"):
        fxcompress.compile(model, [QuantizeINT8(), QuantizeINT8()], torch.randn(1, 3, 16, 16),
                           calib_loader=_calib(2), progress=False)


def test_rgb_stem_is_padded_to_four_input_channels_with_identical_results(model, tmp_path):
    from fxcompress.quant.lower import align_conv_input_channels
    out = tmp_path / "aligned.onnx"
    fxcompress.compile(model, [QuantizeINT8(), ExportONNX(str(out))], torch.randn(1, 3, 16, 16),
                       calib_loader=_calib(2), progress=False)
    aligned = onnx.load(str(out))
    assert [n.op_type for n in aligned.graph.node].count("Pad") == 1
    stem_weight = next(i for i in aligned.graph.initializer if i.data_type == onnx.TensorProto.INT8
                       and len(i.dims) == 4 and i.dims[1] == 4)
    assert stem_weight.dims[0] == 64
    # undo the padding by hand: the same model with 3 input channels gives the same outputs, bit for bit
    plain = onnx.load(str(out))
    pad = next(n for n in plain.graph.node if n.op_type == "Pad")
    dq = next(n for n in plain.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == pad.output[0])
    dq.input[0] = pad.input[0]
    plain.graph.node.remove(pad)
    w = next(i for i in plain.graph.initializer if i.name == stem_weight.name)
    w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w)[:, :3], w.name))
    plain_path = tmp_path / "plain.onnx"
    onnx.save(plain, str(plain_path))
    x = torch.cat([b[0] for b in _synthetic(2, 8, seed=3)])
    got = run_ort(ort_session(str(out)), (x,))[0]
    expected = run_ort(ort_session(str(plain_path)), (x,))[0]
    assert np.array_equal(got, expected)
    ops = [n.op_type for n in optimized_graph(str(out)).graph.node]
    assert ops.count("QLinearConv") == 5 and "Conv" not in ops
    assert "DequantizeLinear" not in ops   # the unpadded input's dequantization went with its only reader
    # aligned convs are left alone
    again = align_conv_input_channels(onnx.load(str(out)))
    assert [n.op_type for n in again.graph.node].count("Pad") == 1


class DeadChannelNet(nn.Module):
    """A conv pruned to one output channel that a ReLU always zeroes (what ResRep left in a trained
    ResNet-20), read by a conv with large biases; `tiny` gives that channel a minute non-zero range instead."""

    def __init__(self, tiny=False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.narrow = nn.Conv2d(16, 1, 3, padding=1)
        self.wide = nn.Conv2d(1, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)
        with torch.no_grad():
            self.narrow.weight.mul_(1e-9 if tiny else 0.0)
            self.narrow.bias.fill_(1e-9 if tiny else -100.0)
            self.wide.bias.uniform_(-3.0, 3.0)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.wide(F.relu(self.narrow(x)))) + x
        return self.fc(x.mean((2, 3)))


@pytest.mark.filterwarnings("error::RuntimeWarning")   # an int32 bias cast out of range wraps around
@pytest.mark.parametrize("tiny", [False, True])
def test_dead_or_minute_channel_keeps_the_lowering_exact(tmp_path, tiny):
    """A dead channel gets a unit range (observers.range_to_qparams); a minute one overflows the next layer's
    int32 bias, which the lowering saturates and the emulation saturates alike. Both failed the INT8 check
    (15 dB against 42 dB required on the ResRep-pruned ResNet-20) before."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 3, 8, 8, generator=g) for _ in range(3)]
    held = [torch.randn(8, 3, 8, 8, generator=g) for _ in range(2)]
    result = fxcompress.compile(DeadChannelNet(tiny).eval(), [QuantizeINT8(progress=False),
                                                              ExportONNX(str(tmp_path / "d.onnx"))],
                                (calib[0],), calib_loader=calib, val_loader=held, progress=False)
    m = result.report.records[-1].metrics
    assert m["snr_lower_db"] >= m["snr_quant_db"] + 30


def test_quantize_batchnorm_folding_check_uses_the_exact_fold():
    """The float32 rounding of folded weights, amplified past the tolerance, is not a folding error."""
    from tests.passes.test_fold_batchnorm import Cancelling
    torch.manual_seed(0)
    model = Cancelling().eval()
    x = torch.randn(64, 16)
    result = fxcompress.compile(model, [QuantizeINT8()], x, calib_loader=[(x, torch.zeros(64))], progress=False)
    assert result.report.records[0].metrics["bn_folded"] == 1


def test_after_qat_every_weight_code_fits_its_bits():
    """QAT's last optimizer step moves the weights after their scales were taken: the scales are refreshed, so
    a 7-bit weight never reaches code 65 (which could saturate an int16 pair on AVX2 without VNNI)."""
    from fxcompress.quant.fake_quant import WeightQuantizer
    torch.manual_seed(0)
    base = _trained_like(ResidualNet(width=16), steps=15)
    result = fxcompress.compile(base, [QuantizeINT8(qat_epochs=2, qat_lr=0.2, weight_bits=7)],
                                torch.randn(1, 3, 16, 16), calib_loader=_calib(2),
                                train_loader=_synthetic(8, 16, seed=5), progress=False)
    assert result.report.records[0].metrics["weight_bits"] == 7
    layers = 0
    for m in result.model.modules():
        if hasattr(m, "parametrizations"):
            (wq,) = [p for p in m.parametrizations.weight if isinstance(p, WeightQuantizer)]
            w = m.parametrizations.weight.original.detach()
            top = w.abs().reshape(w.shape[0], -1).amax(dim=1)
            # every channel's largest weight is within 64 steps (stale scales: about half of them are not)
            assert (wq.scale * 64 >= top * (1 - 1e-6)).all(), m
            layers += 1
    assert layers >= 6
