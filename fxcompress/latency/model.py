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

A layer in the model is not the layer alone: its kernel reads what the layer before just wrote, and at
batch 1 a kernel carries a cost that does not shrink with its widths. So a second model, every prunable
group at `CALIBRATION_KEEP` of its width, is profiled beside the unpruned one, and each layer's time in
context is fitted as an affine function of its table through the two points (`offset + slope x table`,
the offset bounded); the other kernels likewise as `offset + slope x activations`. (resnet18 INT8 at
batch 1: layer1's convs halved run at 0.37 of full width in the model where their table says 0.31;
mobilenet_v2's input Transpose and Pad do not shrink at all.)

    predicted_ms(plan) = measured_ms x (sum_l [offset_l + slope_l x table_l(plan)] + other_offset
                                        + other_slope x activations(plan) + fixed)
                         (fractions of the profiled unpruned run; activations relative to it)

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

CALIBRATION_KEEP = 0.75    # the second calibration model: every prunable group at about this fraction of its width
MIN_TABLE_CHANGE = 0.1     # a layer whose table moves less between the two points keeps the one-point scaling
# a layer's fitted offset, as a fraction of its time at full width: a cost in context that does not shrink
# with the widths (dispatch, cold caches) is positive; a negative fit (the layer shrank more in context than
# alone, e.g. its activations fitting a cache at 3/4 width) does not carry on linearly to narrower widths:
# allowed (-0.5), resnet18 FP32 at batch 32 halved was predicted 17.9 % low, in proportion 0.1 %
OFFSET_BOUNDS = (0.0, 0.8)
SIGNED_OFFSET_BOUNDS = (-0.5, 0.8)   # the alternative, for reports (LatencyModel.refit)
from .layers import DimWidths, Layer, find_layers
from .runtime import Runtime, export_for, measure
from .table import LatencyTables, LayerTable, lowest_width, period, sample_widths


@dataclass
class Activation:
    """One tensor outside the layers: its elements, and its dims that pruning shrinks."""
    numel: int
    dims: List[Dim]


@dataclass
class Calibration:
    """The unpruned model: its end-to-end time, and its profiled run split into fractions (module docstring).
    `layers` and `other` are the slopes, `layer_offsets` and `other_offset` the offsets of the two-point fit
    (0 without a second point: the time scales in proportion)."""
    measured_ms: float                                       # runtime.measure's Measurement.ms
    layers: Dict[str, float] = field(default_factory=dict)   # layer node -> fraction of the run
    other: float = 0.0
    fixed: float = 0.0
    quiet_ms: float = 0.0                                    # the profiled estimate beside it
    unmatched_layers: List[str] = field(default_factory=list)
    layer_offsets: Dict[str, float] = field(default_factory=dict)
    other_offset: float = 0.0
    second_point: dict = field(default_factory=dict)         # the calibration model's plan and fit, reported

    @property
    def constant(self) -> float:
        """What no plan changes: the fixed part and the other kernels' offset."""
        return self.fixed + self.other_offset

    def to_dict(self) -> dict:
        return {"measured_ms": self.measured_ms, "quiet_ms": self.quiet_ms,
                "layers_fraction": sum(self.layers.values()) + sum(self.layer_offsets.values()),
                "layers_offset_fraction": sum(self.layer_offsets.values()),
                "other_fraction": self.other + self.other_offset, "other_offset_fraction": self.other_offset,
                "fixed_fraction": self.fixed, "unmatched_layers": self.unmatched_layers,
                "second_point": self.second_point}


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
        (module docstring); with paths["calibration"], the model pruned by `plan`, timed beside it, fit each
        layer's and the other kernels' offset. `macs`: MACs per fx node (shares a time among layers
        onnxruntime's profile cannot tell apart)."""
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
            self._fit_second_point(ms["calibration"], m, total, self.masks(plan or {}), macs)
        return self.calibration

    def _fit_second_point(self, second, unpruned, total: float, keep: Mapping[int, np.ndarray],
                          macs: Mapping[str, int]) -> None:
        """Offsets and slopes through the unpruned model and the calibration model `second` (module docstring)."""
        c = self.calibration
        self.one_point_calibration = copy.deepcopy(c)
        at = [replace(l, spec=l.spec.at(*self.layer_widths(l, keep))) for l in self.layers]
        ctx, _ = attribute(at, second.profile.nodes, self.runtime.batch, macs)
        samples = {}   # layer node -> (share at full width, share at the calibration widths, table there)
        for l in self.layers:
            full, there = c.layers.get(l.node, 0.0), ctx.get(l.node, 0.0) / total
            table, widths = self.tables[l.node], self.layer_widths(l, keep)
            t = table(*widths)
            block = table.period_out   # a width off the block its full width is on: not this layer's fit
            off = block and any((w - s) % block for w, s in zip(widths, (l.spec.cin, l.spec.cout)))
            if full > 0 and there > 0 and abs(1 - t) >= MIN_TABLE_CHANGE and not off:
                samples[l.node] = (full, there, t)
        self.second_point_samples = {"layers": samples, "other": (c.other, _other_ms(second.profile.nodes) / total,
                                                                  self.activation_ratio(keep))}
        self.calibration = self._fitted(OFFSET_BOUNDS, fit_other=True)
        self.calibration.second_point = {
            "keep": CALIBRATION_KEEP, "groups": len(keep), "measured": second.ms / unpruned.ms,
            "predicted_one_point": self.one_point().fraction(keep), "predicted": self.fraction(keep),
            "layers_fitted": len(self.calibration.layer_offsets), "layers": len(self.layers), "offset_bounds": list(OFFSET_BOUNDS)}

    def _fitted(self, bounds, fit_other: bool) -> Calibration:
        """The one-point calibration with each sampled layer's offset fitted within `bounds` (fractions of its
        time at full width), and the other kernels' offset within [0, their time] when `fit_other`."""
        c = copy.deepcopy(self.one_point_calibration)
        for node, (full, there, t) in self.second_point_samples["layers"].items():
            offset = float(np.clip(full - (full - there) / (1 - t), bounds[0] * full, bounds[1] * full))
            if offset:
                c.layer_offsets[node], c.layers[node] = offset, full - offset
        other, there, r = self.second_point_samples["other"]
        if fit_other and other > 0 and 1 - r >= MIN_TABLE_CHANGE:
            c.other_offset = float(np.clip(other - (other - there) / (1 - r), 0.0, other))
            c.other = other - c.other_offset
        return c

    def refit(self, offset_bounds=OFFSET_BOUNDS, fit_other: bool = True) -> "LatencyModel":
        """This model with its second point fitted under other bounds (a copy; itself where it has no second
        point): how much a prediction owes to the fit's rules."""
        other = copy.copy(self)
        if hasattr(self, "second_point_samples"):
            other.calibration = self._fitted(offset_bounds, fit_other)
        return other

    def one_point(self) -> "LatencyModel":
        """This model as it predicts without the second calibration point (the times in proportion to the
        tables): to report what the second point changed."""
        return self.refit((0.0, 0.0), fit_other=False)

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
        """The layer's share of the unpruned model's time at widths (cin, cout): offset + slope x table."""
        c = self.calibration
        slope, offset = c.layers.get(layer.node, 0.0), c.layer_offsets.get(layer.node, 0.0)
        if not slope and not offset:
            return 0.0
        return max(offset + slope * self.tables[layer.node](cin, cout), 0.0)

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
        return layers + c.other * self.activation_ratio(keep) + c.constant

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
    steps of the tables' period where it has one (a width on onnxruntime's channel block when the full
    width is: off the block kernels behave otherwise, and a fit through such a width would carry that
    behaviour to every width), else of round_to; the first channels (which ones does not change the time)."""
    chosen, plan = set(groups), {}
    for g in result.prunable():
        if g.id not in chosen:
            continue
        lowest = lowest_width(g.size, round_to, min_channels)
        for step in (period(round_to), round_to):
            k = int(round(keep * g.size / step)) * step if step else 0
            if lowest <= k < g.size:
                plan[g.id] = np.arange(k)
                break
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
