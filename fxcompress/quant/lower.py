"""Lowering fake-quantized graphs to a genuinely INT8 ONNX model, and checking onnxruntime runs it so.

torch.onnx (TorchScript exporter) writes each fake-quant op as QuantizeLinear -> DequantizeLinear.
The rewrites here then make the file really INT8: a QuantizeLinear on a float weight initializer is
replaced by the int8 initializer it would produce, and conv/gemm biases become int32 (scale =
input scale x weight scale), the form onnxruntime's QDQ fusion turns into QLinearConv / QGemm.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..core.errors import VerificationError
from .lower_float_ops import fuse_gelu
from .lower_linear import lower_nd_linears
from .lower_silu import fuse_quick_gelu
from .onnx_nodes import consumers
from .passthrough import shapes_of_codes

INTEGER_KERNELS = ("QLinearConv", "ConvInteger", "QGemm", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat",
                   "DynamicQuantizeMatMul", "QAttention")


def lower_int8(model: onnx.ModelProto, folded: Dict[str, str] = None) -> onnx.ModelProto:
    """The exported fake-quant graph as a genuinely INT8 model: int8 weight initializers, int32 biases,
    convs with input channels aligned for onnxruntime's fast kernel. `folded` receives
    {int8 initializer name: float weight name} (see fold_weight_quantizers)."""
    model = fuse_quick_gelu(fuse_gelu(lower_nd_linears(fold_weight_quantizers(model, folded))))
    model = shapes_of_codes(model)
    return align_conv_input_channels(quantize_biases(model))


def _quantize_like_torch(w: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """int values exactly as torch.fake_quantize_* computes them: nearbyint(w * (1 / scale)) + zp (float32)."""
    dtype = zero_point.dtype
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * w.ndim
        shape[axis] = scale.size
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    inv = (np.float32(1.0) / scale.astype(np.float32)).astype(np.float32)
    q = np.rint((w.astype(np.float32) * inv).astype(np.float32)) + zero_point.astype(np.float32)
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def inline_constant_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """The exporter shares equal constants through Identity nodes; point consumers at the initializer."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs}
    if not alias:
        return model
    keep = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in keep:
        for i, name in enumerate(n.input):
            if name in alias:
                n.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(keep)
    return model


