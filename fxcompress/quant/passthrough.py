"""Pass-through ops in the INT8 plan: ops that only move or select values share one quantizer, placed on
the tensor they read, before them.

An op that moves values without changing them (a reshape, a max-pool, a split into pieces) keeps its input's
codes: quantizing the whole tensor once and splitting the uint8 codes gives the same codes as splitting the
float tensor and quantizing each piece with that scale. Where the tensor a chain of such ops reads is not
quantized yet, the quantizer moves up the chain onto it, so that the op that made it is followed directly by
its quantizer. YOLOv8's C2f and YOLO11's C3k2 read their first conv's SiLU output through
`list(x.chunk(2, 1))` (getitem on the chunk's pieces) into convs and a concat: quantized after the split, one
quantizer per piece, the SiLU's float output went through the split and one QuantizeLinear per piece (8 of
yolov8n's 57 SiLUs, 9 of yolo11n's 77 with C2PSA's split); quantized before it, the SiLU's output is
quantized once, and onnxruntime cuts the pieces from the uint8 codes (its QDQ rules drop DequantizeLinear -> Slice / Split -> QuantizeLinear of one scale; torch writes a
chunk on a dynamic batch as Slices at offsets from Shape(x), which `shapes_of_codes` points at the codes).
Each piece keeps a call of the shared quantizer (observe=False): the exported graph then says that the pieces
carry the tensor's scale, and the INT8 check compares their codes too.

The quantizer moves up only where every reader of the tensor reads it quantized anyway (through pass-through
ops that end in quantized tensors, or metadata reads such as x.shape): a float reader (a head's output, a
LayerNorm) would otherwise read rounded values it did not read before.

Pass-through rules are registered by their op family in `fxcompress.ops` (the split family's, chunk, split,
unbind and getitem, in ops/indexing.py). Transpose and permute have no
pass-through rule (ops/reshape.py gives them none), so no quantizer moves up past them.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import onnx
import torch.fx as fx

from ..ops.registry import COUPLING, PASSIVE


def is_float_tensor(node) -> bool:
    if not isinstance(node, fx.Node):
        return False
    meta = node.meta.get("tensor_meta")
    return meta is not None and hasattr(meta, "dtype") and meta.dtype.is_floating_point


def tensor_args(node: fx.Node) -> List[fx.Node]:
    """The float tensors a node reads, from its args and kwargs (lists of them flattened: cat's inputs)."""
    flat = []
    for a in list(node.args) + list(node.kwargs.values()):
        flat.extend(a if isinstance(a, (list, tuple)) else [a])
    return [a for a in flat if is_float_tensor(a)]


def passthrough_source(node: fx.Node, rules: Dict[fx.Node, object]) -> Optional[fx.Node]:
    """The value a pass-through op moves (its first argument), or None for any other op. For getitem on a
    split's pieces that is the split node (a tuple), whose own source is the tensor."""
    rule = rules.get(node)
    if rule is None or rule.role != "passthrough" or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    return node.args[0]


def _metadata_read(user: fx.Node) -> bool:
    """x.shape, x.size(), len(x)...: reads no value. The ops that read only metadata when their result is no
    tensor (x == 0 on a tensor is PASSIVE's operator.eq too, but reads every value into a bool tensor)."""
    rule = COUPLING.lookup(user) if user.op in ("call_function", "call_method") else None
    return rule is PASSIVE and not hasattr(user.meta.get("tensor_meta"), "dtype")


def _read_quantized(node: fx.Node, need, rules) -> bool:
    """Whether every value read of `node` goes into a quantized tensor: it is quantized itself, or each reader
    is a metadata read or a pass-through op that moves it (not reads it as an index) into such a value."""
    if node in need:
        return True
    users = list(node.users)
    return bool(users) and all(_metadata_read(u) or (passthrough_source(u, rules) is node
                                                     and _read_quantized(u, need, rules)) for u in users)


def _hoist_target(node: fx.Node, need, rules) -> Optional[fx.Node]:
    """The highest tensor up the chain of pass-through ops ending in `node` whose every value read is
    quantized (a float reader above it stops the climb), or None: there is none, or one up the chain is
    quantized already."""
    best, src = None, passthrough_source(node, rules)
    while src is not None:
        if src in need:
            return None
        if is_float_tensor(src):   # a split's tuple of pieces is no tensor: the climb goes on through it
            if not _read_quantized(src, need, rules):
                break              # and no tensor above reads only into quantized values either
            best = src
        src = passthrough_source(src, rules)
    return best


def hoist_quantizers(need: Dict[fx.Node, None], rules: Dict[fx.Node, object]) -> None:
    """Add to `need` (an ordered set) the tensors onto which the quantizers of pass-through ops' quantized
    outputs move (module doc); run before the ReLU move, so that a ReLU-like op quantized this way still
    takes its producer's quantization."""
    for n in list(need):
        target = _hoist_target(n, need, rules)
        if target is not None:
            need[target] = None


def share_quantizers(need: Dict[fx.Node, None], rules: Dict[fx.Node, object], order: Dict[fx.Node, int]
                     ) -> Dict[fx.Node, fx.Node]:
    """{pass-through tensor: the quantized tensor whose quantizer it reuses}: the nearest quantized value up
    its chain of pass-through ops. One with no quantized value up the chain keeps a quantizer of its own,
    after the op (a float reader of the tensor kept it from moving up, or the chain starts at no tensor)."""
    shared: Dict[fx.Node, fx.Node] = {}
    for n in sorted(need, key=order.get):   # producers first: a chain's root is known when its ops come
        src = passthrough_source(n, rules)
        while src is not None and src not in need:
            src = passthrough_source(src, rules)
        if src is not None:
            shared[n] = shared.get(src, src)
    return shared


def shapes_of_codes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape(DequantizeLinear(codes)) -> Shape(codes), and the DequantizeLinear dropped when nothing else
    reads it. torch exports x.chunk(2, 1) with a dynamic batch as Slices at offsets computed from Shape(x):
    with x quantized before the chunk, onnxruntime runs the Slices on the codes, but dequantized the whole
    tensor (and transposed it back from its NHWC layout) only for Shape to read its dimensions. Rewritten in
    place and returned."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        dq = producer.get(node.input[0]) if node.op_type == "Shape" and node.input else None
        if dq is not None and dq.op_type == "DequantizeLinear":
            node.input[0] = dq.input[0]   # same dimensions
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [n for n in graph.node if n.op_type != "DequantizeLinear" or n.output[0] in read]
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)
    return model
