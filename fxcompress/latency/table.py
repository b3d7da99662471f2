"""Latency tables: one layer's kernel time over the widths it may take, measured on sampled widths, cached
on disk, interpolated in between.

Widths are sampled geometrically from the smallest a plan can leave (`round_to`, or `min_channels`) to
the full width, rounded to multiples of `round_to`, with a half and a quarter of the full width (`sample_widths`;
with round_to=8 and 6 points, 64 channels give 8, 16, 24, 32, 40, 48, 64): dense where kernels change behaviour
(onnxruntime's INT8 convolution is slow under 16 output channels), coarse where time grows smoothly. Kernels
work on blocks of 16 channels (`BLOCK`): with round_to=8 every sample of an output axis (and of a depthwise
conv's one axis) gets its neighbour off (or on) the block, and a width is interpolated from the samples of
its own class; input axes are sampled once (INT8 kernels take input widths in steps of 8 alike; FP32's
NCHWc pads them, which interpolation across the classes smooths: the cost of a 4x larger grid saved).
Between samples the table interpolates linearly along each axis (bilinearly on the (input, output) grid:
exact for a cost proportional to cin x cout). A depthwise conv has one axis (its input and output widths
move together).

Times are stored relative to the layer's own at full width, timed beside them (load on a shared machine
cancels; LatencyModel weighs the layers by their measured time in the whole model). The cache:
$FXCOMPRESS_CACHE/latency/v<method>/<runtime tag>/<layer geometry>.json, {"<cin>x<cout>": relative time},
one file per (layer shape, runtime, threads, batch), the runtime tag also naming the CPU and onnxruntime
version (`Runtime.tag`). Files are rewritten atomically with what is already on disk merged in.

    tables = LatencyTables(Runtime("onnxruntime-int8", threads=2, batch=32))
    table = tables.table(spec, cin_widths, cout_widths)     # measures what the cache lacks
    table(48, 64)                                          # time relative to full width, interpolated
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from ..core.files import atomic_write_text
from ..data.image_folder import cache_dir
from .graphs import layer_graph
from .layers import LayerSpec
from .runtime import Runtime
from .timing import interleaved_kernel_ms


# onnxruntime's kernels work on channels in blocks of 16 here: FP32 NCHWc pads channels to it, INT8 convs pad
# their outputs to it, and INT8 depthwise convs run 2.5-3x slower on a width that is not a multiple of it
# (mobilenet_v2's 144-channel one: 0.09 ms at 144 and 128, 0.26 at 136, 0.23 at 120). Widths are sampled
# and interpolated per residue class modulo BLOCK, so a width off the block is predicted from widths off it.
BLOCK = 16


def period(round_to: int) -> int:
    """The residue period tables sample and interpolate by: BLOCK when widths step by half a block (two
    classes: on and off the block); 0 (none) for finer steps, whose classes would multiply the points."""
    return BLOCK if round_to < BLOCK and BLOCK % round_to == 0 and BLOCK // round_to == 2 else 0


def sample_widths(size: int, lowest: int, round_to: int, points: int, classes: bool = True) -> List[int]:
    """Widths from `lowest` to `size`: a geometric series of `points`, rounded to multiples of round_to, and
    size / 2 and size / 4 (rounded): uniform pruning lands on them; with `classes` and period(round_to),
    each sample's neighbour in the other residue class too."""
    lowest = max(1, min(lowest, size))
    if points <= 1 or lowest == size:
        return [size]
    ratio = (size / lowest) ** (1.0 / (points - 1))
    out = {lowest, size}
    for i in range(1, points - 1):
        out.add(int(round(lowest * ratio ** i / round_to)) * round_to)
    for part in (size / 2, size / 4):
        out.add(int(round(part / round_to)) * round_to)
    out = {w for w in out if lowest <= w <= size}
    if classes and period(round_to):
        def partner(w):   # the neighbour in the other class, inside the range
            up, down = w + round_to, w - round_to
            if w % BLOCK == 0:
                return up if up <= size else down
            return down if down >= lowest else up
        out |= {p for p in map(partner, out) if lowest <= p <= size}
    return sorted(out)


