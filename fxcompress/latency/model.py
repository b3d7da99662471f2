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

    predicted_ms(plan) = measured_ms x (sum_l layer_l x table_l(plan) + other x activations(plan) + fixed)
                         (layer_l, other, fixed: fractions of the profiled unpruned run; activations relative to it)

    lm = LatencyModel.build(gm, groups_result, example_inputs, Runtime("onnxruntime-int8", 2, 32), round_to=8)
    lm.predict_ms({group_id: kept_units, ...})      # a plan, as MagnitudePrune and PruneChannels take it
    lm.measured_ms                                   # the unpruned model, end to end
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.fx as fx

from ..graph.keys import output_keys
from ..graph.macs import node_macs
from ..prune.groups import ChannelGroupsResult, Dim
from ..prune.state import normalize_plan
from .attribute import CONV_OPS, LINEAR_OPS, attribute
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
    """The unpruned model: its end-to-end time, and its profiled run split into fractions (module docstring)."""
    measured_ms: float                                       # runtime.measure's Measurement.ms
    layers: Dict[str, float] = field(default_factory=dict)   # layer node -> fraction of the run
    other: float = 0.0
    fixed: float = 0.0
    quiet_ms: float = 0.0                                    # the profiled estimate beside it
    unmatched_layers: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"measured_ms": self.measured_ms, "quiet_ms": self.quiet_ms,
                "layers_fraction": sum(self.layers.values()), "other_fraction": self.other,
                "fixed_fraction": self.fixed, "unmatched_layers": self.unmatched_layers}


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
              progress: bool = True,
              unpruned_path: Optional[str] = None, tables: Optional[LatencyTables] = None) -> "LatencyModel":
        """Tables for every layer (the widths of dims that `groups` may prune sampled with `points` per axis;
        all prunable groups when None; `runs`: at least that many timed rounds per table point) and the
        unpruned model measured (at least `measure_runs` rounds, more within `measure_budget_s`).
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
        with tempfile.TemporaryDirectory(prefix="fxcompress_latency_") as tmp:
            path = unpruned_path or os.path.join(tmp, "unpruned.onnx")
            export_for(gm, example_inputs, runtime, path)
            model.calibrate(path, example_inputs, node_macs(gm), measure_runs, measure_budget_s)
        model.stats = {"table_points_measured": tables.misses, "table_points_cached": tables.hits,
                       "table_seconds": table_seconds, "build_seconds": time.perf_counter() - start}
        return model

    def calibrate(self, path: str, example_inputs: Sequence[torch.Tensor], macs: Mapping[str, int],
                  runs: int = 20, budget_s: float = 4.0) -> Calibration:
        """Measure the unpruned model's file (runtime.measure) and split its profile (module docstring); `macs`:
        MACs per fx node (shares a time among layers onnxruntime's profile cannot tell apart)."""
        m = measure({"model": path}, self.runtime, example_inputs, runs=runs, budget_s=budget_s)["model"]
        nodes = m.profile.nodes
        ctx, unmatched = attribute(self.layers, nodes, self.runtime.batch, macs)
        other = sum(n.ms for n in nodes if n.op not in CONV_OPS and n.op not in LINEAR_OPS)
        # fractions of the profiled run (its nodes, the profiler's cost taken out, and its overhead): the
        # fastest end-to-end run is slower than the nodes' fastest times added up by disturbances in
        # proportion to the time, which a fixed part would keep after pruning (resnet18 INT8 at batch 32:
        # 151 ms against 142, and +13 % on the halved model when the 9 ms were fixed)
        total = sum(ctx.values()) + other + unmatched + m.profile.overhead_ms
        self.calibration = Calibration(m.ms, {k: v / total for k, v in ctx.items()}, other / total,
                                       (unmatched + m.profile.overhead_ms) / total, m.quiet_ms,
                                       [l.module for l in self.layers if ctx.get(l.node, 0.0) <= 0.0])
        return self.calibration

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

    def layer_fraction(self, layer: Layer, keep: Mapping[int, np.ndarray]) -> float:
        """The layer's share of the unpruned model's time, at the widths the masks leave it."""
        share = self.calibration.layers.get(layer.node, 0.0)
        return share * self.tables[layer.node](*self.layer_widths(layer, keep)) if share else 0.0

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
        return layers + c.other * self.activation_ratio(keep) + c.fixed

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
