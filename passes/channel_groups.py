"""ChannelGroups: which channels of the model must be pruned together (see fxcompress.prune)."""
from __future__ import annotations

from fxcompress.core.pass_base import AnalysisPass
from fxcompress.graph.shapes import ensure_shapes
from fxcompress.prune.builder import paused_gc
from fxcompress.prune.coupling import build_channel_graph
from fxcompress.prune.groups import ChannelGroupsResult
from fxcompress.prune.probe import probe_groups


class ChannelGroups(AnalysisPass):
    """Analysis: the channel-dependency graph of the current model and its pruning groups.

        result = fxcompress.compile(model, [ChannelGroups()], x)   # the report row summarises the groups
        groups = ctx.get(ChannelGroups)                            # inside a pass: a ChannelGroupsResult
    """

    def run(self, ctx) -> ChannelGroupsResult:
        ensure_shapes(ctx.gm, ctx.example_inputs)
        with paused_gc():
            result = build_channel_graph(ctx.gm).build_groups(ctx.flops().per_node)
        fixed, _ = probe_groups(ctx.gm, result, ctx.example_inputs)  # the predicted shapes must hold on a pruned copy
        return result.with_fixed(fixed) if fixed else result

    def summarize(self, result: ChannelGroupsResult) -> dict:
        return result.summary()
