"""Applying the channel-coupling rules of `fxcompress.ops` to a graph: the driver and what a rule sees.

A rule (registered in `fxcompress.ops.registry.COUPLING`, one per module type, function or method)
receives a `RuleCtx` for one fx node and declares couplings between dimensions of the node's tensor
inputs, outputs and parameters. Every dimension the rule leaves untouched is blocked (it cannot be
pruned through this op), so an op with no rule blocks everything it touches: never a wrong prune.

    b = build_channel_graph(gm)            # gm with tensor_meta on its nodes (graph.shapes.record_shapes)
    result = b.build_groups(count_macs(gm).per_node)
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.fx as fx
import torch.nn as nn

from .. import ops  # noqa: F401  (registers every op family's rules)
from ..graph.keys import ValueKey, output_keys
from ..ops.registry import COUPLING, PASSIVE
from .builder import ChannelGraphBuilder
from .groups import CONSUMER, PRODUCER


def op_name(node: fx.Node, module: Optional[nn.Module] = None) -> str:
    if node.op == "call_module":
        return f"{type(module).__name__} ({node.target})"
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__qualname__", getattr(t, "__name__", str(t)))


class RuleCtx:
    """What a rule sees of one node, and the verbs it uses to declare couplings. Tensors are named by
    `ValueKey`s that the lookups return (None for non-tensors: every verb ignores None)."""

    def __init__(self, b: ChannelGraphBuilder, node: fx.Node, module: Optional[nn.Module] = None):
        self.b, self.node, self.module = b, node, module
        self.keys: Dict[ValueKey, None] = {}  # every vertex this node touches, in order (an ordered set)
        self.local: set = set()          # (key, dim) this rule coupled or blocked
        self._name: Optional[str] = None

    @property
    def name(self) -> str:
        """The op's name for reasons (formatted when a reason needs it: most nodes never do)."""
        if self._name is None:
            self._name = op_name(self.node, self.module)
        return self._name

    # ---- lookups ----------------------------------------------------------------------------------
    def _track(self, key):
        if key is not None:
            self.keys[key] = None
        return key

    def out(self, i: Optional[int] = None) -> Optional[ValueKey]:
        """The node's output (item `i` of a tuple output)."""
        return self.output_of(self.node, i)

    def output_of(self, node, i: Optional[int] = None) -> Optional[ValueKey]:
        """Item `i` (or the whole) of another node's output, if it is a tracked tensor."""
        if not isinstance(node, fx.Node):
            return None
        if i is None:   # the builder's own key object: its hash is computed once, not per lookup
            key = self.b.node_key.get(node)
            return self._track(key) if key is not None else None
        key = ValueKey.of_node(node.name, i)
        return self._track(key) if key in self.b.base else None

    def key_of(self, value) -> Optional[ValueKey]:
        return self.output_of(value)

    def n_outputs(self) -> int:
        return len(output_keys(self.node))

    def raw(self, i: int, name: Optional[str] = None, default=None):
        if i < len(self.node.args):
            return self.node.args[i]
        return self.node.kwargs.get(name, default) if name else default

    def arg(self, i: int, name: Optional[str] = None) -> Optional[ValueKey]:
        return self.key_of(self.raw(i, name))

    def tensor_args(self) -> List[ValueKey]:
        keys = []
        for a in list(self.node.args) + list(self.node.kwargs.values()):
            for v in (a if isinstance(a, (list, tuple)) else [a]):
                k = self.key_of(v)
                if k is not None and k not in keys:
                    keys.append(k)
        return keys

    def param(self, attr: str) -> Optional[ValueKey]:
        t = self.module
        for part in attr.split("."):
            t = getattr(t, part, None)
        if not isinstance(t, torch.Tensor):
            return None
        key = self.b.param_key(t)
        if key is not None:
            self.b.param_users.setdefault(key, []).append(self.node)
        return self._track(key)

    def shape(self, key: ValueKey) -> tuple:
        return self.b.shapes[key]

    def rank(self, key: ValueKey) -> int:
        return len(self.b.shapes[key])

    # ---- verbs ------------------------------------------------------------------------------------
    def same(self, a, da, b, db, kind="same") -> None:
        """Position i of a[da] goes with position i of b[db] (blocked if their sizes differ)."""
        if a is None or b is None:
            return
        sa, sb = self.b.shapes[a], self.b.shapes[b]
        da, db = da % len(sa), db % len(sb)
        if sa[da] != sb[db]:
            self.block(a, da, f"{self.name}: sizes differ")
            self.block(b, db, f"{self.name}: sizes differ")
            return
        self.b.couple_whole(a, da, b, db, kind)
        self.local.add((a, da))
        self.local.add((b, db))

    def couple(self, a, da, b, db, pa, pb, kind="map") -> None:
        """Position pa[i] of a[da] goes with position pb[i] of b[db]."""
        if a is None or b is None:
            return
        da, db = da % self.rank(a), db % self.rank(b)
        self.b.couple(a, da, b, db, pa, pb, kind)
        self.local.update({(a, da), (b, db)})

    def _role(self, key, dim, role) -> None:
        if key is not None:  # a get_attr node stands for its parameter
            self.b.roles[(self.b.attr_of.get(key, key), dim % self.rank(key))] = role

    def produces(self, key, dim) -> None:
        """This parameter dim makes the channels (conv output rows, biases, norm affines)."""
        self._role(key, dim, PRODUCER)

    def consumes(self, key, dim) -> None:
        """This parameter dim only reads the channels (a consumer's input columns, running variances)."""
        self._role(key, dim, CONSUMER)

    def reduces(self, key, dim) -> None:
        """This dim is summed away here (a sum, a mean, a p-norm): a zero entry adds nothing, so its channels
        may go with the group's. The zeroed run checks that the removed entries are zero here, and a mean's
        resize rule keeps its divisor (ops/reduction.py)."""
        if key is not None:
            self.local.add((key, dim % self.rank(key)))

    def block(self, key, dim, reason) -> None:
        if key is not None:
            self.b.block(key, dim % self.rank(key), reason)
            self.local.add((key, dim % self.rank(key)))

    def block_all(self, key, reason) -> None:
        if key is not None:
            for d in range(self.rank(key)):
                self.block(key, d, reason)

    def broadcast(self, src, dst) -> None:
        """Couple dims of `src` with `dst`, aligned from the right; broadcast (size-1) dims are left alone."""
        if src is None or dst is None:
            return
        rs, rd = self.rank(src), self.rank(dst)
        for d in range(rd):
            ds = d - (rd - rs)
            if ds >= 0 and self.shape(src)[ds] == self.shape(dst)[d]:
                self.same(src, ds, dst, d)

    def identity(self, a, b, skip=()) -> None:
        """Couple every dim of a with the same dim of b except those in `skip`."""
        if a is None or b is None:
            return
        skip = {s % self.rank(a) for s in skip}
        for d in range(min(self.rank(a), self.rank(b))):
            if d not in skip:
                self.same(a, d, b, d)


