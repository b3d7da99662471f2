"""Where ResRep's compactors go, found from the channel groups, and their insertion into a graph.

A group's channels are made by its *producers* (convs, linears, norms owning PRODUCER parameters). A
producer is *terminal* when its output reaches a consumer (an op outside the group's values) without first
passing through another producer of the group: the residual stream's block outputs, the BatchNorm after a
depthwise conv, the BatchNorm after a DenseNet concatenation. A compactor after every terminal producer
(after its BatchNorm, if any) silences a channel exactly once all of them have the channel's row at zero,
whatever the inner producers do; so all the compactors of one group share one mask. Dense producers
(groups=1 conv, linear) get a full compactor, which merges into them; others a per-channel scale.

    placement = find_sites(gm, groups_result, group_ids)
    compacted = insert_compactors(gm, placement.sites)   # a new graph sharing gm's tensors
"""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch.fx as fx
import torch.nn as nn

from ..groups import PRODUCER, ChannelGroup, ChannelGroupsResult
from .compactor import ChannelScale, ConvCompactor, LinearCompactor

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class Site:
    """One compactor: after node `attach` (a producer or its BatchNorm), merging into module `producer`
    (with BatchNorm `norm` folded first, if set)."""
    attach: str
    producer: str
    norm: Optional[str]
    kind: type
    channels: int
    channel_dim: int = 1    # 1 for NCHW outputs, -1 after a Linear
    rank: int = 4           # of the attach node's output
    groups: List[int] = field(default_factory=list)
    compactor: str = ""     # the compactor's module name, once inserted

    def make(self) -> nn.Module:
        if self.kind is ChannelScale:
            return ChannelScale(self.channels, self.channel_dim, self.rank)
        return self.kind(self.channels)


@dataclass
class Placement:
    sites: List[Site]
    eligible: List[int]            # groups whose channels the compactors can silence
    skipped: Dict[int, str]        # group id -> why ResRep leaves it alone


def _module_calls(gm: fx.GraphModule) -> Dict[str, List[fx.Node]]:
    calls: Dict[str, List[fx.Node]] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls.setdefault(n.target, []).append(n)
    return calls


def _is_terminal(p: fx.Node, producers: set, values: set) -> bool:
    """Does p's output reach something outside the group's values without crossing another producer?"""
    stack, seen = [p], {p}
    while stack:
        for user in stack.pop().users:
            if user in producers or user in seen:
                continue
            if user.name not in values:
                return True
            seen.add(user)
            stack.append(user)
    return False


def _site_for(t: fx.Node, modules: dict, calls: Counter, max_full: Optional[int]) -> "Site | str":
    """The compactor for terminal producer node t, or why it cannot have one."""
    m = modules[t.target]

    def dense(node) -> bool:
        if not isinstance(node, fx.Node) or node.op != "call_module" or calls[node.target] != 1:
            return False
        mod = modules[node.target]
        return isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and mod.groups == 1)

    def full_or_scale(kind, channels, dim):   # a C x C compactor, unless C is above max_full
        return (kind, dim) if max_full is None or channels <= max_full else (ChannelScale, dim)

    if isinstance(m, BATCH_NORMS):
        if m.running_mean is None or not m.affine:
            return f"{t.target} is a BatchNorm without running statistics or affine parameters"
        src = t.args[0] if t.args else None
        if dense(src) and len(src.users) == 1:
            linear = isinstance(modules[src.target], nn.Linear)
            kind, dim = full_or_scale(LinearCompactor if linear else ConvCompactor, m.num_features, 1)
            if kind is LinearCompactor and t.meta.get("tensor_meta") is not None and len(t.meta["tensor_meta"].shape) != 2:
                return f"{t.target} normalises a Linear's output over dim 1 of a rank-3 tensor"
            return Site(t.name, src.target if kind is not ChannelScale else t.target,
                        t.target if kind is not ChannelScale else None, kind, m.num_features, dim)
        return Site(t.name, t.target, None, ChannelScale, m.num_features, 1)
    if isinstance(m, nn.Linear):
        kind, dim = full_or_scale(LinearCompactor, m.out_features, -1)
        return Site(t.name, t.target, None, kind, m.out_features, dim)
    if isinstance(m, nn.Conv2d):
        kind, dim = full_or_scale(ConvCompactor if m.groups == 1 else ChannelScale, m.out_channels, 1)
        return Site(t.name, t.target, None, kind, m.out_channels, dim)
    return f"its channels leave through {t.target} ({type(m).__name__}), which cannot absorb a compactor"


