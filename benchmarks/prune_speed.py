"""Pruning speed, side by side with Torch-Pruning, in one run.

(a) The whole analysis-only compile, fxcompress.compile(model, [ChannelGroups()], x) (trace, shapes on meta
    tensors, groups, probe; nothing copied), vs Torch-Pruning's DependencyGraph().build_dependency on resnet50,
    densenet121, vit_b_16 (224x224, median of --build-reps rounds interleaved in alternating order, one
    warm-up round); the inner group building (trace + shapes + groups) is timed alongside as a reference.
(b) onnxruntime CPU latency (2 threads, batch 1 and 8, median of --reps runs, interleaved in alternating order
    after warm-ups by fxcompress.onnx.measure.interleaved_latency) of resnet50 and
    mobilenet_v2 before and after pruning to half the MACs with round_to 1, 8, 16, and Torch-Pruning's
    MagnitudePruner at the same MACs (round_to 8). Efficiency = latency speed-up / MACs reduction.

    python benchmarks/prune_speed.py [--reps 30] [--build-reps 9] [--skip-build] [--skip-latency]

Results (merged with the file's earlier parts when one is skipped) go to benchmarks/results/prune_speed.json,
with a "provenance" record.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
import torchvision
from tqdm import tqdm

import fxcompress
from fxcompress.graph.shapes import record_shapes
from fxcompress.prune.coupling import build_channel_graph
from fxcompress.graph.macs import count_macs
from fxcompress.onnx.measure import interleaved_latency
from fxcompress.onnx.write import save_checked, to_onnx_proto
from fxcompress.passes import ChannelGroups, ExportONNX, MagnitudePrune
from fxcompress.graph.tracing import propagate_shapes, trace

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ORT_THREADS = 2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from provenance import provenance  # noqa: E402


def macs_of(model, x) -> int:
    gm = trace(copy.deepcopy(model).eval())
    propagate_shapes(gm, (x,))
    return count_macs(gm).macs


# ------------------------------------------------------------------------------------------------ (a)
def ours_compile(model, x):
    """The user-facing figure: the whole analysis-only compile (trace, meta-tensor shapes, groups, probe)."""
    return fxcompress.compile(model, [ChannelGroups()], x, progress=False)


def ours_build(model, x):
    """The inner group building alone (trace + shapes + groups), for reference."""
    gm = trace(model)
    record_shapes(gm, (x,))
    return build_channel_graph(gm).build_groups(count_macs(gm).per_node)


def tp_build(model, x):
    import torch_pruning as tp
    return tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)


BUILDERS = (("fxcompress_compile", ours_compile), ("torch_pruning", tp_build), ("fxcompress_inner", ours_build))


def group_build_times(names, reps: int, warmup: int = 1) -> list:
    """Median seconds of each builder per model; rounds interleave the builders in alternating order (after
    `warmup` untimed rounds), so drifts and warm-cache effects hit them alike."""
    rows = []
    for name in names:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        x = torch.randn(1, 3, 224, 224)
        times = {label: [] for label, _ in BUILDERS}
        for i in tqdm(range(warmup + reps), desc=f"build {name}", leave=False):
            for label, fn in (BUILDERS if i % 2 == 0 else BUILDERS[::-1]):
                gc.collect()
                start = time.perf_counter()
                fn(model, x)
                elapsed = time.perf_counter() - start
                if i >= warmup:
                    times[label].append(elapsed)
        med = {k: statistics.median(v) for k, v in times.items()}
        groups = ours_build(model, x)
        rows.append({"model": name, "fxcompress_compile_s": med["fxcompress_compile"],
                     "torch_pruning_s": med["torch_pruning"], "fxcompress_inner_s": med["fxcompress_inner"],
                     "tp_over_ours": med["torch_pruning"] / med["fxcompress_compile"],
                     "tp_over_inner": med["torch_pruning"] / med["fxcompress_inner"],
                     "reps": reps, "warmup": warmup, "times_s": times,
                     "groups": len(groups.groups), "prunable_groups": len(groups.prunable())})
    return rows


# ------------------------------------------------------------------------------------------------ (b)
def ours_pruned(model, x, round_to: int, path: str):
    res = fxcompress.compile(model, [MagnitudePrune(target_macs=0.5, round_to=round_to), ExportONNX(path)], x,
                             progress=False)
    return res.model, res.report.records[0].macs_after


def tp_pruned(model, x, target_macs: int, round_to: int, path: str):
    """Torch-Pruning's MagnitudePruner (L1), pruning ratio bisected to the same MACs as ours."""
    import torch_pruning as tp

    def prune(ratio):
        m = copy.deepcopy(model)
        head = [m.fc] if hasattr(m, "fc") else [m.classifier[-1]]
        pruner = tp.pruner.MagnitudePruner(m, x, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=ratio, round_to=round_to, ignored_layers=head)
        pruner.step()
        return m.eval()
    lo, hi, best = 0.0, 0.9, None
    for _ in range(7):
        mid = (lo + hi) / 2
        m = prune(mid)
        macs = macs_of(m, x)
        if macs <= target_macs:
            hi, best = mid, (m, macs, mid)
        else:
            lo = mid
    if best is None:
        m = prune(hi)
        best = (m, macs_of(m, x), hi)
    proto = to_onnx_proto(best[0], (x,))
    save_checked(proto, path)
    return best