# ============================================================================================ driver
def build_channel_graph(gm: fx.GraphModule) -> ChannelGraphBuilder:
    """Apply the rules to every node of a shape-annotated graph (see graph.shapes.record_shapes)."""
    b = ChannelGraphBuilder(gm)
    outputs: Dict[fx.Node, List[ValueKey]] = {}
    for node in gm.graph.nodes:
        keys = output_keys(node)
        for key, shape in keys.items():
            b.add_vertex(key, shape)
            if key.index is None:   # a single-tensor output
                b.node_key[node] = key
        outputs[node] = list(keys)
    for node in gm.graph.nodes:
        module = b.modules.get(node.target) if node.op == "call_module" else None
        r = RuleCtx(b, node, module)
        if node.op == "placeholder":
            r.block_all(r.out(), "model input")
            continue
        if node.op == "output":
            for k in r.tensor_args():
                r.block_all(k, "model output")
            _block_output_items(r, node.args[0])
            continue
        if node.op == "get_attr":
            _get_attr(r)
            continue
        rule = COUPLING.lookup(node, module)
        outs = outputs[node]
        if rule is PASSIVE:   # metadata reads (x.size(), len(x)...); one that makes a tensor is not understood
            if not outs:
                continue
            rule = None
        ins = r.tensor_args()
        r.keys = {}
        if rule is None:
            if not outs and not ins:
                continue
            reason = f"op not understood: {r.name}"
            for k in outs + ins:
                b.block_all(k, reason)
            if module is not None:
                for t in module_tensors(module):
                    k = b.param_key(t)
                    if k:
                        b.block_all(k, reason)
            continue
        try:
            rule(r)
        except Exception as e:  # a rule that cannot handle this instance blocks instead of guessing
            reason = f"{r.name}: rule failed ({type(e).__name__}: {e})"
            for k in set(outs + ins + list(r.keys)):
                b.block_all(k, reason)
            continue
        _block_untouched(r, outs, ins)
    return b


def _block_output_items(r: RuleCtx, value) -> None:
    if isinstance(value, (list, tuple)):
        for v in value:
            _block_output_items(r, v)
    elif isinstance(value, dict):
        for v in value.values():
            _block_output_items(r, v)
    elif isinstance(value, fx.Node):
        for k in output_keys(value):
            r.b.block_all(k, "model output")


def _block_untouched(r: RuleCtx, outs, ins) -> None:
    keys = set(outs) | set(ins) | set(r.keys)
    if r.module is not None:
        for t in module_tensors(r.module):
            k = r.b.param_key(t)
            if k:
                keys.add(k)
    for k in keys:
        for d in range(len(r.b.shapes[k])):
            if (k, d) not in r.local:
                r.b.block(k, d, f"{r.name}: dim {d} not carried through")


def module_tensors(module: nn.Module) -> List[torch.Tensor]:
    """Parameters and buffers of a module and its children (a leaf module's own dicts, read directly:
    named_parameters() costs more than the rule that uses it)."""
    if not module._modules:
        return [t for store in (module._parameters, module._buffers) for t in store.values() if t is not None]
    return list(module.parameters()) + list(module.buffers())


def _get_attr(r: RuleCtx) -> None:
    out = r.out()
    if out is None:
        return
    t = r.b.gm
    for part in r.node.target.split("."):
        t = getattr(t, part)
    p = r.b.param_key(t) if isinstance(t, torch.Tensor) else None
    if p is None:
        r.block_all(out, f"constant {r.node.target}")
        return
    r.b.param_users.setdefault(p, []).extend(r.node.users)
    r.b.attr_of[out] = p
    for d in range(r.rank(out)):
        r.b.couple(out, d, p, d, kind="attr")