def find_sites(gm: fx.GraphModule, result: ChannelGroupsResult, group_ids: Sequence[int],
               max_full_channels: Optional[int] = None) -> Placement:
    """The compactor sites that silence the channels of the groups `group_ids` (prunable ones); producers
    wider than `max_full_channels` get a ChannelScale instead of a full compactor."""
    modules = dict(gm.named_modules())
    calls_of = _module_calls(gm)
    calls = Counter({k: len(v) for k, v in calls_of.items()})
    sites: Dict[str, Site] = {}
    eligible, skipped = [], {}
    for gid in group_ids:
        group: ChannelGroup = result.groups[gid]
        reason, found = _group_sites(group, modules, calls_of, calls, max_full_channels)
        if isinstance(reason, str):
            skipped[gid] = reason
            continue
        eligible.append(gid)
        for site in found:
            sites.setdefault(site.attach, site).groups.append(gid)
    return Placement(list(sites.values()), eligible, skipped)


def _group_sites(group: ChannelGroup, modules: dict, calls_of: dict, calls: Counter, max_full: Optional[int]):
    owners = {m.name.rpartition(".")[0] for m in group.param_members() if m.role == PRODUCER}
    if not owners:
        return "no module produces its channels", []
    producers = set()
    for owner in sorted(owners):
        if owner not in calls_of:
            return f"producer parameter of {owner or 'the root module'} is not used through a module call", []
        if calls[owner] > 1:
            return f"producer {owner} is called {calls[owner]} times (shared weights)", []
        producers.add(calls_of[owner][0])
    values = {m.key.node_name for m in group.members if not m.is_param}
    found = []
    for p in sorted(producers, key=lambda n: n.name):
        if _is_terminal(p, producers, values):
            site = _site_for(p, modules, calls, max_full)
            if isinstance(site, str):
                return site, []
            meta = p.meta.get("tensor_meta")
            if meta is None or not hasattr(meta, "shape"):
                return f"{p.name} has no recorded output shape", []
            site.rank = len(meta.shape)
            found.append(site)
    return (None, found) if found else ("no producer's output reaches a consumer", [])


def insert_compactors(gm: fx.GraphModule, sites: Sequence[Site]) -> fx.GraphModule:
    """A new GraphModule with an identity compactor after each site's attach node. Parameters and buffers
    are shared with `gm` (training the new graph trains gm's weights); `gm` itself is unchanged. Fills in
    each site's `compactor` name."""
    tensors = list(gm.parameters()) + list(gm.buffers())
    new = copy.deepcopy(gm, {id(t): t for t in tensors})
    nodes = {n.name: n for n in new.graph.nodes}
    taken = {name for name, _ in new.named_modules()}
    for site in sites:
        attach = nodes[site.attach]
        ref = new.get_submodule(site.producer).weight
        name = f"{site.attach}_compactor"
        while name in taken:
            name += "_"
        taken.add(name)
        new.add_submodule(name, site.make().to(device=ref.device, dtype=ref.dtype))
        with new.graph.inserting_after(attach):
            q = new.graph.call_module(name, (attach,))
        attach.replace_all_uses_with(q, delete_user_cb=lambda user: user is not q)
        q.meta = {k: v for k, v in attach.meta.items() if k == "tensor_meta"}
        site.compactor = name
    new.graph.lint()
    new.recompile()
    return new
