"""One-layer ONNX graphs: shapes as torch computes them, and the kernels onnxruntime runs them in (the INT8
QDQ form fuses into the integer kernels the whole INT8 model uses)."""
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from fxcompress.latency.graphs import layer_graph
from fxcompress.latency.layers import LayerSpec
from fxcompress.latency.runtime import RuntimeSpecError
from fxcompress.onnx.runtime import optimized_graph, ort_session
from fxcompress.quant.lower import count_ops

CONV = LayerSpec("conv", 16, 24, (3, 3), (2, 2), (1, 1), (1, 1), 1, (15, 15), False)
STEM = LayerSpec("conv", 3, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, (8, 8), False)
DEPTHWISE = LayerSpec("conv", 16, 16, (3, 3), (1, 1), (2, 2), (2, 2), 16, (8, 8), True)
LINEAR = LayerSpec("linear", 32, 20)


def ops_of(proto, tmp_path):
    path = str(tmp_path / "layer.onnx")
    onnx.save(proto, path)
    return count_ops(optimized_graph(path)), path


@pytest.mark.parametrize("spec", [CONV, STEM, DEPTHWISE, LINEAR])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_output_shape_is_torch_s(spec, precision, tmp_path):
    proto, feeds = layer_graph(spec, precision, batch=3)
    onnx.checker.check_model(proto)
    _, path = ops_of(proto, tmp_path)
    out = ort_session(path, threads=1).run(None, feeds)[0]
    if spec.kind == "conv":
        x = torch.zeros(3, spec.cin, *spec.spatial)
        w = torch.zeros(spec.cout, spec.cin // spec.groups, *spec.kernel)
        want = F.conv2d(x, w, None, spec.stride, spec.padding, spec.dilation, spec.groups).shape
    else:
        want = (3, spec.cout)
    assert tuple(out.shape) == tuple(want)
    assert out.dtype == (np.uint8 if precision == "int8" else np.float32)


@pytest.mark.parametrize("spec, kernel", [(CONV, "QLinearConv"), (DEPTHWISE, "QLinearConv"), (LINEAR, "QGemm")])
def test_int8_graphs_run_in_integer_kernels(spec, kernel, tmp_path):
    ops, _ = ops_of(layer_graph(spec, "int8", batch=2)[0], tmp_path)
    assert ops.get(kernel) == 1
    assert not {"Conv", "Gemm", "DequantizeLinear", "QuantizeLinear"} & set(ops)   # nothing left in float


def test_int8_stem_input_is_padded_to_four_channels_like_the_lowering():
    proto, feeds = layer_graph(STEM, "int8", batch=1)
    assert feeds["x"].shape[1] == 4
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim][1] == 4
    # the FP32 graph and grouped convs are left as they are
    assert layer_graph(STEM, "fp32", batch=1)[1]["x"].shape[1] == 3
    assert layer_graph(DEPTHWISE, "int8", batch=1)[1]["x"].shape[1] == 16


def test_fp32_conv_runs_as_one_conv_kernel(tmp_path):
    ops, _ = ops_of(layer_graph(CONV, "fp32", batch=2)[0], tmp_path)
    assert ops.get("Conv") == 1


def test_unknown_precision_is_refused():
    with pytest.raises(RuntimeSpecError, match="not precision 'fp16'"):
        layer_graph(CONV, "fp16", batch=1)
