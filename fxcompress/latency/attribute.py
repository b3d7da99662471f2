"""Which profiled onnxruntime node runs which layer of the traced model, and so each layer's time in
context.

onnxruntime renames the nodes it fuses and changes layouts (FP32: NCHWc, channels padded to its block;
INT8: NHWC), so a node is matched to the layers by what it computes: kind (conv or linear), batch,
channels and spatial size of its input and output. Layers that look alike (resnet50's 1x1 and 3x3
convs from 64 to 64 channels at 56x56) form one class; a class's measured time is shared among its layers
in proportion to their MACs at full width. Layer-kernel nodes no class claims are reported.

    ctx_ms, unmatched_ms = attribute(layers, profiled_nodes, batch, macs={node: macs})
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .layers import Layer
from .timing import NodeTime

Signature = Tuple[str, int, int, int, Tuple[int, ...], Tuple[int, ...]]   # kind, N, cin, cout, in HW, out HW
CONV_OPS = frozenset({"Conv", "FusedConv", "NhwcFusedConv", "QLinearConv", "ConvInteger"})
LINEAR_OPS = frozenset({"Gemm", "FusedGemm", "QGemm", "MatMul", "FusedMatMul", "QLinearMatMul", "MatMulInteger"})
CHANNEL_BLOCKS = (4, 8, 16)   # what onnxruntime pads channels to: INT8's input alignment, NCHWc blocks


def layer_signature(layer: Layer, batch: int) -> Signature:
    s = layer.spec
    if s.kind == "linear":
        return ("linear", batch, s.cin, s.cout, (), ())
    out = tuple((n + 2 * p - d * (k - 1) - 1) // st + 1
                for n, k, st, p, d in zip(s.spatial, s.kernel, s.stride, s.padding, s.dilation))
    return ("conv", batch, s.cin, s.cout, tuple(s.spatial), out)


def node_signatures(node: NodeTime) -> List[Signature]:
    """What the node may compute, read as NCHW and as NHWC."""
    x, y = node.in_shape, node.out_shape
    if node.op in LINEAR_OPS and len(x) == 2 and len(y) == 2:
        return [("linear", x[0], x[1], y[1], (), ())]
    if node.op not in CONV_OPS or len(x) < 3 or len(x) != len(y):
        return []
    nchw = ("conv", x[0], x[1], y[1], tuple(x[2:]), tuple(y[2:]))
    nhwc = ("conv", x[0], x[-1], y[-1], tuple(x[1:-1]), tuple(y[1:-1]))
    return [nchw, nhwc]


def _channels_fit(ours: int, theirs: int) -> bool:
    return theirs == ours or any(theirs == -(-ours // b) * b for b in CHANNEL_BLOCKS)


def _fits(layer_sig: Signature, node_sig: Signature) -> Optional[int]:
    """None if the node cannot run the layer, else how many channel counts it matches exactly (higher first)."""
    kind, n, cin, cout, hw_in, hw_out = layer_sig
    if (kind, n, hw_in, hw_out) != (node_sig[0], node_sig[1], node_sig[4], node_sig[5]):
        return None
    if not (_channels_fit(cin, node_sig[2]) and _channels_fit(cout, node_sig[3])):
        return None
    return int(cin == node_sig[2]) + int(cout == node_sig[3])


def attribute(layers: Sequence[Layer], nodes: Sequence[NodeTime], batch: int,
              macs: Mapping[str, int]) -> Tuple[Dict[str, float], float]:
    """({layer node name: its time in context, ms}, ms of layer-kernel nodes no layer matched). A layer no
    node matched gets 0 here; the caller decides what stands in for it."""
    classes: Dict[Signature, List[Layer]] = {}
    for layer in layers:
        classes.setdefault(layer_signature(layer, batch), []).append(layer)
    class_ms: Dict[Signature, float] = {}
    unmatched = 0.0
    for node in nodes:
        best, best_score = None, -1
        for node_sig in node_signatures(node):
            for sig in classes:
                score = _fits(sig, node_sig)
                if score is not None and score > best_score:
                    best, best_score = sig, score
        if best is not None:
            class_ms[best] = class_ms.get(best, 0.0) + node.ms
        elif node.op in CONV_OPS or node.op in LINEAR_OPS:
            unmatched += node.ms
    ctx: Dict[str, float] = {}
    for sig, members in classes.items():
        total = sum(max(macs.get(l.node, 0), 1) for l in members)
        for l in members:
            ctx[l.node] = class_ms.get(sig, 0.0) * max(macs.get(l.node, 0), 1) / total
    return ctx, unmatched
