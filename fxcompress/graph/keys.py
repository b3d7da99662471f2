"""Names of the tensors the channel analysis tracks: a node's output (or one item of a tuple output), or a
parameter/buffer by qualified name. A small typed value (a NamedTuple: hashed and compared as fast as a
string), printed the way reports show it: `n:<node>`, `n:<node>#<i>`, `p:<qualname>`.

    >>> ValueKey.of_node("conv1"), ValueKey.of_node("split", 1), ValueKey.of_param("layer1.0.conv1.weight")
    (n:conv1, n:split#1, p:layer1.0.conv1.weight)
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch.fx as fx

NODE, PARAM = "n", "p"


class ValueKey(NamedTuple):
    kind: str                     # NODE or PARAM
    name: str                     # node name or parameter qualname
    index: Optional[int] = None   # item of a tuple output

    @classmethod
    def of_node(cls, node: Union[fx.Node, str], index: Optional[int] = None) -> "ValueKey":
        return cls(NODE, node if isinstance(node, str) else node.name, index)

    @classmethod
    def of_param(cls, qualname: str) -> "ValueKey":
        return cls(PARAM, qualname)

    @property
    def is_param(self) -> bool:
        return self.kind == PARAM

    @property
    def node_name(self) -> Optional[str]:
        """The node a node key belongs to (whatever the tuple item), None for parameters."""
        return self.name if self.kind == NODE else None

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" + ("" if self.index is None else f"#{self.index}")

    __repr__ = __str__


def output_keys(node: fx.Node) -> dict:
    """ValueKey -> shape for each tensor a node produces, from its recorded `tensor_meta` (a tuple output
    gives one key per tensor item)."""
    meta = node.meta.get("tensor_meta")
    if meta is None:
        return {}
    if hasattr(meta, "shape"):
        return {ValueKey(NODE, node.name): tuple(meta.shape)}
    if isinstance(meta, (tuple, list)):
        return {ValueKey(NODE, node.name, i): tuple(m.shape) for i, m in enumerate(meta) if hasattr(m, "shape")}
    return {}
