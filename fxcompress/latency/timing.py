"""Timing ONNX graphs in onnxruntime by its own profiler: per node, the time its kernel ran.

A one-layer graph runs in onnxruntime with layout changes around the layer that the whole model does not
have (FP32: NCHWc reorders, INT8: NHWC transposes; in the whole model only its inputs and outputs pay
them), so a layer's time is the time of its graph's kernels less those layout ops. Several graphs are
timed in interleaved rounds (alternating order), so that load from other processes hits all of them
alike, and each keeps its fastest run: on a shared machine another process only ever adds time (here a
training run beside made every other run of resnet18 INT8 take 9 ms instead of 5), so the fastest of
several runs estimates the time on a quiet machine where the median estimates the load. Sessions are
configured as fxcompress.onnx.runtime.ort_session configures the measured ones (threads, no spinning),
with their threads pinned to distinct CPUs while they are timed (`pinned`).

    ms = interleaved_kernel_ms([(proto_a, feeds_a), (proto_b, feeds_b)], threads=2)   # [fastest a, fastest b]
    runs = interleaved_runs({"a": ("a.onnx", {"input": x}), "b": ("b.onnx", {"input": x})})   # whole models
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper

# ops a one-layer graph gets around its layer that the whole model runs only at its inputs and outputs
LAYOUT_OPS = frozenset({"Transpose", "ReorderInput", "ReorderOutput"})

Model = Union[str, onnx.ModelProto]


# the caller's CPUs before pinned() narrowed it to one: sessions made inside pinned() place their workers on the
# others (read after pinning, the caller's one CPU left no room, and every worker inherited that CPU: "2 threads"
# ran at one thread's speed, yolov8n FP32 at 640x640 43 ms instead of 27)
_unpinned_cpus: Optional[List[int]] = None


def _cpus() -> List[int]:
    if _unpinned_cpus is not None:
        return list(_unpinned_cpus)
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def _session(model: Model, threads: int, profile_prefix: Optional[str] = None):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    cpus = _cpus()
    if 1 < threads <= len(cpus):   # workers on their own CPUs (1-based ids), the caller on the first: see pinned()
        opts.add_session_config_entry("session.intra_op_thread_affinities",
                                      ";".join(str(c + 1) for c in cpus[1:threads]))
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    opts.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def pinned(threads: int):
    """While timing, the calling thread stays on the first CPU, each session's workers on the next ones.
    Unpinned, when another process keeps a CPU busy the scheduler may stack a session's worker on the
    caller's CPU, and that session then runs at one thread's speed for as long as it lives: here, of
    several sessions of one layer timed side by side, some took 0.42 ms and others 0.23 ms, so ratios
    between sessions were off by up to 2x. Pinned, every session splits its work the same way; on a quiet
    machine the scheduler places the threads so anyway."""
    global _unpinned_cpus
    cpus = _cpus()
    if not (1 < threads <= len(cpus)) or _unpinned_cpus is not None:
        yield
        return
    before = os.sched_getaffinity(0)
    _unpinned_cpus = cpus
    os.sched_setaffinity(0, {cpus[0]})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
        _unpinned_cpus = None


@dataclass
class NodeTime:
    """One node of a profiled model: its op type, fastest kernel time over the runs (ms), and the shapes of
    its first input and output (as onnxruntime runs them: NCHW, NHWC or NCHWc's padded channels)."""
    name: str
    op: str
    ms: float
    in_shape: Tuple[int, ...] = ()
    out_shape: Tuple[int, ...] = ()


def _first_shape(shapes) -> Tuple[int, ...]:
    for item in shapes or ():
        for dims in item.values():
            return tuple(int(d) for d in dims)
    return ()


def _read_profile(path: str, runs: int):
    """({node: [kernel ms per run]}, {node: (op type, input shape, output shape)}, [model_run ms per run]) of
    the last `runs` runs."""
    with open(path) as f:
        events = json.load(f)
    times: Dict[str, List[float]] = {}
    info: Dict[str, tuple] = {}
    walls: List[float] = []
    for e in events:
        name = e.get("name", "")
        if e.get("cat") == "Node" and name.endswith("_kernel_time"):
            node = name[: -len("_kernel_time")]
            times.setdefault(node, []).append(e["dur"] / 1e3)
            args = e.get("args", {})
            info[node] = (args.get("op_name", "?"), _first_shape(args.get("input_type_shape")),
                          _first_shape(args.get("output_type_shape")))
        elif e.get("cat") == "Session" and name == "model_run":
            walls.append(e["dur"] / 1e3)
    # the profile holds the warm-up runs too
    return {k: v[-runs:] for k, v in times.items()}, info, walls[-runs:]


def _per_run(times: Dict[str, List[float]], info: Dict[str, tuple], include) -> List[float]:
    """Per run, the summed kernel time of the nodes whose op type `include` accepts."""
    kept = [v for k, v in times.items() if include(info[k][0])]
    if not kept:
        return [0.0]
    n = min(len(v) for v in kept)
    return [sum(v[i] for v in kept) for i in range(n)]


def _rounds(run_round, warmup: int, runs: int, budget_s: float, max_runs: int) -> int:
    """Run `warmup` rounds, then at least `runs` and as many more as fit `budget_s` (at most `max_runs`): more
    runs on a loaded machine give each graph more chances of an undisturbed one. Returns the rounds timed."""
    per_round = 0.0
    for r in range(warmup):
        start = time.perf_counter()
        run_round(r, False)
        per_round = time.perf_counter() - start   # the last warm-up round: past first-run allocations
    total = max(runs, min(max_runs, int(budget_s / max(per_round, 1e-6))))
    for r in range(total):
        run_round(warmup + r, True)
    return total


def interleaved_kernel_ms(models: Sequence[Tuple[Model, Mapping[str, np.ndarray]]], threads: int = 2,
                          runs: int = 7, warmup: int = 2, exclude: FrozenSet[str] = LAYOUT_OPS,
                          budget_s: float = 1.0, max_runs: int = 60, repeat: int = 2) -> List[float]:
    """Each model's fastest summed kernel time (ms), its `exclude` ops left out and the profiler's own cost
    per node (profiler_cost_ms) taken out, over at least `runs` interleaved rounds (more while they fit
    `budget_s`), each model run `repeat` times back to back in a round.

    Why back to back: run once after a dozen other graphs, a layer finds its buffers evicted, and the
    fastest of its runs stays slow by a cost that does not shrink with its widths, which pulls every ratio
    towards 1 (mobilenet_v2's 32->192 1x1 conv at batch 32, INT8, 13 graphs side by side: 16->96 timed at
    0.63-0.74 of the full width once per round, 0.40 twice in a row; in the whole model 0.37). In a model a
    layer reads the activation its predecessor just wrote; the second run is the closer stand-in."""
    cost = profiler_cost_ms(threads)
    with tempfile.TemporaryDirectory(prefix="fxcompress_profile_") as tmp, pinned(threads):
        sessions = [_session(m, threads, os.path.join(tmp, f"p{i}_")) for i, (m, _) in enumerate(models)]
        feeds = [dict(f) for _, f in models]
        order = list(range(len(sessions)))

        def run_round(r, timed):
            for i in (order if r % 2 == 0 else order[::-1]):
                for _ in range(repeat):
                    sessions[i].run(None, feeds[i])
        timed = _rounds(run_round, warmup, runs, budget_s, max_runs)
        out = []
        for s in sessions:
            times, info, _ = _read_profile(s.end_profiling(), timed * repeat)
            counted = sum(1 for k in times if info[k][0] not in exclude)
            kernel = min(_per_run(times, info, lambda op: op not in exclude))
            # a kernel about as short as the profiler's cost keeps a tenth of its time: its ratios stay finite
            out.append(max(kernel - counted * cost, 0.1 * kernel))
    return out


@functools.lru_cache(maxsize=None)
def profiler_cost_ms(threads: int, nodes: int = 32) -> float:
    """What onnxruntime's profiler adds to a run per node (ms): a chain of `nodes` cheap ops timed with and
    without it. A few microseconds: next to a small layer's kernel at batch 1 (ResNet-20's take 10-20 us)
    enough to bend the ratio of two widths' times towards 1."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    y = helper.make_tensor_value_info(f"t{nodes}", TensorProto.FLOAT, [1, 16])
    chain = [helper.make_node("Relu", ["x" if i == 0 else f"t{i}"], [f"t{i + 1}"]) for i in range(nodes)]
    model = helper.make_model(helper.make_graph(chain, "chain", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {"x": np.ones((1, 16), np.float32)}
    with tempfile.TemporaryDirectory(prefix="fxcompress_profile_") as tmp, pinned(threads):
        sessions = [_session(model, threads), _session(model, threads, os.path.join(tmp, "p_"))]
        best = [float("inf"), float("inf")]
        for r in range(200):
            for i, s in enumerate(sessions):
                start = time.perf_counter()
                s.run(None, feeds)
                if r >= 10:
                    best[i] = min(best[i], (time.perf_counter() - start) * 1e3)
        sessions[1].end_profiling()
    return max(0.0, best[1] - best[0]) / nodes


@dataclass
class Profile:
    """A whole model's profiled runs: each node at its fastest; the fastest run's time beyond its kernels
    (scheduling, allocation); the fastest run. `quiet_ms`, the nodes' fastest times plus that overhead,
    estimates the model's time undisturbed by other processes (each node needs one undisturbed run, not
    the whole model), the profiler's own cost per node included."""
    nodes: List[NodeTime]
    overhead_ms: float
    run_ms: float

    @property
    def quiet_ms(self) -> float:
        return sum(n.ms for n in self.nodes) + self.overhead_ms

    def without_profiler(self, wall_ms: float) -> "Profile":
        """The nodes less the profiler's own cost, estimated from `wall_ms`, the fastest run of the same model
        in a plain session: what the profiled estimate exceeds it by, spread evenly over the nodes (a few
        microseconds each: a tenth of ResNet-20's time at batch 1, nothing at batch 32)."""
        excess = max(0.0, self.quiet_ms - wall_ms) / max(len(self.nodes), 1)
        nodes = [NodeTime(n.name, n.op, max(n.ms - excess, 0.1 * n.ms), n.in_shape, n.out_shape) for n in self.nodes]
        return Profile(nodes, self.overhead_ms, self.run_ms)


