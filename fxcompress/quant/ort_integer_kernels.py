"""What this CPU's onnxruntime integer kernels compute where they differ from exact int32 arithmetic.

MLAS's u8 x s8 GEMM (QLinearConv, QGemm, MatMulInteger) on a CPU with AVX2 but no VNNI multiplies with
VPMADDUBSW: each pair of adjacent products along the reduction axis is summed in int16 and saturates. Two
products of 8-bit weights reach 2 x 255 x 127 = 64770 > 32767, so a layer whose activation codes are high
where its weights are large gets a clipped sum, a different output code, and no error. Measured on an AMD
EPYC 7xx3 (AVX2 only), onnxruntime 1.32: a constant 255 x 127 over 64 channels gives 1048544 (32 x 32767)
instead of 2072640; yolov8n's stem conv had a quarter of its codes up to 42 steps off. With VNNI
(AVX512-VNNI or AVX-VNNI: VPDPBUSD accumulates in int32) the sums are exact. onnxruntime's own quantizer
offers `reduce_range` (7-bit weights) for this; 7-bit weights in [-64, 64] keep every pair within int16
(2 x 255 x 64 = 32640).

`ort_u8s8_saturates()` runs one QLinearConv and one MatMulInteger on those extreme codes, once per process,
and QuantizeINT8(weight_bits="auto") quantizes weights to 7 bits where it is True.

    >>> bits = 7 if ort_u8s8_saturates() else 8
"""
from __future__ import annotations

import functools

import numpy as np

from .ort_float_ops import probe_session

PROBE_CHANNELS = 64   # the reduction length: 32 int16 pairs
PROBE_OUTPUTS = 16    # onnxruntime's symmetric conv kernel (what the lowering's convs run) wants >= 16


def _session(model):
    import onnxruntime as ort
    return probe_session(model, ort)


def _probe_models(weight_code: int):
    """(QLinearConv 1x1 model, MatMulInteger model), each summing PROBE_CHANNELS products of `weight_code` with
    the input codes. The conv's output scale is 2^15: the exact sum of 255 x 127 products gives code 63, a
    sum saturated pair by pair 32."""
    from onnx import TensorProto, helper, numpy_helper
    k, n = PROBE_CHANNELS, PROBE_OUTPUTS
    consts = {"one": np.array(1.0, np.float32), "zp_u8": np.array(0, np.uint8), "zp_s8": np.array(0, np.int8),
              "y_scale": np.array(2.0 ** 15, np.float32), "w": np.full((n, k, 1, 1), weight_code, np.int8)}
    conv = helper.make_graph(
        [helper.make_node("QLinearConv", ["x", "one", "zp_u8", "w", "one", "zp_s8", "y_scale", "zp_u8"], ["y"])],
        "conv_probe", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, k, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
        [numpy_helper.from_array(v, name) for name, v in consts.items()])
    matmul = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "w", "zp_u8", "zp_s8"], ["y"])], "matmul_probe",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [numpy_helper.from_array(np.full((k, n), weight_code, np.int8), "w"),
         numpy_helper.from_array(consts["zp_u8"], "zp_u8"), numpy_helper.from_array(consts["zp_s8"], "zp_s8")])
    opset = [helper.make_opsetid("", 17)]
    return helper.make_model(conv, opset_imports=opset), helper.make_model(matmul, opset_imports=opset)


@functools.lru_cache(maxsize=None)
def ort_u8s8_saturates() -> bool:
    """Whether this CPU's onnxruntime sums u8 x s8 products in saturating int16 pairs (AVX2 without VNNI):
    True if QLinearConv's or MatMulInteger's sum of 255 x 127 over PROBE_CHANNELS channels is not exact."""
    try:
        conv, matmul = _probe_models(127)
        exact = PROBE_CHANNELS * 255 * 127
        conv_codes = _session(conv).run(None, {"x": np.full((1, PROBE_CHANNELS, 2, 2), 255, np.uint8)})[0]
        sums = _session(matmul).run(None, {"x": np.full((1, PROBE_CHANNELS), 255, np.uint8)})[0]
    except Exception:   # noqa: BLE001 - no onnxruntime: nothing runs the file here, 8-bit weights stay
        return False
    return bool((conv_codes != round(exact / 2.0 ** 15)).any() or (sums != exact).any())