def latency(paths: dict, batch: int, reps: int, threads: int = 2) -> dict:
    """Median seconds per run of every model: fxcompress.onnx.measure.interleaved_latency (warm-ups, then
    rounds in alternating order, so that machine noise hits all alike)."""
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32))
    return {k: ms / 1e3 for k, ms in interleaved_latency(paths, x, runs=reps, warmup=5, threads=threads).items()}


def latency_rows(name: str, reps: int, tmpdir: str, with_tp: bool) -> list:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    paths, macs, extra = {}, {}, {}
    paths["original"] = os.path.join(tmpdir, f"{name}.onnx")
    save_checked(to_onnx_proto(model, (x,)), paths["original"])
    macs["original"] = macs_of(model, x)
    for r in (1, 8, 16):
        key = f"fxcompress round_to={r}"
        paths[key] = os.path.join(tmpdir, f"{name}_r{r}.onnx")
        _, macs[key] = ours_pruned(model, x, r, paths[key])
    if with_tp:
        key = "torch_pruning round_to=8"
        paths[key] = os.path.join(tmpdir, f"{name}_tp8.onnx")
        _, macs[key], extra["tp_ratio"] = tp_pruned(model, x, macs["fxcompress round_to=8"], 8, paths[key])
    rows = []
    for batch in (1, 8):
        lat = latency(paths, batch, reps, threads=ORT_THREADS)
        for k in paths:
            speedup = lat["original"] / lat[k]
            reduction = macs["original"] / macs[k]
            rows.append({"model": name, "variant": k, "batch": batch, "macs": macs[k], "latency_ms": lat[k] * 1e3,
                         "speedup": speedup, "macs_reduction": reduction, "efficiency": speedup / reduction})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=30, help="timed runs per variant and batch size (>= 30)")
    p.add_argument("--build-reps", type=int, default=9)
    p.add_argument("--skip-build", action="store_true")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--out", default=os.path.join(RESULTS, "prune_speed.json"))
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    report = {}
    if os.path.exists(args.out) and (args.skip_build or args.skip_latency):
        with open(args.out) as f:   # a partial run keeps the other part's earlier results
            report = json.load(f)
    # each part keeps the provenance of the run that produced it; files from before provenance was recorded
    # keep what they said about the machine
    old = report.pop("provenance", None)
    legacy = {k: report.pop(k) for k in ("machine", "torch", "onnxruntime") if k in report}
    parts = dict(report.pop("parts_provenance", {}))
    for part in ("group_build", "latency"):
        if part in report and part not in parts:
            parts[part] = old or {"note": "written before provenance was recorded", **legacy}
    if not args.skip_build:
        rows = group_build_times(["resnet50", "densenet121", "vit_b_16"], args.build_reps)
        report["group_build"] = rows
        print(f"\n## Channel groups: fxcompress.compile(model, [ChannelGroups()], x) vs Torch-Pruning "
              f"DependencyGraph().build_dependency, 224x224, median of {args.build_reps} interleaved runs\n")
        print("| model | fxcompress compile s | Torch-Pruning s | ratio TP/ours | fxcompress inner build s "
              "| ratio TP/inner | groups (prunable) |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['fxcompress_compile_s']:.3f} | {r['torch_pruning_s']:.3f} | "
                  f"{r['tp_over_ours']:.2f}x | {r['fxcompress_inner_s']:.3f} | {r['tp_over_inner']:.2f}x | "
                  f"{r['groups']} ({r['prunable_groups']}) |")
    if not args.skip_latency:
        rows = []
        with tempfile.TemporaryDirectory() as tmpdir:
            for name, with_tp in (("resnet50", True), ("mobilenet_v2", False)):
                rows += latency_rows(name, args.reps, tmpdir, with_tp)
        report["latency"] = rows
        print(f"\n## onnxruntime CPU latency, 2 threads, median of {args.reps} interleaved runs\n")
        print("| model | variant | batch | MACs | latency ms | speed-up | MACs reduction | efficiency |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['variant']} | {r['batch']} | {r['macs'] / 1e9:.2f}G | {r['latency_ms']:.1f} | "
                  f"{r['speedup']:.2f}x | {r['macs_reduction']:.2f}x | {r['efficiency']:.2f} |")
    report["provenance"] = provenance(ort_threads=None if args.skip_latency else ORT_THREADS,
                                      parts_run=[k for k, skip in (("group_build", args.skip_build),
                                                                   ("latency", args.skip_latency)) if not skip])
    for part in report["provenance"]["parts_run"]:
        parts[part] = report["provenance"]
    report["parts_provenance"] = parts   # which run (commit, versions, machine) produced each part
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
