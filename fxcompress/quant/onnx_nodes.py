"""Small helpers over ONNX graphs shared by the INT8 lowering passes."""
from __future__ import annotations

from typing import Dict, List

import onnx

from ..core.errors import VerificationError


# a lowering's copy of a quantizer's QuantizeLinear (the same codes in another layout, beside the original):
# the INT8 check compares the original and must not take the copy for another call of that quantizer
LAYOUT_COPY = "fxcompress: a copy of a quantizer's QuantizeLinear in another layout"


def mark_layout_copy(node: onnx.NodeProto) -> onnx.NodeProto:
    node.doc_string = LAYOUT_COPY
    return node


def is_layout_copy(node: onnx.NodeProto) -> bool:
    return node.doc_string == LAYOUT_COPY


def consumers(graph) -> Dict[str, List[onnx.NodeProto]]:
    users: Dict[str, List[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            users.setdefault(name, []).append(n)
    return users


def topological(nodes: List[onnx.NodeProto], available: set) -> List[onnx.NodeProto]:
    """Nodes in an order where every input is produced first (the rewrites insert nodes next to the layer;
    a reshape back reads a shape computed before it)."""
    available = set(available) | {""}
    pending, ordered = list(nodes), []
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise VerificationError(f"INT8 lowering left a cycle or a missing input at {rest[0].name or rest[0].op_type}")
        pending = rest
    return ordered
