"""A model's latency on a runtime, predicted for any pruning plan: each layer's time in the whole model,
scaled by how its table says it shrinks, plus what the layers do not account for.

The unpruned model is lowered as the runtime runs it, timed (`measured_ms`: runtime.Measurement.ms, the
lower of the fastest end-to-end run and the profiled estimate) and under onnxruntime's profiler (each node
at its fastest, the profiler's own cost taken out), which splits that time as:
- each layer's kernel time in context (fxcompress/latency/attribute.py matches nodes to layers), which
  its table (time at the plan's widths over time at full width) scales;
- the other kernels (adds, pools, quantize or reorder at the edges): memory-bound, they shrink with the
  activations outside the layers under the plan;
- the rest (scheduling, allocation, layer kernels no layer matched): fixed.

A layer in the model is not the layer alone: its kernel reads what the layer before just wrote, and a
kernel in context carries a cost that does not shrink with its widths. So a second model, every prunable
group at about `CALIBRATION_KEEP` of its width, is timed beside the unpruned one, and one number is
fitted through the two: the share of every kernel's time (layers and other kernels alike) that stays fixed
under pruning, in [0, 0.8]. One number, not one per layer: a per-layer fit through the second model's
profile followed its noise (tried: resnet50 INT8 at batch 1 predicted 8-15 % high, where the one number
and the end-to-end times it is fitted on are steady). Without the second point (0 fixed), resnet18 INT8 at
batch 1 halved was predicted 14 % low: layer1's convs halved run at 0.37 of full width in the model where
their table says 0.31. The second model sits at 0.6 of the widths, not nearer 1: the fit divides the
prediction's miss there by what the widths save, and at 3/4 the saving was small enough that a 2 % wobble in
the measurement moved the share by 0.1 (mobilenet_v2 FP32, batch 1: fitted -0.05 in one run, +0.18 in the
next). At 0.6, 45 and then 42 of benchmarks/latency_target.py's 48 predictions were within 10 % (42 at 3/4
the session before): between runs the errors move by several points (README).

    predicted_ms(plan) = measured_ms x (sum_l layer_l x [s + (1 - s) x table_l(plan)]
                                        + other x [s + (1 - s) x activations(plan)] + fixed)
                         (layer_l, other, fixed: fractions of the profiled unpruned run; activations relative
                          to it; s the fitted fixed share)

    lm = LatencyModel.build(gm, groups_result, example_inputs, Runtime("onnxruntime-int8", 2, 32), round_to=8)
    lm.predict_ms({group_id: kept_units, ...})      # a plan, as MagnitudePrune and PruneChannels take it
    lm.measured_ms                                   # the unpruned model, end to end
"""
from __future__ import annotations

import copy
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.fx as fx

from ..graph.keys import output_keys
from ..graph.macs import node_macs
from ..prune.apply import apply_plan
from ..prune.groups import ChannelGroupsResult, Dim
from ..prune.state import normalize_plan
from .attribute import CONV_OPS, LINEAR_OPS, attribute
from .layers import DimWidths, Layer, find_layers
from .runtime import Runtime, export_for, measure
from .table import LatencyTables, LayerTable, lowest_width, period, sample_widths

CALIBRATION_KEEP = 0.6    # the second calibration model: every prunable group at about this fraction of its width
# the fitted fixed share: a cost in context that does not shrink with the widths (dispatch, cold caches) is
# positive; fitted negative (the model shrank more than its tables say), it is left at 0
FIXED_SHARE_BOUNDS = (0.0, 0.8)


@dataclass
class Activation:
    """One tensor outside the layers: its elements, and its dims that pruning shrinks."""
    numel: int
    dims: List[Dim]


