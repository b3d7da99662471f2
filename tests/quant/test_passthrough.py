"""Pass-through ops (chunk/split, getitem, reshape...) share one quantizer, placed before them on the tensor they
move: YOLO's C2f SiLU -> chunk -> convs + concat quantizes the SiLU's output once, and onnxruntime slices the
codes; the INT8 check still passes bit for bit. A float reader of the tensor keeps the quantizers after the
split."""
import collections
import operator

import numpy as np
import onnx
import pytest
import torch
import torch.fx as fx
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

import fxcompress
from fxcompress.fold.batchnorm import fold_batchnorms
from fxcompress.graph.shapes import record_shapes
from fxcompress.onnx.runtime import optimized_graph
from fxcompress.passes import ExportONNX, FoldBatchNorm, QuantizeINT8
from fxcompress.quant.insert import plan_quantization
from fxcompress.quant.passthrough import shapes_of_codes


class C2fLike(nn.Module):
    """YOLOv8's C2f: conv-BN-SiLU, its output split in two (chunk, or split with sizes as YOLO11's C2PSA), each
    piece into a conv and all into a concat."""

    def __init__(self, c=16, how="chunk", act=nn.SiLU, float_reader=False):
        super().__init__()
        self.cv1 = nn.Sequential(nn.Conv2d(3, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), act())
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.cv2 = nn.Conv2d(4 * c, 8, 1)
        self.c, self.how, self.float_reader = c, how, float_reader

    def forward(self, x):
        h = self.cv1(x)
        y0, y1 = h.chunk(2, 1) if self.how == "chunk" else h.split((self.c, self.c), 1)
        out = self.cv2(torch.cat([y0, y1, self.a(y0), self.b(y1)], 1))
        return (out, h.mean((2, 3))) if self.float_reader else out   # the mean reads h in float


def _calib():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 16, 16, generator=g) for _ in range(3)]


def _export(model, path):
    torch.manual_seed(0)
    calib = _calib()
    return fxcompress.compile(model.eval(), [FoldBatchNorm(), QuantizeINT8(progress=False), ExportONNX(path)],
                              (calib[0],), calib_loader=calib, val_loader=calib[:1], progress=False)


def _plan(model):
    gm = fx.symbolic_trace(model.eval())
    fold_batchnorms(gm)   # as QuantizeINT8 does first: conv -> SiLU
    gm.recompile()
    record_shapes(gm, (torch.randn(2, 3, 16, 16),))
    return gm, plan_quantization(gm)


def _is_quantizer(gm, node) -> bool:
    from fxcompress.quant.fake_quant import ActivationQuantizer
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), ActivationQuantizer)


def _node(gm, name):
    return next(n for n in gm.graph.nodes if n.name == name)


@pytest.mark.parametrize("how", ["chunk", "split"])
def test_the_quantizer_sits_before_the_split_and_the_pieces_share_it(how):
    gm, plan = _plan(C2fLike(how=how))
    act = _node(gm, "cv1_2")
    pieces = [n for n in gm.graph.nodes if n.target is operator.getitem]
    owner = plan.shared.get(act, act)   # the concat's quantizer, which act takes (quant/concat_scale.py)
    assert owner in plan.quantized and len(pieces) == 2
    assert not any(p in plan.quantized for p in pieces)
    assert all(plan.shared[p] is owner for p in pieces)


@pytest.mark.parametrize("how", ["chunk", "split"])
def test_silu_before_a_split_is_quantized_once_and_the_pieces_are_cut_from_its_codes(tmp_path, how):
    path = str(tmp_path / "m.onnx")
    result = _export(C2fLike(how=how), path)
    optimized = optimized_graph(path).graph
    ops = collections.Counter(n.op_type for n in optimized.node)
    assert ops["Sigmoid"] == 0 and ops["QLinearConv"] == 4
    # after the split, one quantizer per piece: a QuantizeLinear after each piece. Before it, the SiLU's one
    # QuantizeLinear feeds the split, whose pieces go to integer kernels as codes
    producer = {o: n for n in optimized.node for o in n.output}
    splits = [n for n in optimized.node if n.op_type in ("Split", "Slice")]
    assert splits and all(producer[n.input[0]].op_type == "QuantizeLinear" for n in splits)
    assert ops["QuantizeLinear"] == 1 + ops["QuickGelu"]   # the input's and each SiLU's own
    metrics = result.report.records[-1].metrics
    assert metrics["max_code_step"] == 0 and metrics["code_flip_fraction"] == 0
    assert metrics["snr_forced_db"] == float("inf")


def test_a_float_reader_keeps_the_quantizers_after_the_split(tmp_path):
    gm, plan = _plan(C2fLike(float_reader=True))
    act = _node(gm, "cv1_2")
    pieces = [n for n in gm.graph.nodes if n.target is operator.getitem and n.args[0].name == "chunk"]
    assert act not in plan.quantized and act not in plan.shared
    # each piece is quantized after the split (by the concat's quantizer: quant/concat_scale.py), not with act
    assert all(plan.shared.get(p, p) in plan.quantized and plan.shared.get(p) is not act for p in pieces)
    # and the export is as exact as ever (the SiLU stays float, read by the mean as it was)
    result = _export(C2fLike(float_reader=True), str(tmp_path / "m.onnx"))
    metrics = result.report.records[-1].metrics
    assert metrics["max_code_step"] == 0 and metrics["code_flip_fraction"] == 0


