"""ChannelGroups: which channels of the model must be pruned together (see fxcompress.channel_graph)."""
from __future__ import annotations

from fxcompress.channel_graph import ChannelGroupsResult
from fxcompress.channel_rules import build_channel_graph
from fxcompress.pass_base import AnalysisPass


class ChannelGroups(AnalysisPass):
    """Analysis: the channel-dependency graph of the current model and its pruning groups."""

    def run(self, ctx) -> ChannelGroupsResult:
        ctx.refresh_shapes()
        builder = build_channel_graph(ctx.gm)
        return builder.build_groups(ctx.flops().per_node)

    def summarize(self, result: ChannelGroupsResult) -> dict:
        return result.summary()
