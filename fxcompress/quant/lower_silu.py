"""SiLU as one float kernel: x * Sigmoid(x) -> QuickGelu(alpha=1) (com.microsoft).

torch exports SiLU as x * Sigmoid(x). In a float graph onnxruntime fuses that pair into QuickGelu itself;
between a DequantizeLinear and a QuantizeLinear it does not (the QDQ node units keep the Sigmoid and the Mul
apart), and runs two float passes where one does. Written as QuickGelu, the SiLU between quantizers is
DequantizeLinear, QuickGelu, QuantizeLinear.

Why not on the codes: QLinearSigmoid + QLinearMul (a 256-entry table and a product on uint8, with the sigmoid
quantized to 1/255 in between) was this lowering until it was measured against QuickGelu. onnxruntime 1.32,
AMD EPYC, 2 threads, whole models timed side by side (`interleaved_latency`, batch 1, 640x640):
yolov8n latency-targeted INT8 8.15 -> 7.92 ms, yolo11n 9.59 -> 9.35 ms, yolov8n half-MACs 12.98 -> 12.82 ms;
a lone SiLU on 64x80x80 codes 0.18 -> 0.13 ms, on 16x320x320 0.74 -> 0.77 ms. It also drops the
sigmoid's own rounding: the codes are those of float SiLU followed by QuantizeLinear.

QuickGelu with alpha 1 is the pair bit for bit up to one detail that depends on the CPU: the same MLAS
logistic and one float32 product, and where MLAS has an AVX-512 kernel its sigmoid never exceeds 1 although
the Sigmoid kernel's approximation overshoots (20 float32 values between 8 and 32, e.g. Sigmoid(17.844) =
1.0000001; checked over every float32 in +-[1, 32], +-[1/64, 1] and +-[32, 4096]): x * min(Sigmoid(x), 1),
"clamped". On an AVX2-only CPU (AMD EPYC 7xx3) it is x * Sigmoid(x) exactly, "plain". `ort_quick_gelu_form`
probes which once per process (neither: the pair stays), and the fake-quant model emulates that form
(`emulate.py`: "quick_gelu" for the clamped one; the plain one is the pair's own "silu"), so it gives
onnxruntime's codes.

    model = fuse_quick_gelu(model)   # an ONNX ModelProto, rewritten in place and returned
"""
from __future__ import annotations

import functools
from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, helper

from .onnx_nodes import consumers

MS_DOMAIN = "com.microsoft"


def _silu_pairs(graph):
    """{index of the Mul: index of the Sigmoid} for each Mul computing x * Sigmoid(x), the Sigmoid read by that
    Mul alone."""
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    readers, outputs = consumers(graph), {o.name for o in graph.output}
    pairs = {}
    for i, mul in enumerate(nodes):
        if mul.op_type != "Mul" or len(mul.input) != 2:
            continue
        j = next((producer[name] for name in mul.input if name in producer
                  and nodes[producer[name]].op_type == "Sigmoid"), None)
        if j is None or len(readers[nodes[j].output[0]]) != 1 or nodes[j].output[0] in outputs:
            continue
        if sorted(mul.input) == sorted([nodes[j].input[0], nodes[j].output[0]]):
            pairs[i] = j
    return pairs


def fuse_quick_gelu(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every x * Sigmoid(x) by QuickGelu(x, alpha=1) where onnxruntime's QuickGelu computes a form
    the fake-quant model emulates (`ort_quick_gelu_form`)."""
    graph = model.graph
    pairs = _silu_pairs(graph) if ort_quick_gelu_form() is not None else {}
    if not pairs:
        return model
    nodes, sigmoids = list(graph.node), set(pairs.values())
    rewritten = []
    for i, n in enumerate(nodes):
        if i in pairs:
            x = nodes[pairs[i]].input[0]
            rewritten.append(helper.make_node("QuickGelu", [x], [n.output[0]], alpha=1.0, domain=MS_DOMAIN,
                                              name=f"{n.name or n.output[0]}_QuickGelu"))
        elif i not in sigmoids:
            rewritten.append(n)
    del graph.node[:]
    graph.node.extend(rewritten)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model


def _graph(nodes) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1)])


def silu_graphs():
    """The exported pair and its fused form, as two one-input models (x -> y)."""
    pair = _graph([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])])
    return pair, _graph([helper.make_node("QuickGelu", ["x"], ["y"], alpha=1.0, domain=MS_DOMAIN)])


def run_unoptimized(model: onnx.ModelProto, x: np.ndarray, threads: int = 2) -> np.ndarray:
    """Run `model` as written: without onnxruntime's graph rewrites, which would fuse the pair itself."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@functools.lru_cache(maxsize=None)
def ort_quick_gelu_form() -> Optional[str]:
    """Which x * Sigmoid(x) onnxruntime's QuickGelu(alpha=1) computes with its own Sigmoid, on a long random
    tensor and on every float32 where that Sigmoid's approximation comes near 1 (16 to 20): "clamped"
    (x * min(Sigmoid(x), 1)), "plain" (x * Sigmoid(x)), or None (neither, or no contrib ops)."""
    try:
        rng = np.random.default_rng(0)
        near_one = np.arange(*np.array([16.0, 20.0], np.float32).view(np.int32), 7, dtype=np.int32).view(np.float32)
        x = np.concatenate([(rng.standard_normal(1_000_003) * 8).astype(np.float32), near_one, -near_one,
                            np.array([0.0, -0.0, 17.844, 1e-30, -120.0, 120.0], np.float32)])
        sigmoid = run_unoptimized(_graph([helper.make_node("Sigmoid", ["x"], ["y"])]), x)
        quick_gelu = run_unoptimized(silu_graphs()[1], x)
    except Exception:   # noqa: BLE001 - no onnxruntime or no contrib ops: the pair stays
        return None
    if np.array_equal(quick_gelu, x * np.minimum(sigmoid, np.float32(1.0))):   # checked first: equal if no overshoot
        return "clamped"
    return "plain" if np.array_equal(quick_gelu, x * sigmoid) else None