class LayerTable:
    """A layer's measured times on a grid of (input width, output width), interpolated in between, along
    each axis among the samples of the query's residue class modulo `period` (all of them when 0, or when
    the class has none)."""

    def __init__(self, spec: LayerSpec, cins: Sequence[int], couts: Sequence[int], ms: np.ndarray, period: int = 0):
        self.spec, self.cins, self.couts, self.ms = spec, np.asarray(cins, float), np.asarray(couts, float), ms
        # input axes of ungrouped layers are sampled without the other class (sample_widths(classes=False))
        self.period_in, self.period_out = (period if spec.depthwise else 0), period

    def __call__(self, cin: int, cout: int) -> float:
        """The time at (cin, cout), interpolated (LatencyTables stores it relative to the full width)."""
        i0, i1, fi = _locate(self.cins, cin, self.period_in)
        if self.spec.depthwise:   # one axis: the table's rows are indexed by the input width
            return float((1 - fi) * self.ms[i0, 0] + fi * self.ms[i1, 0])
        j0, j1, fj = _locate(self.couts, cout, self.period_out)
        m = self.ms
        return float((1 - fi) * ((1 - fj) * m[i0, j0] + fj * m[i0, j1]) + fi * ((1 - fj) * m[i1, j0] + fj * m[i1, j1]))

    def points(self) -> int:
        return int(self.ms.size)


def _locate(grid: np.ndarray, x: float, period: int = 0) -> Tuple[int, int, float]:
    """(grid indices of the two samples around x, fraction from the first to the second); among the samples
    of x's residue class modulo `period` when it has any; clamped at the ends."""
    index = np.arange(len(grid))
    if period:
        same = index[np.mod(grid, period) == x % period]
        # the class's own samples, where they hold x between them (or the whole grid does not either)
        inside = len(same) and (grid[same[0]] <= x <= grid[same[-1]] or not grid[0] <= x <= grid[-1])
        if inside:
            index = same
    g = grid[index]
    if len(g) == 1 or x <= g[0]:
        return int(index[0]), int(index[0]), 0.0
    if x >= g[-1]:
        return int(index[-1]), int(index[-1]), 0.0
    k = int(np.searchsorted(g, x, side="right") - 1)
    return int(index[k]), int(index[k + 1]), float((x - g[k]) / (g[k + 1] - g[k]))


CHUNK = 12   # points timed in one interleaved batch, with the layer at full width
# bumped whenever how a point is measured changes, so that tables measured otherwise are never mixed in
METHOD_VERSION = 4   # 3: sessions timed while pinned really get a CPU per thread (timing._unpinned_cpus);
                     # 4: each graph run twice back to back per round (timing.interleaved_kernel_ms)