def _profile(times, info, walls) -> Profile:
    kernels = _per_run(times, info, lambda op: True)
    n = min(len(kernels), len(walls))
    overhead = min(max(0.0, walls[i] - kernels[i]) for i in range(n)) if n else 0.0
    nodes = [NodeTime(k, info[k][0], min(v), info[k][1], info[k][2]) for k, v in times.items()]
    return Profile(nodes, overhead, min(walls) if walls else 0.0)


def interleaved_runs(models: Mapping[str, Tuple[Model, Mapping[str, np.ndarray]]], threads: int = 2, runs: int = 20,
                     warmup: int = 3, budget_s: float = 4.0,
                     max_runs: int = 200) -> Dict[str, Tuple[List[float], Profile]]:
    """Each model run in two sessions, plain and profiled, all in interleaved rounds of alternating order (at
    least `runs`, more while they fit `budget_s`): {name: (the plain session's end-to-end times in ms, the
    profiled session's Profile)}."""
    names = list(models)
    with tempfile.TemporaryDirectory(prefix="fxcompress_profile_") as tmp, pinned(threads):
        plain = {k: _session(models[k][0], threads) for k in names}
        profiled = {k: _session(models[k][0], threads, os.path.join(tmp, f"p{i}_")) for i, k in enumerate(names)}
        walls: Dict[str, List[float]] = {k: [] for k in names}

        def run_round(r, timed):
            for k in (names if r % 2 == 0 else names[::-1]):
                feeds = dict(models[k][1])
                start = time.perf_counter()
                plain[k].run(None, feeds)
                if timed:
                    walls[k].append((time.perf_counter() - start) * 1e3)
                profiled[k].run(None, feeds)
        timed = _rounds(run_round, warmup, runs, budget_s, max_runs)
        return {k: (walls[k], _profile(*_read_profile(profiled[k].end_profiling(), timed))) for k in names}
