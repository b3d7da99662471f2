"""One layer as a small ONNX graph, in the form the whole model takes on the runtime.

FP32: the Conv or Gemm alone. INT8: the QDQ form fxcompress's lowering writes (fxcompress/quant/lower.py):
a uint8 input dequantized, an int8 weight with per-output-channel scales, an int32 bias of scale
input x weight scale, the result quantized to uint8; onnxruntime fuses it into QLinearConv / QGemm as
it does in the whole model. Input channels of an ungrouped INT8 conv are padded to a multiple of 4 with
zero weights, as the lowering pads them (onnxruntime's fast symmetric kernel needs it). Weights are
random: the kernels' speed does not depend on the values.

    proto, feeds = layer_graph(LayerSpec("conv", 64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1, (56, 56)), "int8", 32)
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..quant.lower import INPUT_CHANNEL_ALIGNMENT
from .layers import LayerSpec
from .runtime import RuntimeSpecError

OPSET = 17


def _out_spatial(spec: LayerSpec) -> List[int]:
    return [(n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, s, p, d in zip(spec.spatial, spec.kernel, spec.stride, spec.padding, spec.dilation)]


def _padded_cin(spec: LayerSpec, precision: str) -> int:
    if precision == "int8" and spec.kind == "conv" and spec.groups == 1:
        return -(-spec.cin // INPUT_CHANNEL_ALIGNMENT) * INPUT_CHANNEL_ALIGNMENT
    return spec.cin


def layer_graph(spec: LayerSpec, precision: str, batch: int,
                seed: int = 0) -> Tuple[onnx.ModelProto, Dict[str, np.ndarray]]:
    """(the ONNX model of one layer at `batch`, its input feed); precision "fp32" or "int8"."""
    if precision not in ("fp32", "int8"):
        raise RuntimeSpecError(f"layer graphs are FP32 or INT8, not precision {precision!r}: use 'fp32' or 'int8'")
    rng = np.random.default_rng(seed)
    cin = _padded_cin(spec, precision)
    if spec.kind == "conv":
        in_shape = [batch, cin, *spec.spatial]
        out_shape = [batch, spec.cout, *_out_spatial(spec)]
        w_shape = [spec.cout, cin // spec.groups, *spec.kernel]
        attrs = dict(kernel_shape=list(spec.kernel), strides=list(spec.stride), pads=list(spec.padding) * 2,
                     dilations=list(spec.dilation), group=spec.groups)
        op = "Conv"
    else:
        in_shape, out_shape, w_shape = [batch, cin], [batch, spec.cout], [spec.cout, cin]
        attrs, op = dict(transB=1), "Gemm"
    if precision == "fp32":
        inits = [numpy_helper.from_array((rng.standard_normal(w_shape) * 0.05).astype(np.float32), "w")]
        inputs = ["x", "w"]
        if spec.bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(spec.cout).astype(np.float32), "b"))
            inputs.append("b")
        nodes = [helper.make_node(op, inputs, ["y"], name="layer", **attrs)]
        dtype, feed = TensorProto.FLOAT, rng.standard_normal(in_shape).astype(np.float32)
    else:
        # the bias is always int32 in the lowered model (BatchNorm folding gives every conv one)
        inits = [numpy_helper.from_array(np.float32(0.02), "x_scale"), numpy_helper.from_array(np.uint8(0), "x_zero"),
                 numpy_helper.from_array(rng.integers(-127, 128, w_shape).astype(np.int8), "w_q"),
                 numpy_helper.from_array(np.full(spec.cout, 0.01, np.float32), "w_scale"),
                 numpy_helper.from_array(np.zeros(spec.cout, np.int8), "w_zero"),
                 numpy_helper.from_array(rng.integers(-1000, 1000, spec.cout).astype(np.int32), "b_q"),
                 numpy_helper.from_array(np.full(spec.cout, 0.0002, np.float32), "b_scale"),
                 numpy_helper.from_array(np.float32(0.05), "y_scale"), numpy_helper.from_array(np.uint8(0), "y_zero")]
        nodes = [helper.make_node("DequantizeLinear", ["x", "x_scale", "x_zero"], ["x_dq"], name="x_dq"),
                 helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], axis=0, name="w_dq"),
                 helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["b_dq"], axis=0, name="b_dq"),
                 helper.make_node(op, ["x_dq", "w_dq", "b_dq"], ["y_float"], name="layer", **attrs),
                 helper.make_node("QuantizeLinear", ["y_float", "y_scale", "y_zero"], ["y"], name="y_q")]
        dtype, feed = TensorProto.UINT8, rng.integers(0, 256, in_shape).astype(np.uint8)
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", dtype, in_shape)],
                              [helper.make_tensor_value_info("y", dtype, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model, {"x": feed}
