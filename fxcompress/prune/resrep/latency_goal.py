"""ResRep to a measured latency target: which channels the masks move toward, and the final measurement.

Before training, the latency search of MagnitudePrune (fxcompress.latency.target) runs once on the
model's magnitude scores: it builds the latency model, prunes, measures the result on the runtime and
corrects its aim until the measured latency meets the target; the corrected aim (a predicted fraction) is
what ResRep then plans for. At every masking step the plan is remade from the compactors' current row
norms (masked channels first: they cost nothing), by least importance per unit of predicted latency saved,
and up to `step_channels` more of the channels it removes are masked, lowest norms first. After merge and
removal the pruned model is timed beside the unpruned one (exported before training) and reported beside
the target.

    goal = LatencyGoal(ctx, result, placement, resrep_pass, tmpdir)
    hook = ResRepHook(masks, macs_of, None, ..., masker=goal.masker(masks))
    metrics.update(goal.result(masks, pruned_gm, example_inputs))
"""
from __future__ import annotations

import copy
from typing import Optional

from ...latency.search import latency_plan
from ...latency.target import export_unpruned, measured_fraction, search_latency_target
from ..plan import magnitude_scores
from .masking import ChannelMasks


class LatencyGoal:
    def __init__(self, ctx, result, placement, options, directory: str):
        self.target, self.round_to, self.min_channels = options.latency, options.round_to, options.min_channels
        self.directory = directory
        self.groups = [result.groups[g] for g in placement.eligible]
        model = copy.deepcopy(ctx.gm).cpu()   # timed on this CPU whatever device training uses
        inputs = tuple(x.cpu() for x in ctx.example_inputs)
        scores = magnitude_scores(model, result, self.groups)
        _, found, self.lm = search_latency_target(model, result, self.groups, scores, inputs, self.target,
                                                  self.round_to, self.min_channels, ctx.progress, "ResRep")
        self.aim = found["aim"]
        chosen = [r for r in found["latency_rounds"] if r["aimed"] == self.aim][-1]
        self.scale = found["predicted_latency"] / chosen["predicted"]   # runtime's fraction -> the user's terms
        self.calibration = {k: found[k] for k in ("aim", "predicted_latency", "measured_latency", "met_target")}
        self.unpruned = export_unpruned(model, inputs, self.target, directory)

    def masker(self, masks: ChannelMasks):
        def step(limit: Optional[int]) -> dict:
            goal, self.predicted = latency_plan(self.lm, self.groups, masks.scores_masked_first(), self.aim,
                                                self.round_to, self.min_channels, "ResRep")
            return masks.mask_toward(goal, limit)
        return step

    def result(self, masks: ChannelMasks, pruned, example_inputs) -> dict:
        model = copy.deepcopy(pruned).cpu()
        measured = measured_fraction(self.unpruned, model, tuple(x.cpu() for x in example_inputs), self.target,
                                     self.directory)
        rt = self.target.runtime
        return {"target_latency": self.target.fraction, "runtime": rt.name, "threads": rt.threads, "batch": rt.batch,
                "relative_to": (self.target.relative_to or rt).name,
                "predicted_latency": self.lm.fraction(self.lm.masks(masks.plan())) * self.scale, **measured}