class LatencyTables:
    """Builds LayerTables for one runtime, from the disk cache where it can. A table holds each width pair's
    kernel time over the layer's own at full width, the two timed side by side (fastest of `runs`
    interleaved rounds: see timing.py): load from other processes cancels, and LatencyModel weighs the
    layers by their time in the whole model. `hits` and `misses` count the points read and measured (the
    full width itself, 1 by definition, is neither)."""

    def __init__(self, runtime: Runtime, runs: int = 7, warmup: int = 2, folder: Optional[str] = None,
                 period: int = 0):
        self.runtime, self.runs, self.warmup, self.period = runtime, runs, warmup, period
        self.folder = folder or os.path.join(cache_dir(), "latency", f"v{METHOD_VERSION}", runtime.tag())
        self.hits = self.misses = 0
        self._files: Dict[str, Dict[str, float]] = {}

    def _path(self, spec: LayerSpec) -> str:
        return os.path.join(self.folder, spec.geometry_key() + ".json")

    def _load(self, spec: LayerSpec) -> Dict[str, float]:
        key = spec.geometry_key()
        if key not in self._files:
            try:
                with open(self._path(spec)) as f:
                    data = json.load(f)
                self._files[key] = {k: float(v) for k, v in data.get("relative", {}).items()}
            except (OSError, ValueError, AttributeError):
                self._files[key] = {}   # missing or unreadable: measured again and rewritten whole
        return self._files[key]

    def _save(self, spec: LayerSpec, entries: Dict[str, float]) -> None:
        os.makedirs(self.folder, exist_ok=True)
        on_disk = {}
        try:
            with open(self._path(spec)) as f:
                on_disk = json.load(f).get("relative", {})
        except (OSError, ValueError, AttributeError):
            pass
        merged = {**on_disk, **entries}   # another process may have added points meanwhile
        text = json.dumps({"layer": spec.geometry_key(), "runtime": self.runtime.describe(),
                           "relative_to": "the layer at full width", "relative": merged}, indent=0, sort_keys=True)
        atomic_write_text(self._path(spec), text)

    def measure(self, spec: LayerSpec, pairs: List[Tuple[int, int]]) -> List[float]:
        """Kernel times of the layer at the width pairs over its time at full width, timed side by side."""
        specs = [spec, *(spec.at(a, b) for a, b in pairs)]
        graphs = [layer_graph(s, self.runtime.precision, self.runtime.batch) for s in specs]
        ms = interleaved_kernel_ms(graphs, self.runtime.threads, self.runs, self.warmup)
        return [m / ms[0] for m in ms[1:]]

    def table(self, spec: LayerSpec, cins: Sequence[int], couts: Sequence[int]) -> LayerTable:
        """The layer's table on the grid cins x couts (one axis, cins, for a depthwise conv); points the
        cache lacks are measured and cached."""
        mult = spec.cout // spec.cin if spec.depthwise else 0
        pairs = [(c, c * mult) for c in cins] if spec.depthwise else [(a, b) for a in cins for b in couts]
        entries = self._load(spec)
        full = f"{spec.cin}x{spec.cout}"
        self.hits += sum(1 for a, b in pairs if f"{a}x{b}" in entries and f"{a}x{b}" != full)
        entries.setdefault(full, 1.0)   # by definition: every point is relative to it
        missing = [p for p in pairs if f"{p[0]}x{p[1]}" not in entries]
        for i in range(0, len(missing), CHUNK):
            chunk = missing[i:i + CHUNK]
            values = self.measure(spec, chunk)
            new = {f"{a}x{b}": v for (a, b), v in zip(chunk, values)}
            entries.update(new)
            self.misses += len(chunk)
            self._save(spec, new)
        grid = np.array([entries[f"{a}x{b}"] for a, b in pairs])
        if spec.depthwise:
            return LayerTable(spec, cins, [spec.cout], grid.reshape(len(cins), 1), self.period)
        return LayerTable(spec, cins, couts, grid.reshape(len(cins), len(couts)), self.period)

    def tables(self, wanted: Dict[str, Tuple[LayerSpec, List[int], List[int]]],
               progress: bool = True) -> Dict[str, LayerTable]:
        """{name: table} for {name: (spec, input widths, output widths)}; layers of equal geometry share
        their points (resnet18's 20 convs have 11 shapes)."""
        out = {}
        for name, (spec, cins, couts) in tqdm(wanted.items(), desc=f"latency tables ({self.runtime.describe()})",
                                              unit="layer", disable=not progress, leave=False):
            out[name] = self.table(spec, cins, couts)
        return out


def lowest_width(size: int, round_to: int, min_channels: int) -> int:
    """The smallest width a plan can leave a dimension of `size` (plan.plan_from_scores's rounding)."""
    return max(min(size, round_to), min(size, min_channels))
