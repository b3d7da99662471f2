"""Why a layer was (not) pruned: the channel groups of a model as rows a person reads.

A row is one group: the modules whose channels it holds, its width (units a pruner keeps or removes), the
share of the model's MACs in the layers whose width it sets, and whether it is prunable, or the reason it
is not, naming the op that blocks it. Groups of kernel, spatial, token or batch dimensions (no channel of
a layer) are kept apart: they are never pruned, and a table of them answers no one's question.

    explained = explain_model(torchvision.models.resnet50().eval(), (torch.randn(1, 3, 224, 224),))
    print(groups_markdown(explained.rows))                 # channel groups, in model order
    explained.rows[0].reason                               # 'model input (x)'
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch.fx as fx

from ..graph.macs import FlopsResult
from ..prune.groups import PRODUCER, ChannelGroup, ChannelGroupsResult
from .tables import markdown_table


@dataclass
class GroupRow:
    """One channel group as the table shows it.

        row = explain_model(model, (x,)).rows[3]
        row.producers, row.width, f"{row.macs_share:.1%}", row.prunable or row.reason
    """
    id: int
    width: int
    modules: List[str]            # every layer whose channels the group holds, in model order
    producers: List[str]          # the layers whose output channels it holds (weights' dim 0)
    members: int                  # dimensions of tensors and parameters in the group
    macs_share: float             # MACs of the layers whose width this group sets / the model's MACs
    prunable: bool
    reason: str                   # "" when prunable
    channels: bool                # a group of layer channels (else kernel, spatial, batch... dimensions)
    first: int = 0                # position in the graph of the group's first tensor (model order)
    last: int = 0
    reasons: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GroupsExplanation:
    """Every group of a model as a row, in model order, with the analysis result they came from.

        explained = explain_model(model, (x,))
        print(explained.headline())
        for row in explained.largest_fixed():      # the fixed channel groups setting the most MACs
            print(row.id, row.reason)
    """
    rows: List[GroupRow]
    result: ChannelGroupsResult
    macs: int
    params: int

    def channel_rows(self) -> List[GroupRow]:
        return [r for r in self.rows if r.channels]

    def headline(self) -> str:
        rows = self.channel_rows()
        prunable = [r for r in rows if r.prunable]
        return (f"{len(prunable)} of {len(rows)} channel groups prunable ({sum(r.width for r in prunable)} of "
                f"{sum(r.width for r in rows)} channels); {len(self.rows) - len(rows)} groups of kernel, spatial "
                f"or batch dimensions not listed")

    def largest_fixed(self, top: int = 5) -> List[GroupRow]:
        """The fixed channel groups setting the widths of the most MACs: what to fix first."""
        fixed = [r for r in self.channel_rows() if not r.prunable]
        return sorted(fixed, key=lambda r: -r.macs_share)[:top]


def is_channel_group(group: ChannelGroup, shapes: Dict) -> bool:
    """A group holding a layer's channels: dim 0 of a 1-D parameter (bias, norm affine, scale), or the output
    or input channels (dim 0 or 1) of a weight. Kernel taps, token positions, class tokens' leading dims and
    the batch are not channels."""
    for m in group.param_members():
        shape = shapes.get(m.key, ())
        if len(shape) == 1 or (m.dim in (0, 1) and len(shape) >= 2 and m.name.rsplit(".", 1)[-1].endswith("weight")):
            return True
    return False


def _node_order(gm: fx.GraphModule) -> Dict[str, int]:
    """Where each node, module and attribute is first used in the graph (for model order)."""
    order: Dict[str, int] = {}
    for i, node in enumerate(gm.graph.nodes):
        order.setdefault(node.name, i)
        if node.op in ("call_module", "get_attr"):
            order.setdefault(str(node.target), i)
    return order


def _position(group: ChannelGroup, order: Dict[str, int]) -> List[int]:
    spots = []
    for m in group.members:
        if m.is_param:
            owner = m.name.rsplit(".", 1)[0]
            spot = order.get(m.name, order.get(owner))
        else:
            spot = order.get(m.key.node_name)
        if spot is not None:
            spots.append(spot)
    return spots or [len(order)]


def _macs_by_owner(gm: fx.GraphModule, per_node: Dict[str, int]) -> Dict[str, List[tuple]]:
    """(node, MACs) of every MAC-counting node, by the module it calls or the attribute it reads."""
    by_owner: Dict[str, List[tuple]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and per_node.get(node.name):
            by_owner.setdefault(str(node.target), []).append((node.name, per_node[node.name]))
        elif node.op == "get_attr":
            for user in node.users:
                if per_node.get(user.name):
                    by_owner.setdefault(str(node.target), []).append((user.name, per_node[user.name]))
    return by_owner


def _macs_share(group: ChannelGroup, shapes: Dict, by_owner: Dict[str, List[tuple]], total: int) -> float:
    """The share of the model's MACs in the layers whose width this group sets: each layer counted once,
    times the fraction of its channels the group holds (a layer reading a concatenation splits its MACs
    between the groups of the parts). A layer counts for its input and its output channels, so the shares
    of all groups add up to more than 1."""
    if not total:
        return 0.0
    fraction: Dict[str, tuple] = {}   # MAC node -> (fraction of its channels here, its MACs)
    for m in group.param_members():
        shape = shapes.get(m.key, ())
        if not shape:
            continue
        parts = m.name.split(".")
        owner = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in by_owner),
                     None)
        for node, macs in by_owner.get(owner, ()):
            f = len(m.positions) / max(shape[m.dim], 1)
            if f > fraction.get(node, (0.0, 0))[0]:
                fraction[node] = (f, macs)
    return sum(f * macs for f, macs in fraction.values()) / total


def _named_reason(reason: str, group: ChannelGroup, gm: fx.GraphModule) -> str:
    """The analysis' reason, with the tensor named where the reason names only a role: the model input
    (which placeholder) or output (which layer feeds it); torch functions spelled as users write them."""
    reason = reason.replace("_VariableFunctionsClass.", "torch.")
    if reason == "model input":
        names = [m.key.node_name for m in group.members if not m.is_param
                 and any(n.name == m.key.node_name and n.op == "placeholder" for n in gm.graph.nodes)]
        return f"model input ({', '.join(sorted(set(names))[:3])})" if names else reason
    if reason == "model output":
        outputs = {a.name: str(a.target) if a.op == "call_module" else a.name
                   for n in gm.graph.nodes if n.op == "output" for a in n.all_input_nodes}
        names = sorted({outputs[m.key.node_name] for m in group.members
                        if not m.is_param and m.key.node_name in outputs})
        return f"model output (from {', '.join(names[:3])})" if names else reason
    return reason


def group_rows(result: ChannelGroupsResult, gm: fx.GraphModule, flops: FlopsResult) -> List[GroupRow]:
    order, by_owner = _node_order(gm), _macs_by_owner(gm, flops.per_node)
    rows = []
    for g in result.groups:
        spots = _position(g, order)
        reasons = [_named_reason(r, g, gm) for r in g.reasons]
        modules = sorted(g.modules(), key=lambda m: (order.get(m, len(order)), m))   # in model order
        producers = sorted({m.name.rsplit(".", 1)[0] for m in g.param_members()
                            if m.dim == 0 and m.role == PRODUCER and len(result.shapes.get(m.key, ())) >= 2},
                           key=lambda m: (order.get(m, len(order)), m))
        rows.append(GroupRow(g.id, g.size, modules, producers, len(g.members),
                             _macs_share(g, result.shapes, by_owner, flops.macs), g.prunable,
                             "" if g.prunable else (reasons[0] if reasons else "?"),
                             is_channel_group(g, result.shapes), min(spots), max(spots), reasons))
    rows.sort(key=lambda r: (r.first, r.id))
    return rows


def explain_model(model, example_inputs, leaf_modules=()) -> GroupsExplanation:
    """Trace `model` the way `fxcompress.compile` does and explain its channel groups."""
    from .. import compile
    from ..passes import ChannelGroups

    class KeptChannelGroups(ChannelGroups):
        """ChannelGroups that also keeps what the rows need: the graph and its MACs."""
        kept = None

        def run(self, ctx):
            result = super().run(ctx)
            KeptChannelGroups.kept = (result, ctx.gm, ctx.flops())
            return result

    compile(model, [KeptChannelGroups()], example_inputs, leaf_modules=leaf_modules, progress=False)
    result, gm, flops = KeptChannelGroups.kept
    return GroupsExplanation(group_rows(result, gm, flops), result, flops.macs, flops.params)


def _members_text(row: GroupRow, limit: int = 3) -> str:
    if not row.modules:
        return f"({row.members} tensor dims, no layer)"
    more = f" +{len(row.modules) - limit}" if len(row.modules) > limit else ""
    return ", ".join(row.modules[:limit]) + more


def groups_table_rows(rows: List[GroupRow], members_limit: int = 3) -> List[List[str]]:
    table = [["group", "members", "width", "MACs share", "prunable", "why not"]]
    for r in rows:
        table.append([str(r.id), _members_text(r, members_limit), str(r.width), f"{r.macs_share:.1%}",
                      "yes" if r.prunable else "no", r.reason])
    return table


def groups_markdown(rows: List[GroupRow], members_limit: int = 3) -> str:
    return markdown_table(groups_table_rows(rows, members_limit))


def rows_for_layer(rows: List[GroupRow], layer: str) -> List[GroupRow]:
    """The groups holding channels of module `layer` (exact name, else every module containing it)."""
    exact = [r for r in rows if layer in r.modules]
    return exact or [r for r in rows if any(layer in m for m in r.modules)]


def find_row(rows: List[GroupRow], group_id: int) -> Optional[GroupRow]:
    return next((r for r in rows if r.id == group_id), None)
