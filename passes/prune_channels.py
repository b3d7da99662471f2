"""PruneChannels: physically remove the channels a plan drops, checked for exactness."""
from __future__ import annotations

from typing import Mapping, Sequence

from fxcompress.prune.apply import prune
from fxcompress.core.pass_base import TransformPass

from .channel_groups import ChannelGroups


class PruneChannels(TransformPass):
    """Transform: `plan` maps a ChannelGroups group id to the unit indices it keeps (groups left out keep
    everything). The pruned model must match the unpruned one with those channels zeroed (relative
    error below TOLERANCES['exact_transform'] on the example inputs), else VerificationError and the
    model is left as it was."""

    requires = (ChannelGroups,)
    writes_in_place = False   # builds the pruned model beside ctx.gm (fxcompress.prune.apply)

    def __init__(self, plan: Mapping[int, Sequence[int]]):
        self.plan = dict(plan)

    def run(self, ctx) -> dict:
        ctx.gm, metrics = prune(ctx.gm, ctx.get(ChannelGroups), self.plan, ctx.example_inputs)
        return metrics