@dataclass
class Calibration:
    """The unpruned model: its end-to-end time, and its profiled run split into fractions (module docstring);
    `fixed_share` of every layer's and other kernel's time does not shrink (0 without a second point: the
    times scale in proportion)."""
    measured_ms: float                                       # runtime.Measurement.ms
    layers: Dict[str, float] = field(default_factory=dict)   # layer node -> fraction of the run
    other: float = 0.0
    fixed: float = 0.0
    quiet_ms: float = 0.0                                    # the profiled estimate beside it
    unmatched_layers: List[str] = field(default_factory=list)
    fixed_share: float = 0.0
    second_point: dict = field(default_factory=dict)         # the calibration model's plan and fit, reported

    @property
    def other_scaled(self) -> float:
        """The other kernels' part that shrinks with the activations."""
        return (1 - self.fixed_share) * self.other

    @property
    def constant(self) -> float:
        """What no plan changes: the fixed part and the other kernels' fixed share."""
        return self.fixed + self.fixed_share * self.other

    def to_dict(self) -> dict:
        layers = sum(self.layers.values())
        return {"measured_ms": self.measured_ms, "quiet_ms": self.quiet_ms,
                "layers_fraction": layers, "layers_offset_fraction": self.fixed_share * layers,
                "other_fraction": self.other, "other_offset_fraction": self.fixed_share * self.other,
                "fixed_fraction": self.fixed, "fixed_share": self.fixed_share,
                "unmatched_layers": self.unmatched_layers, "second_point": self.second_point}


