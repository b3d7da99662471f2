"""ChannelGroups: which channels of the model must be pruned together (see fxcompress.channel_graph)."""
from __future__ import annotations

from fxcompress.channel_graph import ChannelGroupsResult
from fxcompress.meta_shapes import record_shapes
from fxcompress.channel_prune import probe_groups
from fxcompress.channel_rules import build_channel_graph
from fxcompress.pass_base import AnalysisPass


class ChannelGroups(AnalysisPass):
    """Analysis: the channel-dependency graph of the current model and its pruning groups."""

    def run(self, ctx) -> ChannelGroupsResult:
        # the pass manager records shapes on every node after each transform: propagate only if missing
        if any("tensor_meta" not in n.meta for n in ctx.gm.graph.nodes if n.op not in ("output", "get_attr")):
            record_shapes(ctx.gm, ctx.example_inputs)
        result = build_channel_graph(ctx.gm).build_groups(ctx.flops().per_node)
        probe_groups(ctx.gm, result, ctx.example_inputs)  # the predicted shapes must hold on a pruned copy
        return result

    def summarize(self, result: ChannelGroupsResult) -> dict:
        return result.summary()