class ShapeRead(nn.Module):
    """A SiLU whose output's shape is read (x.shape[1] // 2: metadata, no value) and split by slicing."""

    def __init__(self, c=8):
        super().__init__()
        self.cv1, self.act = nn.Conv2d(3, 2 * c, 1), nn.SiLU()
        self.a, self.b = nn.Conv2d(c, 4, 1), nn.Conv2d(c, 4, 1)

    def forward(self, x):
        h = self.act(self.cv1(x))
        half = h.shape[1] // 2
        return self.a(h[:, :half]) + self.b(h[:, half:])


def test_metadata_reads_and_slices_move_the_quantizer_up_too():
    gm, plan = _plan(ShapeRead())
    act = _node(gm, "act")
    slices = [n for n in gm.graph.nodes if n.target is operator.getitem and n.args[0] is act]
    assert act in plan.quantized and len(slices) == 2 and all(plan.shared[s] is act for s in slices)


def test_a_relu_before_the_split_still_takes_its_convs_quantization():
    gm, plan = _plan(C2fLike(act=nn.ReLU))
    conv, relu = _node(gm, "cv1_0"), _node(gm, "cv1_2")
    assert relu in plan.quantized and conv not in plan.quantized    # the lowering drops the ReLU


def test_shape_reads_the_codes_and_the_unread_dequantize_goes():
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["x"]),
             helper.make_node("Shape", ["x"], ["shape"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("q", TensorProto.UINT8, [2, 3])],
                              [helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                              initializer=[numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                                           numpy_helper.from_array(np.array(3, np.uint8), "z")])
    model = shapes_of_codes(helper.make_model(graph))
    assert [(n.op_type, list(n.input)) for n in model.graph.node] == [("Shape", ["q"])]


def test_yolov8n_quantizes_every_silu_once_and_splits_codes(tmp_path):
    """The 8 SiLUs feeding C2f's chunk were quantized after the split, once per piece; now each of the 57 SiLUs
    has one quantizer, and the chunks cut uint8 codes."""
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    torch.manual_seed(0)
    model = tasks.DetectionModel("yolov8n.yaml", verbose=False).eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(2, 3, 64, 64, generator=g) for _ in range(2)]
    path = str(tmp_path / "yolov8n.onnx")
    result = fxcompress.compile(model, [FoldBatchNorm(), QuantizeINT8(progress=False), ExportONNX(path)],
                                (calib[0][:1],), calib_loader=calib, progress=False)
    ops = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    assert ops["QuickGelu"] == 57 and ops["Sigmoid"] == 1   # the class scores' sigmoid, an output
    optimized = optimized_graph(path).graph
    producer = {o: n for n in optimized.node for o in n.output}
    readers = collections.Counter(i for n in optimized.node for i in n.input)
    gelus = [n for n in optimized.node if n.op_type == "QuickGelu"]
    assert len(gelus) == 57 and all(readers[n.output[0]] == 1 for n in gelus)
    splits = [n for n in optimized.node if n.op_type in ("Split", "Slice") and n.input[0] in producer]
    channel_splits = [n for n in splits if producer[n.input[0]].op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(channel_splits) >= 8 and all(producer[n.input[0]].op_type == "QuantizeLinear" for n in channel_splits)
    metrics = result.report.records[-1].metrics
    assert metrics["max_code_step"] == 0 and metrics["code_flip_fraction"] == 0


class ValueRead(ShapeRead):
    """As ShapeRead, and a comparison on the SiLU's values (PASSIVE for channels, but it reads every value)."""

    def forward(self, x):
        h = self.act(self.cv1(x))
        half = h.shape[1] // 2
        return self.a(h[:, :half]) + self.b(h[:, half:]), (h == 0).sum()


def test_a_comparison_on_the_values_keeps_the_quantizers_after_the_slices():
    gm, plan = _plan(ValueRead())
    assert _node(gm, "act") not in plan.quantized


class FusedMBConvLike(nn.Module):
    """EfficientNetV2's fused block: conv-BN-SiLU, then torchvision's stochastic depth (identity in eval, gone
    from the ONNX file), then the residual add."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.SiLU())
        self.block = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.SiLU())
        self.head = nn.Conv2d(c, 8, 1)
        import torchvision   # its StochasticDepth calls the fx-wrapped function: a node of the graph
        self.stochastic_depth = torchvision.ops.StochasticDepth(0.2, "row")

    def forward(self, x):
        h = self.stem(x)
        return self.head(h + self.stochastic_depth(self.block(h)))


def test_a_silu_before_stochastic_depth_is_followed_by_its_quantizer(tmp_path):
    """Stochastic depth is gone from the file: the SiLU's QuantizeLinear follows it directly there, and so must
    the fake-quant model's quantizer."""
    path = str(tmp_path / "m.onnx")
    result = _export(FusedMBConvLike(), path)
    ops = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    assert ops["QuickGelu"] == 2 and ops["Sigmoid"] == 0
    gm = result.model
    depth = next(n for n in gm.graph.nodes if "stochastic_depth" in n.name)
    assert _is_quantizer(gm, depth.args[0])   # the SiLU's quantizer, before stochastic depth
    metrics = result.report.records[-1].metrics
    assert metrics["max_code_step"] == 0 and metrics["code_flip_fraction"] == 0