def fold_weight_quantizers(model: onnx.ModelProto, folded: Dict[str, str] = None) -> onnx.ModelProto:
    """Replace every QuantizeLinear of a constant (weight) by its int8 result as an initializer.
    `folded`, if given, receives {int8 initializer name: float weight name}."""
    model = inline_constant_identities(model)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    keep, drop_inits = [], set()
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in inits and node.input[1] in inits \
                and len(node.input) > 2 and node.input[2] in inits:
            w = numpy_helper.to_array(inits[node.input[0]])
            scale = numpy_helper.to_array(inits[node.input[1]])
            zp = numpy_helper.to_array(inits[node.input[2]])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            q = _quantize_like_torch(w, scale, zp, axis if axis >= 0 else axis + w.ndim)
            graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
            drop_inits.add(node.input[0])
            if folded is not None:
                folded[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    used = {i for n in keep for i in n.input}
    del graph.node[:]
    graph.node.extend(keep)
    _drop_initializers(graph, {n for n in drop_inits if n not in used})
    return model


def _drop_initializers(graph, names: Iterable[str]) -> None:
    names = set(names)
    kept = [i for i in graph.initializer if i.name not in names]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def quantize_biases(model: onnx.ModelProto) -> onnx.ModelProto:
    """Conv/Gemm with DQ'd input and weight and a float bias: store the bias as int32 with scale
    input_scale * weight_scale behind a DequantizeLinear (what the integer kernels consume)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    new_nodes, replaced = [], set()
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in inits:
            continue
        if node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
            continue
        x_dq, w_dq = producer.get(node.input[0]), producer.get(node.input[1])
        if not (x_dq is not None and w_dq is not None and x_dq.op_type == w_dq.op_type == "DequantizeLinear"):
            continue
        if x_dq.input[1] not in inits or w_dq.input[1] not in inits:
            continue
        x_scale = numpy_helper.to_array(inits[x_dq.input[1]]).astype(np.float32)
        w_scale = numpy_helper.to_array(inits[w_dq.input[1]]).astype(np.float32)
        w_zp = numpy_helper.to_array(inits[w_dq.input[2]]) if len(w_dq.input) > 2 and w_dq.input[2] in inits else 0
        if x_scale.size != 1 or np.any(w_zp != 0):
            continue
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        scale = (x_scale.reshape(()) * np.broadcast_to(w_scale.reshape(-1), bias.shape)).astype(np.float32)
        # float32 division and rounding as the emulation does; saturated in float64, where 2**31 - 1 is exact
        q = np.clip(np.rint(bias / scale).astype(np.float64), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
        base = node.input[2]
        tag = f"{base}_{node.name or len(new_nodes)}"   # a bias may be shared by several layers (equal constants)
        names = [f"{tag}_int32", f"{tag}_int32_scale", f"{tag}_dequantized"]
        graph.initializer.extend([numpy_helper.from_array(q, names[0]), numpy_helper.from_array(scale, names[1])])
        # no zero point: it defaults to 0 (of the input's type), and a tensor of int32 zeros is 4 bytes a channel
        new_nodes.append(helper.make_node("DequantizeLinear", names[:2], [names[2]], axis=0,
                                          name=f"{tag}_DequantizeLinear"))
        replaced.add(base)
        node.input[2] = names[2]
    if new_nodes:
        nodes = new_nodes + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
        used = {i for n in graph.node for i in n.input}
        _drop_initializers(graph, {b for b in replaced if b not in used})
    return model


INPUT_CHANNEL_ALIGNMENT = 4   # onnxruntime's fast symmetric int8 conv (MlasConvSym) needs input channels % 4 == 0


def align_conv_input_channels(model: onnx.ModelProto, alignment: int = INPUT_CHANNEL_ALIGNMENT) -> onnx.ModelProto:
    """Give quantized convs whose input channel count is not a multiple of `alignment` (an RGB stem: 3)
    zero weight columns up to the next multiple, and pad their uint8 input with as many channels (of the
    zero point) before it is dequantized. The result is the same (the extra channels meet zero weights);
    onnxruntime then runs its indirect symmetric int8 kernel instead of a per-pixel im2col GEMM: resnet50's
    7x7 stem took 9% of the INT8 time at batch 1 for 3% of the MACs."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers = consumers(graph)
    inserted: Dict[int, list] = {}
    bypassed = []
    for index, node in enumerate(graph.node):
        if node.op_type != "Conv" or any(a.name == "group" and a.i != 1 for a in node.attribute):
            continue
        x_dq, w_dq = producer.get(node.input[0]), producer.get(node.input[1])
        if x_dq is None or w_dq is None or x_dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear":
            continue
        w_init = inits.get(w_dq.input[0])
        if w_init is None or len(readers.get(w_init.name, [])) != 1 or w_init.data_type != onnx.TensorProto.INT8 \
                or len(w_init.dims) < 3 or any(i not in inits for i in x_dq.input[1:]):
            continue
        channels = w_init.dims[1]
        padded = -(-channels // alignment) * alignment
        if padded == channels:
            continue
        w = numpy_helper.to_array(w_init)
        widths = [(0, 0)] * w.ndim
        widths[1] = (0, padded - channels)
        w_init.CopyFrom(numpy_helper.from_array(np.pad(w, widths), w_init.name))
        rank = w.ndim
        pads = np.zeros(2 * rank, dtype=np.int64)
        pads[rank + 1] = padded - channels          # end of the channel axis
        tag = f"{node.name or node.output[0]}_aligned"
        zero_point = x_dq.input[2] if len(x_dq.input) > 2 else None
        if zero_point is None:
            zero_point = f"{tag}_zero_point"
            graph.initializer.append(numpy_helper.from_array(np.zeros((), dtype=np.uint8), zero_point))
        graph.initializer.append(numpy_helper.from_array(pads, f"{tag}_pads"))
        inserted[index] = [
            helper.make_node("Pad", [x_dq.input[0], f"{tag}_pads", zero_point], [f"{tag}_q"], mode="constant",
                             name=f"{tag}_Pad"),
            helper.make_node("DequantizeLinear", [f"{tag}_q", x_dq.input[1], zero_point], [f"{tag}_dq"],
                             name=f"{tag}_DequantizeLinear")]
        node.input[0] = f"{tag}_dq"
        bypassed.append(x_dq)
    if inserted:
        used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        dead = {dq.output[0] for dq in bypassed if dq.output[0] not in used}   # its reader reads the padded copy
        nodes = []
        for index, node in enumerate(graph.node):
            nodes.extend(inserted.get(index, []))
            if not (node.op_type == "DequantizeLinear" and node.output[0] in dead):
                nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
    return model


_WEIGHT_PATH_OPS = ("DequantizeLinear", "Transpose", "Reshape", "Identity", "Unsqueeze", "Squeeze")


def _kernels_fed(readers: Dict[str, list], weight: str) -> list:
    """Names of the nodes of the lowered file (before onnxruntime's optimizations; `readers`: its consumers)
    that compute with `weight`, followed through its DequantizeLinear and layout ops."""
    fed, frontier, seen = [], [weight], set()
    while frontier:
        name = frontier.pop(0)   # breadth first: the kernels in graph order
        for n in readers.get(name, []):
            if n.name in seen:
                continue
            seen.add(n.name)
            if n.op_type in _WEIGHT_PATH_OPS:
                frontier.extend(n.output)
            else:
                fed.append(n.name)
    return fed


def integer_kernel_check(optimized: onnx.ModelProto, quantized_weights: Dict[str, str],
                         lowered: Optional[onnx.ModelProto] = None) -> Dict[str, str]:
    """For each int8 weight initializer (name -> label), the op type of the kernel consuming it in the
    optimized graph. Raises VerificationError naming the layers left to float kernels. Where onnxruntime
    rewrote the weight itself (a module called three times, as CoaT's parallel blocks call one MLP, reads
    its weight through a Transpose per call, which onnxruntime folds into new initializers), the nodes the
    weight fed in the `lowered` file are looked up by name: each must have become an integer kernel."""
    readers = consumers(optimized.graph)
    by_name = {n.name: n.op_type for n in optimized.graph.node if n.name}
    lowered_readers = consumers(lowered.graph) if lowered is not None else {}
    kinds, missing = {}, []
    for name, label in quantized_weights.items():
        ops = [n.op_type for n in readers.get(name, [])]
        integer = [op for op in ops if op in INTEGER_KERNELS]
        if not ops and lowered is not None:
            fed = [by_name.get(node) for node in _kernels_fed(lowered_readers, name)]
            integer = fed if fed and all(op in INTEGER_KERNELS for op in fed) else []
            ops = [op or "removed" for op in fed]
        if integer:
            kinds[label] = integer[0]
        else:
            missing.append(f"{label} ({', '.join(ops) or 'no consumer'})")
    if missing:
        raise VerificationError(f"onnxruntime did not turn {len(missing)} quantized layer(s) into integer kernels: "
                                f"{'; '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    return kinds


def count_ops(model: onnx.ModelProto) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts
