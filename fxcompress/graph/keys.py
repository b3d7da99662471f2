"""Names of the tensors the channel analysis tracks: a node's output (or one item of a tuple output), or a
parameter/buffer by qualified name. A small typed value: a `str` subclass without instance state, so it
hashes, compares and stays invisible to the garbage collector like the string it prints as
(`n:<node>`, `n:<node>#<i>`, `p:<qualname>`), while code reads it through `kind`, `name`, `index`.

    >>> ValueKey.of_node("conv1"), ValueKey.of_node("split", 1), ValueKey.of_param("layer1.0.conv1.weight")
    ('n:conv1', 'n:split#1', 'p:layer1.0.conv1.weight')
    >>> ValueKey.of_node("split", 1).index, ValueKey.of_param("fc.weight").name
    (1, 'fc.weight')
"""
from __future__ import annotations

from typing import Optional, Union

import torch.fx as fx

NODE, PARAM = "n", "p"


class ValueKey(str):
    __slots__ = ()

    @classmethod
    def of_node(cls, node: Union[fx.Node, str], index: Optional[int] = None) -> "ValueKey":
        name = node if isinstance(node, str) else node.name   # fx node names never contain '#'
        return cls(f"n:{name}" if index is None else f"n:{name}#{index}")

    @classmethod
    def of_param(cls, qualname: str) -> "ValueKey":
        return cls(f"p:{qualname}")

    @property
    def kind(self) -> str:
        return self[0]

    @property
    def is_param(self) -> bool:
        return self[0] == PARAM

    @property
    def name(self) -> str:
        """The node name (whatever the tuple item) or the parameter's qualified name."""
        return self[2:] if self[0] == PARAM else self[2:].partition("#")[0]

    @property
    def index(self) -> Optional[int]:
        if self[0] == PARAM or "#" not in self:
            return None
        return int(self.rpartition("#")[2])

    @property
    def node_name(self) -> Optional[str]:
        """The node a node key belongs to, None for parameters."""
        return None if self[0] == PARAM else self.name


def output_keys(node: fx.Node) -> dict:
    """ValueKey -> shape for each tensor a node produces, from its recorded `tensor_meta` (a tuple output
    gives one key per tensor item)."""
    meta = node.meta.get("tensor_meta")
    if meta is None:
        return {}
    if hasattr(meta, "shape"):
        return {ValueKey.of_node(node.name): tuple(meta.shape)}
    if isinstance(meta, (tuple, list)):
        return {ValueKey.of_node(node.name, i): tuple(m.shape) for i, m in enumerate(meta) if hasattr(m, "shape")}
    return {}