class LatencyModel:
    """Predicted latency (ms) of a traced model under pruning plans, on one runtime (see module docstring)."""

    def __init__(self, runtime: Runtime, layers: List[Layer], tables: Dict[str, LayerTable], widths: DimWidths,
                 activations: List[Activation], skipped: Sequence[str] = ()):
        self.runtime, self.layers, self.tables, self.widths = runtime, layers, tables, widths
        self.activations, self.skipped = activations, list(skipped)
        self.calibration = Calibration(0.0, {l.node: 1.0 / max(len(layers), 1) for l in layers})
        self.stats: dict = {}
        self.full_activation = float(sum(a.numel for a in activations)) or 1.0

    # ---- building
    @classmethod
    def build(cls, gm: fx.GraphModule, result: ChannelGroupsResult, example_inputs: Sequence[torch.Tensor],
              runtime: Runtime, *, groups: Optional[Iterable[int]] = None, round_to: int = 1, min_channels: int = 1,
              points: int = 6, runs: int = 10, measure_runs: int = 20, measure_budget_s: float = 4.0,
              progress: bool = True, second_point: bool = True,
              unpruned_path: Optional[str] = None, tables: Optional[LatencyTables] = None) -> "LatencyModel":
        """Tables for every layer (the widths of dims that `groups` may prune sampled with `points` per axis;
        all prunable groups when None; `runs`: at least that many timed rounds per table point) and the
        unpruned model measured (at least `measure_runs` rounds, more within `measure_budget_s`), beside the
        second calibration model unless `second_point` is False (module docstring).
        `unpruned_path`: where to keep the unpruned model's file (a temporary file when None)."""
        start = time.perf_counter()
        layers, skipped = find_layers(gm, result)
        widths = DimWidths(result)
        free = set(g.id for g in result.prunable()) if groups is None else set(groups)
        tables = tables or LatencyTables(runtime, runs=runs, period=period(round_to))

        def axis(dim: Dim, classes: bool) -> List[int]:
            size = widths.size(dim)
            if not free.intersection(widths.groups_of(dim)):
                return [size]
            return sample_widths(size, lowest_width(size, round_to, min_channels), round_to, points, classes)
        wanted = {l.node: (l.spec, axis(l.in_dim, l.spec.depthwise), axis(l.out_dim, True)) for l in layers}
        model = cls(runtime, layers, tables.tables(wanted, progress), widths, _activations(gm, result, layers, widths),
                    skipped)
        table_seconds = time.perf_counter() - start
        plan = calibration_plan(result, free, round_to, min_channels) if second_point else {}
        with tempfile.TemporaryDirectory(prefix="fxcompress_latency_") as tmp:
            paths = {"unpruned": export_for(gm, example_inputs, runtime,
                                            unpruned_path or os.path.join(tmp, "unpruned.onnx"))}
            if plan:
                paths["calibration"] = export_for(apply_plan(gm, result, plan), example_inputs, runtime,
                                                  os.path.join(tmp, "calibration.onnx"))
            model.calibrate(paths, example_inputs, node_macs(gm), measure_runs, measure_budget_s, plan)
        model.stats = {"table_points_measured": tables.misses, "table_points_cached": tables.hits,
                       "table_seconds": table_seconds, "build_seconds": time.perf_counter() - start}
        return model

    def calibrate(self, paths: Mapping[str, str], example_inputs: Sequence[torch.Tensor], macs: Mapping[str, int],
                  runs: int = 20, budget_s: float = 4.0, plan: Optional[Mapping] = None) -> Calibration:
        """Measure the unpruned model's file (paths["unpruned"]; a str: that file) and split its profile
        (module docstring); with paths["calibration"], the model pruned by `plan`, timed beside it, fit the
        fixed share of every kernel's time. `macs`: MACs per fx node (shares a time among layers onnxruntime's
        profile cannot tell apart)."""
        paths = {"unpruned": paths} if isinstance(paths, str) else dict(paths)
        ms = measure(paths, self.runtime, example_inputs, runs=runs, budget_s=budget_s)
        m = ms["unpruned"]
        nodes = m.profile.nodes
        ctx, unmatched = attribute(self.layers, nodes, self.runtime.batch, macs)
        other = _other_ms(nodes)
        # fractions of the profiled run (its nodes, the profiler's cost taken out, and its overhead): the
        # fastest end-to-end run is slower than the nodes' fastest times added up by disturbances in
        # proportion to the time, which a fixed part would keep after pruning (resnet18 INT8 at batch 32:
        # 151 ms against 142, and +13 % on the halved model when the 9 ms were fixed)
        total = sum(ctx.values()) + other + unmatched + m.profile.overhead_ms
        self.calibration = Calibration(m.ms, {k: v / total for k, v in ctx.items()}, other / total,
                                       (unmatched + m.profile.overhead_ms) / total, m.quiet_ms,
                                       [l.module for l in self.layers if ctx.get(l.node, 0.0) <= 0.0])
        if "calibration" in ms:
            self._fit_second_point(ms["calibration"], m, self.masks(plan or {}))
        return self.calibration

    def _fit_second_point(self, second, unpruned, keep: Mapping[int, np.ndarray]) -> None:
        """The share of every kernel's time that does not shrink, fitted through the unpruned model and the
        calibration model `second` (module docstring)."""
        c = self.calibration
        measured = second.ms / unpruned.ms
        one_point = self.fraction(keep)   # fixed_share is still 0
        # what the prediction at the calibration widths gains per unit of the fixed share
        shrink = sum(c.layers[l.node] * (1 - self.tables[l.node](*self.layer_widths(l, keep)))
                     for l in self.layers if c.layers.get(l.node, 0.0) > 0)
        shrink += c.other * (1 - self.activation_ratio(keep))
        fitted = (measured - one_point) / shrink if shrink > 0 else 0.0
        c.fixed_share = float(np.clip(fitted, *FIXED_SHARE_BOUNDS))
        c.second_point = {"keep": CALIBRATION_KEEP, "groups": len(keep), "measured": measured,
                          "predicted_one_point": one_point, "predicted": self.fraction(keep),
                          "fixed_share_fitted": fitted, "fixed_share": c.fixed_share,
                          "bounds": list(FIXED_SHARE_BOUNDS)}

    def refit(self, fixed_share: float) -> "LatencyModel":
        """This model with another fixed share (a copy): how much a prediction owes to the fit."""
        other = copy.copy(self)
        other.calibration = replace(self.calibration, fixed_share=fixed_share)
        return other

    def one_point(self) -> "LatencyModel":
        """This model as it predicts without the second calibration point (the times in proportion to the
        tables): to report what the second point changed."""
        return self.refit(0.0)

    # ---- prediction
    def masks(self, plan: Mapping) -> Dict[int, np.ndarray]:
        """A plan ({group id: kept units}) as boolean keep masks over each group's units."""
        out = {}
        for gid, kept in normalize_plan(self.widths.result, plan).items():
            mask = np.zeros(self.widths.result.groups[gid].size, dtype=bool)
            mask[kept] = True
            out[gid] = mask
        return out

    def layer_widths(self, layer: Layer, keep: Mapping[int, np.ndarray]) -> tuple:
        return self.widths.width(layer.in_dim, keep), self.widths.width(layer.out_dim, keep)

    def layer_share(self, layer: Layer, cin: int, cout: int) -> float:
        """The layer's share of the unpruned model's time at widths (cin, cout): its fixed share, and the
        rest as its table scales it."""
        c = self.calibration
        full = c.layers.get(layer.node, 0.0)
        return full * (c.fixed_share + (1 - c.fixed_share) * self.tables[layer.node](cin, cout)) if full else 0.0

    def layer_fraction(self, layer: Layer, keep: Mapping[int, np.ndarray]) -> float:
        """The layer's share of the unpruned model's time, at the widths the masks leave it."""
        return self.layer_share(layer, *self.layer_widths(layer, keep))

    def activation_ratio(self, keep: Mapping[int, np.ndarray]) -> float:
        total = 0.0
        for a in self.activations:
            f = float(a.numel)
            for d in a.dims:
                f *= self.widths.width(d, keep) / self.widths.size(d)
            total += f
        return total / self.full_activation

    def fraction(self, keep: Mapping[int, np.ndarray]) -> float:
        """Predicted latency under the keep masks as a fraction of the unpruned model's."""
        c = self.calibration
        layers = sum(self.layer_fraction(l, keep) for l in self.layers)
        return layers + c.other_scaled * self.activation_ratio(keep) + c.constant

    def predict_ms(self, plan: Mapping = None, *, keep: Optional[Mapping[int, np.ndarray]] = None) -> float:
        """Predicted end-to-end latency of the model pruned by `plan` (or by boolean `keep` masks)."""
        return self.calibration.measured_ms * self.fraction(keep if keep is not None else self.masks(plan or {}))

    @property
    def measured_ms(self) -> float:
        return self.calibration.measured_ms

    def breakdown(self) -> dict:
        return {"runtime": self.runtime.name, "threads": self.runtime.threads, "batch": self.runtime.batch,
                **self.calibration.to_dict(), "layers": len(self.layers), "layers_left_to_remainder": self.skipped,
                **self.stats}


