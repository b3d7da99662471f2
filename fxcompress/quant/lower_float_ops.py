"""Float ops that stay between quantized layers, written the way onnxruntime runs them fastest.

GELU: torch exports F.gelu as x * 0.5 * (1 + erf(x / sqrt(2))), five elementwise passes over the tensor.
onnxruntime fuses that pattern into one Gelu kernel in a float model, but not between Q/DQ pairs: it gives
each reader of a DequantizeLinear its own copy (x feeds both the Div and a Mul), so the pattern's two x are
no longer one tensor. Written as com.microsoft's Gelu directly, it runs as one kernel on one dequantized
input. Measured on convnext_tiny at batch 8 (AMD EPYC, 2 threads): the five ops and the duplicated
DequantizeLinear took about 40 % of the INT8 model's time. onnxruntime's Gelu rounds its own way: the
quantizer after it may flip a code by one step on a rounding boundary, which the INT8 check allows.

    model = fuse_gelu(model)   # an ONNX ModelProto, rewritten in place and returned
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import onnx
from onnx import helper, numpy_helper

from .onnx_nodes import consumers

MS_DOMAIN = "com.microsoft"


def _scalar(name: str, inits: Dict[str, onnx.TensorProto], constants: Dict[str, onnx.NodeProto]) -> Optional[float]:
    if name in inits:
        value = numpy_helper.to_array(inits[name])
    elif name in constants:
        value = numpy_helper.to_array(constants[name].attribute[0].t)
    else:
        return None
    return float(value.reshape(())) if value.size == 1 else None   # a [1] constant too (maxvit_t)


def _other(node: onnx.NodeProto, name: str) -> Optional[str]:
    rest = [i for i in node.input if i != name]
    return rest[0] if len(rest) == 1 else None


def fuse_gelu(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every exported erf-GELU (Div by sqrt(2), Erf, Add 1, Mul by x, Mul by 0.5) by Gelu."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.attribute
                 and n.attribute[0].name == "value"}
    readers = consumers(graph)

    def only_reader(name: str, op_type: str) -> Optional[onnx.NodeProto]:
        found = readers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None

    def near(name: Optional[str], value: float) -> bool:
        got = _scalar(name, inits, constants) if name else None
        return got is not None and abs(got - value) <= 1e-6 * max(1.0, abs(value))

    dead, fused = set(), {}
    for div in graph.node:
        if div.op_type != "Div" or not near(div.input[1], math.sqrt(2.0)):
            continue
        x = div.input[0]
        erf = only_reader(div.output[0], "Erf")
        add = erf and only_reader(erf.output[0], "Add")
        if add is None or not near(_other(add, erf.output[0]), 1.0):
            continue
        mul = only_reader(add.output[0], "Mul")
        if mul is None or _other(mul, add.output[0]) != x:
            continue
        half = only_reader(mul.output[0], "Mul")
        if half is None or not near(_other(half, mul.output[0]), 0.5):
            continue
        dead.update(id(n) for n in (div, erf, add, mul, half))
        fused[id(half)] = helper.make_node("Gelu", [x], [half.output[0]], name=f"{div.name or x}_Gelu",
                                           domain=MS_DOMAIN)
    if not fused:
        return model
    nodes = [fused.get(id(n), n) for n in graph.node if id(n) not in dead or id(n) in fused]
    read = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    nodes = [n for n in nodes if n.op_type != "Constant" or n.output[0] in read]   # the pattern's constants
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model
