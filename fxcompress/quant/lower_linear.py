"""Lowering linear layers applied to 3-D / 4-D tensors (transformer MLPs and projections, ConvNeXt's
channels-last pointwise layers), which torch exports as MatMul + Add and onnxruntime cannot fuse: as a 1x1
QLinearConv where the output is quantized (the fastest integer kernel here, see _as_pointwise_conv), else as
a 2-D QGemm. Integer values are unchanged: the fake-quant model emulates both for linear layers of any rank.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_nodes import consumers, mark_layout_copy, topological


def lower_nd_linears(model: onnx.ModelProto) -> onnx.ModelProto:
    """A quantized linear layer on a 3-D or 4-D input (transformer MLPs, ConvNeXt's pointwise layers) is
    exported as DQ(W) -> Transpose -> MatMul -> Add(bias), which onnxruntime cannot fuse (constant folding
    turns the int8 weight back to float). With a quantized output, at least 16 outputs and inputs in
    multiples of 4 (what onnxruntime's fast convolution wants), it becomes a 1x1 convolution over the rows
    (_as_pointwise_conv); otherwise the 2-D linear it is: the uint8 input reshaped to [-1, in] before its
    DequantizeLinear, Gemm(transB=1) with the bias (quantize_biases makes it int32: QGemm), and the uint8
    output (its QuantizeLinear, after a ReLU if there is one) reshaped back to the input's leading dims +
    [out] before its DequantizeLinear. Integer values are unchanged: the fake-quant model emulates both
    kernels for linear layers of any rank."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    users = consumers(graph)
    before: Dict[int, list] = {}
    after: Dict[int, list] = {}
    dead = set()
    index = {id(n): i for i, n in enumerate(graph.node)}
    plans = [p for p in (_plan(node, producer, users, inits) for node in graph.node if node.op_type == "MatMul") if p]
    # a weight shared by several calls (coat's MLP run on three branches; the exporter gives its one
    # DequantizeLinear a Transpose per call) becomes one 1x1 kernel: every call must then be a convolution
    calls: Dict[str, list] = {}
    for p in plans:
        calls.setdefault(p["w_dq"].output[0], []).append(p)
    lowerable = {w for w, c in calls.items() if len(c) == len(users.get(w, [])) and (len(c) == 1 or
                                                                                   all(p["conv"] for p in c))}
    plans = [p for p in plans if p["w_dq"].output[0] in lowerable]
    for p in plans:
        node, transpose, x_dq, w_dq, bias, out = (p[k] for k in ("node", "transpose", "x_dq", "w_dq", "bias", "out"))
        n_out, n_in, q, chain = p["n_out"], p["n_in"], p["q"], p["chain"]
        if p["add"] is not None:
            dead.add(id(p["add"]))
        tag = node.name or out
        if p["conv"]:
            new = _as_pointwise_conv(graph, inits, tag, x_dq, w_dq, bias, n_in, n_out, out, q, chain, users, after,
                                     index)
            before.setdefault(index[id(node)], []).extend(new)
            dead.update({id(node), id(transpose)})
            continue
        names = {k: f"{tag}_as_gemm_{k}" for k in ("flat_shape", "x_q2d", "x_dq2d", "y")}
        graph.initializer.append(numpy_helper.from_array(np.array([-1, n_in], dtype=np.int64), names["flat_shape"]))
        x_q = x_dq.input[0]
        back, names["back_shape"] = _back_shape(graph, f"{tag}_as_gemm", x_q, n_out)
        new = back + [
            helper.make_node("Reshape", [x_q, names["flat_shape"]], [names["x_q2d"]], name=f"{tag}_flatten"),
            helper.make_node("DequantizeLinear", [names["x_q2d"]] + list(x_dq.input[1:]), [names["x_dq2d"]],
                             name=f"{tag}_DequantizeLinear"),
            helper.make_node("Gemm", [names["x_dq2d"], w_dq.output[0]] + ([bias] if bias else []), [names["y"]],
                             transB=1, name=f"{tag}_Gemm")]
        # the reshape back goes on the uint8 side of the output's QuantizeLinear when there is one
        if q is not None:
            for n in chain:   # a ReLU between the layer and its quantizer stays (onnxruntime drops it)
                n.input[0] = names["y"] if n.input[0] == out else n.input[0]
            if not chain:
                q.input[0] = names["y"]
            reshaped = f"{tag}_as_gemm_q"
            after.setdefault(index[id(q)], []).append(
                helper.make_node("Reshape", [q.output[0], names["back_shape"]], [reshaped], name=f"{tag}_unflatten"))
            for reader in users.get(q.output[0], []):
                reader.input[:] = [reshaped if i == q.output[0] else i for i in reader.input]
        else:
            new.append(helper.make_node("Reshape", [names["y"], names["back_shape"]], [out], name=f"{tag}_unflatten"))
        before.setdefault(index[id(node)], []).extend(new)
        dead.update({id(node), id(transpose)})
    if not before:
        return model
    nodes = []
    for i, n in enumerate(graph.node):
        nodes.extend(before.get(i, []))
        if id(n) not in dead:
            nodes.append(n)
        nodes.extend(after.get(i, []))
    used = {i for n in nodes if id(n) not in dead for i in n.input} | {o.name for o in graph.output}
    nodes = [n for n in nodes if not (n.op_type == "DequantizeLinear" and n.output[0] not in used)]  # bypassed
    del graph.node[:]
    graph.node.extend(topological(nodes, {i.name for i in graph.input} | {i.name for i in graph.initializer}))
    return model


def _plan(node, producer, users, inits):
    """What lowering a MatMul needs, or None where it is not a quantized linear layer: DQ(x) -> MatMul with
    Transpose(DQ(int8 W)) [-> Add(bias)], and whether it becomes a 1x1 convolution (a quantized output, at
    least 16 outputs, inputs in multiples of 4, an int8 weight read by its DequantizeLinear alone)."""
    transpose, x_dq = producer.get(node.input[1]), producer.get(node.input[0])
    if transpose is None or transpose.op_type != "Transpose" or x_dq is None \
            or x_dq.op_type != "DequantizeLinear" or any(i not in inits for i in x_dq.input[1:]):
        return None
    w_dq = producer.get(transpose.input[0])
    if w_dq is None or w_dq.op_type != "DequantizeLinear" or w_dq.input[0] not in inits \
            or len(inits[w_dq.input[0]].dims) != 2 or len(users.get(transpose.output[0], [])) != 1:
        return None
    n_out, n_in = inits[w_dq.input[0]].dims
    out, bias, add = node.output[0], None, None
    readers = users.get(out, [])
    if len(readers) == 1 and readers[0].op_type == "Add":
        other = [i for i in readers[0].input if i != out]
        if len(other) == 1 and other[0] in inits and list(inits[other[0]].dims) == [n_out]:
            bias, out, add = other[0], readers[0].output[0], readers[0]
    q, chain = _output_quantizer(out, users)
    conv = q is not None and n_in % 4 == 0 and n_out >= 16 and len(users.get(w_dq.input[0], [])) == 1
    return {"node": node, "transpose": transpose, "x_dq": x_dq, "w_dq": w_dq, "bias": bias, "out": out, "add": add,
            "n_out": n_out, "n_in": n_in, "q": q, "chain": chain, "conv": conv}


def _back_shape(graph, prefix: str, x_q: str, n_out: int) -> tuple:
    """(nodes computing x_q's leading dims + [n_out], the name of that shape): where a layer's output goes
    back to its input's rank."""
    out_dims, lead, shape = f"{prefix}_out_dims", f"{prefix}_shape", f"{prefix}_back_shape"
    graph.initializer.append(numpy_helper.from_array(np.array([n_out], dtype=np.int64), out_dims))
    return [helper.make_node("Shape", [x_q], [lead], name=f"{prefix}_Shape", start=0, end=-1),
            helper.make_node("Concat", [lead, out_dims], [shape], axis=0, name=f"{prefix}_back_shape")], shape


def _as_pointwise_conv(graph, inits, tag, x_dq, w_dq, bias, n_in, n_out, out, q, chain, users, after, index):
    """The linear layer as a 1x1 convolution over [1, in, rows, 1] (rows = every leading position), between
    transposes from and to the [1, rows, 1, in] layout its uint8 input already has: onnxruntime turns it into
    one QLinearConv in NHWC and removes the transposes. Measured here (AMD EPYC, 2 threads, int8 VNNI),
    25088 x 96 -> 384 (convnext_tiny's first MLP layer at batch 8): 1.4-2.5 ms as QLinearConv, 13 ms as
    QLinearMatMul without its bias, 14-31 ms as QGemm with its int32 bias. Returns the nodes to insert
    before the MatMul; the output's chain (its QuantizeLinear, after a ReLU) is rewired here."""
    names = {k: f"{tag}_as_conv_{k}" for k in ("rows_shape", "x_q4d", "x_dq4d", "x_nchw", "y", "y_dq", "y_nhwc",
                                               "y_q", "y_back")}
    w = inits[w_dq.input[0]]
    if len(w.dims) == 2:   # once for a weight that several calls share
        del w.dims[:]
        w.dims.extend([n_out, n_in, 1, 1])   # the same int8 values (row-major), as a 1x1 kernel
    graph.initializer.append(numpy_helper.from_array(np.array([1, -1, 1, n_in], dtype=np.int64), names["rows_shape"]))
    x_q, scale_zp = x_dq.input[0], list(x_dq.input[1:])
    back, names["back_shape"] = _back_shape(graph, f"{tag}_as_conv", x_q, n_out)
    new = back + [
        helper.make_node("Reshape", [x_q, names["rows_shape"]], [names["x_q4d"]], name=f"{tag}_rows"),
        helper.make_node("DequantizeLinear", [names["x_q4d"]] + scale_zp, [names["x_dq4d"]],
                         name=f"{tag}_DequantizeLinear"),
        helper.make_node("Transpose", [names["x_dq4d"]], [names["x_nchw"]], perm=[0, 3, 1, 2], name=f"{tag}_to_nchw"),
        helper.make_node("Conv", [names["x_nchw"], w_dq.output[0]] + ([bias] if bias else []), [names["y"]],
                         kernel_shape=[1, 1], name=f"{tag}_Conv")]
    for n in chain:   # a ReLU between the layer and its quantizer stays (onnxruntime drops it)
        n.input[0] = names["y"] if n.input[0] == out else n.input[0]
    # the conv's output is quantized by a copy of the layer's QuantizeLinear; the layer's own one quantizes
    # it back in the [1, rows, 1, out] layout (its codes are the layer's output codes, element for element)
    y_scale_zp = list(q.input[1:])
    new += [mark_layout_copy(helper.make_node("QuantizeLinear", [chain[-1].output[0] if chain else names["y"]]
                                              + y_scale_zp, [names["y_q"]], name=f"{tag}_y_q")),
            helper.make_node("DequantizeLinear", [names["y_q"]] + y_scale_zp, [names["y_dq"]], name=f"{tag}_y_dq"),
            helper.make_node("Transpose", [names["y_dq"]], [names["y_nhwc"]], perm=[0, 2, 3, 1],
                             name=f"{tag}_to_nhwc")]
    q.input[0] = names["y_nhwc"]
    after.setdefault(index[id(q)], []).append(
        helper.make_node("Reshape", [q.output[0], names["back_shape"]], [names["y_back"]], name=f"{tag}_unrows"))
    for reader in users.get(q.output[0], []):
        reader.input[:] = [names["y_back"] if i == q.output[0] else i for i in reader.input]
    return new


def _output_quantizer(out: str, users):
    """The QuantizeLinear reading `out`, directly or through single-reader unary ops (ReLU): (node, chain)."""
    chain = []
    while True:
        readers = users.get(out, [])
        if len(readers) != 1:
            return None, []
        r = readers[0]
        if r.op_type == "QuantizeLinear":
            return r, chain
        if r.op_type not in ("Relu", "Clip") or r.input[0] != out:
            return None, []
        chain.append(r)
        out = r.output[0]
