"""Pruning to a measured latency target: plan with the latency model, prune, measure the result on the
runtime beside the unpruned model, and re-plan when the measurement misses the target.

The target is a fraction of the unpruned model's measured latency on `relative_to` (the runtime itself by
default; "onnxruntime-fp32" for "a third of FP32" when deploying INT8). The plan's predicted fraction
meets the target; the pruned model is then lowered and timed side by side with the unpruned one (and the
reference), and if it misses the target by more than `tolerance`, the search runs again with its aim
scaled by what the prediction missed (at most `corrections` times). Of the models measured, the one
within tolerance that keeps the most time (the most channels) is kept, else the closest. Latencies are
runtime.measure's (Measurement.ms: the lower of the fastest end-to-end run and the profiled estimate).

    new_gm, metrics = prune_to_latency(gm, groups_result, groups, scores, example_inputs,
                                       LatencyTarget(0.33, Runtime("onnxruntime-int8", 2, 32)), round_to=8)
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.fx as fx
from tqdm.auto import tqdm

from ..prune.apply import prune
from ..prune.groups import ChannelGroup, ChannelGroupsResult
from .model import LatencyModel
from .runtime import Runtime, export_for, measure
from .search import LatencyUnreachable, latency_plan


@dataclass(frozen=True)
class LatencyTarget:
    """`fraction` of the unpruned model's latency on `relative_to` (None: on `runtime`), met on `runtime`."""
    fraction: float
    runtime: Runtime
    relative_to: Optional[Runtime] = None
    corrections: int = 2
    tolerance: float = 0.05
    points: int = 6          # sampled widths per table axis
    measure_runs: int = 20   # interleaved end-to-end runs per measurement, at least
    measure_budget_s: float = 4.0   # and more while they fit this many seconds


def prune_to_latency(gm: fx.GraphModule, result: ChannelGroupsResult, groups: Sequence[ChannelGroup],
                     scores: Dict[int, np.ndarray], example_inputs: Sequence[torch.Tensor], target: LatencyTarget,
                     round_to: int = 1, min_channels: int = 1, progress: bool = True,
                     owner: str = "MagnitudePrune") -> tuple:
    """(the pruned GraphModule, metrics: target, predicted and measured latency, the rounds, the latency
    model's breakdown). The pruned model is checked exact by fxcompress.prune.apply.prune."""
    rt = target.runtime
    with tempfile.TemporaryDirectory(prefix="fxcompress_latency_target_") as tmp:
        paths = {"unpruned": os.path.join(tmp, "unpruned.onnx")}
        lm = LatencyModel.build(gm, result, example_inputs, rt, groups=[g.id for g in groups], round_to=round_to,
                                min_channels=min_channels, points=target.points, measure_runs=target.measure_runs,
                                measure_budget_s=target.measure_budget_s, progress=progress,
                                unpruned_path=paths["unpruned"])
        base = "unpruned"
        goal = target.fraction   # of the unpruned model's latency on rt, what the search aims at
        if target.relative_to is not None and target.relative_to != rt:
            base = "reference"
            paths[base] = export_for(gm, example_inputs, target.relative_to, os.path.join(tmp, "reference.onnx"))
            ms = measure(paths, rt, example_inputs, target.measure_runs, budget_s=target.measure_budget_s)
            goal = target.fraction * ms[base].ms / ms["unpruned"].ms
        aim, rounds, candidates = goal, [], []
        for attempt in tqdm(range(target.corrections + 1), desc=f"{owner}: prune to a latency target",
                            disable=not progress, leave=False):
            try:
                plan, predicted = ({}, 1.0) if aim >= 1 else latency_plan(lm, groups, scores, aim, round_to,
                                                                          min_channels, owner)
            except LatencyUnreachable as e:
                if candidates:
                    break   # a correction aiming lower than the model can go: keep what was measured
                reachable = math.ceil(1000 * e.reachable * target.fraction / goal) / 1000   # in the user's terms
                raise LatencyUnreachable(
                    f"{owner} target_latency={target.fraction} (of the unpruned model's latency on "
                    f"{(target.relative_to or rt).name}) cannot be reached on {rt.describe()}: removing more "
                    f"channels saves no predicted time below {reachable} ({len(groups)} prunable groups, "
                    f"round_to={round_to}, min_channels={min_channels}). Choose target_latency >= {reachable}, "
                    f"or lower round_to/min_channels.", reachable) from None
            new, prune_metrics = prune(gm, result, plan, example_inputs)
            path = export_for(new, example_inputs, rt, os.path.join(tmp, f"pruned{attempt}.onnx"))
            ms = measure({**paths, "pruned": path}, rt, example_inputs, target.measure_runs,
                         budget_s=target.measure_budget_s)
            unpruned = ms["unpruned"].ms
            goal = target.fraction * ms[base].ms / unpruned   # the reference, measured again beside
            measured = ms["pruned"].ms / unpruned
            rounds.append({"aimed": aim, "predicted": predicted, "measured": measured, "groups_pruned": len(plan),
                           "measured_ms": {k: m.to_dict() for k, m in ms.items()}})
            candidates.append((new, prune_metrics, rounds[-1], goal))
            if abs(measured / goal - 1) <= target.tolerance or (aim >= 1 and measured <= goal):
                break
            aim = predicted * goal / measured   # what the prediction missed, taken out of the next aim
    within = [c for c in candidates if c[2]["measured"] <= c[3] * (1 + target.tolerance)]
    new, prune_metrics, chosen, goal = (max(within, key=lambda c: c[2]["measured"]) if within
                                        else min(candidates, key=lambda c: c[2]["measured"] / c[3]))
    ms = chosen["measured_ms"]
    metrics = {**prune_metrics, "target_latency": target.fraction, "runtime": rt.name, "threads": rt.threads,
               "batch": rt.batch, "relative_to": (target.relative_to or rt).name,
               "predicted_latency": chosen["predicted"] * target.fraction / goal,
               "measured_latency": chosen["measured"] * target.fraction / goal,
               "measured_latency_wall": ms["pruned"]["wall_ms"] / ms[base]["wall_ms"],
               "measured_ms": ms, "latency_rounds": rounds, "latency_model": lm.breakdown()}
    metrics["met_target"] = metrics["measured_latency"] <= target.fraction * (1 + target.tolerance)
    return new, metrics
