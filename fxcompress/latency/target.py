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


def latency_target_option(owner: str, target_latency, runtime, threads, batch, relative_to,
                          target_macs=None) -> Optional[LatencyTarget]:
    """The LatencyTarget of a pruning pass's options (None without target_latency), each option checked
    with a PassError naming it (MagnitudePrune and ResRep take the same five)."""
    from ..core.errors import PassError
    from .runtime import RUNTIMES

    def bad(option, value, want):
        return PassError(f"{owner} option {option}={value!r} is invalid: {want}")
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)   # noqa: E731
    if target_latency is not None and (isinstance(target_latency, bool) or not isinstance(target_latency, (int, float))
                                       or not 0 < target_latency < 1):
        raise bad("target_latency", target_latency, "give the fraction of the unpruned model's measured latency "
                                                    "to reach, in (0, 1), or None")
    if target_latency is not None and target_macs is not None:
        raise bad("target_latency", target_latency, "give either target_latency or target_macs, not both")
    for option, value in (("runtime", runtime), ("relative_to", relative_to)):
        if (value is not None or option == "runtime") and value not in RUNTIMES:
            raise bad(option, value, f"choose one of {sorted(RUNTIMES)}")
    for option, value in (("threads", threads), ("batch", batch)):
        if not is_int(value) or value < 1:
            raise bad(option, value, "give an integer >= 1")
    return None if target_latency is None else LatencyTarget(
        float(target_latency), Runtime(runtime, threads, batch),
        None if relative_to is None else Runtime(relative_to, threads, batch))


def prune_to_latency(gm: fx.GraphModule, result: ChannelGroupsResult, groups: Sequence[ChannelGroup],
                     scores: Dict[int, np.ndarray], example_inputs: Sequence[torch.Tensor], target: LatencyTarget,
                     round_to: int = 1, min_channels: int = 1, progress: bool = True,
                     owner: str = "MagnitudePrune") -> tuple:
    """(the pruned GraphModule, metrics: target, predicted and measured latency, the rounds, the latency
    model's breakdown). The pruned model is checked exact by fxcompress.prune.apply.prune."""
    new, metrics, _ = search_latency_target(gm, result, groups, scores, example_inputs, target, round_to,
                                            min_channels, progress, owner)
    return new, metrics


def search_latency_target(gm: fx.GraphModule, result: ChannelGroupsResult, groups: Sequence[ChannelGroup],
                          scores: Dict[int, np.ndarray], example_inputs: Sequence[torch.Tensor],
                          target: LatencyTarget, round_to: int = 1, min_channels: int = 1, progress: bool = True,
                          owner: str = "MagnitudePrune") -> tuple:
    """prune_to_latency's search, also returning the latency model: (pruned GraphModule, metrics, LatencyModel).
    metrics["aim"] is the predicted fraction (of the unpruned latency on the runtime) the kept plan aimed at:
    what a pruner that decides its channels later (ResRep, while training) plans for."""
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
    metrics = {**prune_metrics, "aim": chosen["aimed"], "target_latency": target.fraction, "runtime": rt.name,
               "threads": rt.threads,
               "batch": rt.batch, "relative_to": (target.relative_to or rt).name,
               "predicted_latency": chosen["predicted"] * target.fraction / goal,
               "measured_latency": chosen["measured"] * target.fraction / goal,
               "measured_latency_wall": ms["pruned"]["wall_ms"] / ms[base]["wall_ms"],
               "measured_ms": ms, "latency_rounds": rounds, "latency_model": lm.breakdown()}
    metrics["met_target"] = metrics["measured_latency"] <= target.fraction * (1 + target.tolerance)
    return new, metrics, lm


def export_unpruned(gm: torch.nn.Module, example_inputs: Sequence[torch.Tensor], target: LatencyTarget,
                    directory: str) -> Dict[str, str]:
    """The unpruned model written for the target's runtime (and for `relative_to`), to time a pruned model
    against later, after training has changed the graph (ResRep)."""
    paths = {"unpruned": export_for(gm, example_inputs, target.runtime, os.path.join(directory, "unpruned.onnx"))}
    if target.relative_to is not None and target.relative_to != target.runtime:
        paths["reference"] = export_for(gm, example_inputs, target.relative_to, os.path.join(directory, "reference.onnx"))
    return paths


def measured_fraction(unpruned: Dict[str, str], pruned: torch.nn.Module, example_inputs: Sequence[torch.Tensor],
                      target: LatencyTarget, directory: str) -> dict:
    """The pruned model timed side by side with export_unpruned's files: its latency as a fraction of the
    unpruned model's on `relative_to` (or the runtime), the measured ms, and whether it met the target."""
    path = export_for(pruned, example_inputs, target.runtime, os.path.join(directory, "pruned.onnx"))
    ms = measure({**unpruned, "pruned": path}, target.runtime, example_inputs, target.measure_runs,
                 budget_s=target.measure_budget_s)
    base = "reference" if "reference" in unpruned else "unpruned"
    fraction = ms["pruned"].ms / ms[base].ms
    return {"measured_latency": fraction, "measured_ms": {k: m.to_dict() for k, m in ms.items()},
            "met_target": fraction <= target.fraction * (1 + target.tolerance)}
