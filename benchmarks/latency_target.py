"""How well the latency model predicts: pruned models' predicted latency against their measured latency on
onnxruntime (FP32 and INT8, batch 1 and 32), for torchvision's resnet18, resnet50 and mobilenet_v2 (random
weights, BatchNorm statistics re-estimated) and the CIFAR ResNet-20 of the model registry.

Per model and setting: the latency tables are built (cached under $FXCOMPRESS_CACHE/latency; the time to
build them and the points measured are recorded), the unpruned model is measured once to calibrate, and
three pruned variants are predicted and then measured side by side with the unpruned model in `--windows`
separate measurement windows (fresh sessions each): every group halved (`round_to`), a latency-targeted
plan (MagnitudePrune's search for --target of the unpruned latency) and random widths (a fraction in
[0.25, 1] of each group, seeded). Measured latency is fxcompress.latency.measure's (threads pinned to
distinct CPUs): the lower of the window's fastest interleaved end-to-end run and its profiled estimate (each
node's fastest run), both recorded; fractions are of the unpruned model measured in the same window,
medians over windows. The error is predicted / measured - 1; "one point" is the prediction without the
latency model's second calibration model (LatencyModel.one_point: times in proportion to the tables).

    python benchmarks/latency_target.py --models resnet20 --runtimes fp32,int8 --batches 1,32
    python benchmarks/latency_target.py --models resnet18 --batches 1        # parts merge into one JSON

Writes benchmarks/results/latency_target.json (rows keyed by model, runtime and batch; a part replaces
its rows) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import torchvision
from tqdm.auto import tqdm

from fxcompress.core.files import atomic_write_text
from fxcompress.latency import (LatencyModel, LatencyUnreachable, Runtime, export_for, latency_plan, measure,
                                traced_groups)
from fxcompress.models import get_model
from fxcompress.models.random_init import recalibrate_batchnorm
from fxcompress.prune.apply import apply_plan
from fxcompress.prune.plan import magnitude_scores, plan_from_scores

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from provenance import provenance  # noqa: E402  (benchmarks/provenance.py)

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "latency_target.json")
MODELS = ("resnet18", "resnet50", "mobilenet_v2", "resnet20")


def load(name: str):
    if name == "resnet20":
        model, size = get_model("resnet20"), 32
    else:
        model, size = torchvision.models.get_model(name, weights=None), 224
    torch.manual_seed(0)
    model = recalibrate_batchnorm(model, (1, 3, size, size), batches=2, batch_size=4).eval()
    return model, torch.randn(1, 3, size, size)


def variants(lm, gm, groups, scores, target: float, round_to: int, seed: int = 0) -> dict:
    """{name: plan}: every group halved, the latency-targeted plan, random widths."""
    prunable = groups.prunable()
    plans = {"halved": plan_from_scores(prunable, scores, 0.5, round_to)}
    try:
        plans[f"latency {target}"], _ = latency_plan(lm, prunable, scores, target, round_to)
    except LatencyUnreachable as e:   # the lowest the search reaches: still a plan to predict
        plans[f"latency {e.reachable:.2f}"], _ = latency_plan(lm, prunable, scores, e.reachable + 1e-9, round_to)
    rng = np.random.default_rng(seed)
    random_plan = {}
    for g in prunable:
        keep = max(round_to, int(round(rng.uniform(0.25, 1.0) * g.size / round_to)) * round_to)
        if keep < g.size:
            random_plan[g.id] = np.sort(np.argsort(-scores[g.id], kind="stable")[:keep])
    plans["random widths"] = random_plan
    return plans


def run_setting(name, model, x, gm, groups, runtime: Runtime, args) -> dict:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="latency_target_") as tmp:
        paths = {"unpruned": os.path.join(tmp, "unpruned.onnx")}
        lm = LatencyModel.build(gm, groups, (x,), runtime, round_to=args.round_to, points=args.points,
                                unpruned_path=paths["unpruned"], progress=not args.quiet)
        build_seconds = time.perf_counter() - start
        prunable = groups.prunable()
        scores = magnitude_scores(gm, groups, prunable)
        plans = variants(lm, gm, groups, scores, args.target, args.round_to)
        predicted, one_point = {"unpruned": 1.0}, {"unpruned": 1.0}
        for i, (variant, plan) in enumerate(plans.items()):
            paths[variant] = export_for(apply_plan(gm, groups, plan), (x,), runtime, os.path.join(tmp, f"v{i}.onnx"))
            predicted[variant] = lm.fraction(lm.masks(plan))
            one_point[variant] = lm.one_point().fraction(lm.masks(plan))
        windows = [measure(paths, runtime, (x,), budget_s=args.budget) for _ in range(args.windows)]
    rows = []
    for variant in paths:
        fractions = {stat: [getattr(w[variant], stat) / getattr(w["unpruned"], stat) for w in windows]
                     for stat in ("ms", "wall_ms", "quiet_ms")}
        measured = statistics.median(fractions["ms"])
        rows.append({"variant": variant, "predicted": predicted[variant], "measured": measured,
                     "predicted_one_point": one_point[variant], "error_one_point": one_point[variant] / measured - 1,
                     "measured_windows": fractions["ms"], "error": predicted[variant] / measured - 1,
                     "measured_wall": statistics.median(fractions["wall_ms"]),
                     "measured_quiet": statistics.median(fractions["quiet_ms"]),
                     **{stat: statistics.median(getattr(w[variant], stat) for w in windows)
                        for stat in ("ms", "wall_ms", "quiet_ms")}})
    # the unpruned model's absolute prediction: the calibration's measurement against the later windows
    rows[0]["predicted_ms"] = lm.measured_ms
    return {"model": name, "runtime": runtime.name, "batch": runtime.batch, "threads": runtime.threads,
            "latency_model": lm.breakdown(), "build_seconds": build_seconds,
            "seconds": time.perf_counter() - start, "variants": rows}


def table(rows) -> str:
    lines = ["| model | runtime | batch | unpruned ms (wall / profiled) | variant | predicted | measured (3 windows) | "
             "error | error, one point | tables: points measured / cached, s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lm = r["latency_model"]
        base = r["variants"][0]
        for v in r["variants"][1:]:
            lines.append(f"| {r['model']} | {r['runtime'].split('-')[1].upper()} | {r['batch']} | "
                         f"{base['wall_ms']:.2f} / {base['quiet_ms']:.2f} | {v['variant']} | {v['predicted']:.3f} | "
                         f"{v['measured']:.3f} ({', '.join(f'{m:.3f}' for m in v['measured_windows'])}) | "
                         f"{100 * v['error']:+.1f}% | {100 * v.get('error_one_point', float('nan')):+.1f}% | "
                         f"{lm['table_points_measured']} / {lm['table_points_cached']}, {lm['table_seconds']:.0f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--runtimes", default="fp32,int8")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--points", type=int, default=6, help="sampled widths per table axis")
    ap.add_argument("--target", type=float, default=0.5, help="the latency-targeted variant's target")
    ap.add_argument("--windows", type=int, default=3, help="separate measurement windows")
    ap.add_argument("--budget", type=float, default=4.0, help="seconds of runs per measurement window")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    load_before = os.getloadavg()
    rows = []
    settings = [(m, f"onnxruntime-{r}", int(b)) for m in args.models.split(",") for r in args.runtimes.split(",")
                for b in args.batches.split(",")]
    analysed = {}
    for name, rt, batch in tqdm(settings, desc="settings", disable=args.quiet):
        if name not in analysed:
            model, x = load(name)
            analysed[name] = (model, x, *traced_groups(model, (x,)))
        rows.append(run_setting(name, *analysed[name], Runtime(rt, args.threads, batch), args))
        tqdm.write("\n".join(table(rows[-1:]).splitlines()[2:]))   # this setting's rows as they come
    previous = []
    if os.path.isfile(args.out):
        with open(args.out) as f:
            previous = json.load(f).get("rows", [])
    keys = {(r["model"], r["runtime"], r["batch"]) for r in rows}
    merged = [r for r in previous if (r["model"], r["runtime"], r["batch"]) not in keys] + rows
    for r in rows:
        r["provenance"] = provenance(ort_threads=args.threads, load_average_before=load_before,
                                     load_average_after=os.getloadavg(), argv=sys.argv[1:])
    atomic_write_text(args.out, json.dumps({"rows": merged}, indent=1, default=float))
    print("\n" + table(rows))
    errors = [abs(v["error"]) for r in rows for v in r["variants"][1:]]
    print(f"\nlargest |error| {100 * max(errors):.1f}% over {len(errors)} pruned variants; wrote {args.out}")


if __name__ == "__main__":
    main()