def calibration_plan(result: ChannelGroupsResult, groups: Iterable[int], round_to: int = 1,
                     min_channels: int = 1, keep: float = CALIBRATION_KEEP) -> Dict[int, np.ndarray]:
    """The second calibration model's plan: each of `groups` (prunable) at about `keep` of its width, in
    steps of the tables' period where it has one (onnxruntime's channel block), else of round_to; a group
    that no such width shrinks stays whole. Off the block a width costs in the model what the next one on
    it costs (FP32 on a small CNN: 24 channels as slow as 32, 40 as 48; the tables, interpolating input
    widths across the block, say less), which one fixed share must not absorb. The first channels are
    kept: which ones does not change the time."""
    chosen, plan = set(groups), {}
    step = period(round_to) or max(round_to, 1)
    for g in result.prunable():
        k = int(round(keep * g.size / step)) * step
        if g.id in chosen and lowest_width(g.size, round_to, min_channels) <= k < g.size:
            plan[g.id] = np.arange(k)
    return plan


def _other_ms(nodes) -> float:
    """The profiled time of the kernels that are not layers' (adds, pools, quantize, layout)."""
    return sum(n.ms for n in nodes if n.op not in CONV_OPS and n.op not in LINEAR_OPS)


def _activations(gm: fx.GraphModule, result: ChannelGroupsResult, layers: List[Layer],
                 widths: DimWidths) -> List[Activation]:
    """Every tracked node output but the layers' own and the inputs, with its prunable dims."""
    layer_nodes = {l.node for l in layers}
    out = []
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr") or node.name in layer_nodes:
            continue
        for key, shape in output_keys(node).items():
            if key not in result.shapes:
                continue
            numel = int(np.prod(shape)) if shape else 1
            dims = [(key, d) for d in range(len(shape)) if widths.groups_of((key, d))]
            out.append(Activation(numel, dims))
    return out
