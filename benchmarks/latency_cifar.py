"""Pruning to a measured INT8 latency target against pruning to a MACs target, on a real trained network:
the reference CIFAR-10 ResNet-20 (../shared/models, 87.67%), deployed as onnxruntime INT8 at batch 32.

Three pruned students, each one-shot MagnitudePrune of the reference, then the same fine-tuning (FineTune,
--epochs, SGD cosine from --lr, KD from the unpruned model at T=4), then QuantizeINT8 (kl):
- latency: MagnitudePrune(target_latency=--target, runtime="onnxruntime-int8", batch=32,
  relative_to="onnxruntime-fp32"): INT8 at --target of the unpruned FP32 model's latency;
- macs_same_latency: MagnitudePrune(target_macs=m, min_channels=16), m bisected on this machine until its
  INT8 latency measures what the latency model's does (min_channels=16 keeps onnxruntime's fast INT8
  convolution: without it no MACs target reaches that latency, see macs_same_macs);
- macs_same_macs: MagnitudePrune(target_macs=the latency model's MACs fraction), the plain MACs recipe;
- resrep_latency: ResRep(target_latency=--target, ...) from the reference with the same KD and epochs (and
  ResRep's CIFAR settings of resrep_cifar.py): channels chosen while training, by compactor norm per latency
  saved (pruned at the end of its own training, not by --plan).

The pruning (and every latency it is chosen by) runs on this machine with --plan; each student's weights
and kept widths are written to --workdir, so the fine-tuning can run elsewhere (`--train-only`, e.g. on a
lent GPU, benchmarks/cifar_gpu.py) and resume here. Then top-1 of every FP32 and INT8 model on the 10,000
test images in onnxruntime, and every model timed side by side at batch 32 and 1 (interleaved medians, 2
threads); speed-ups are the unpruned FP32 model's latency over each model's, from the same run.

    python benchmarks/latency_cifar.py --plan                      # prune here (a few minutes)
    python benchmarks/latency_cifar.py --epochs 40 --train-only --device cuda   # on the GPU machine
    python benchmarks/latency_cifar.py --epochs 40                 # finish here: top-1, latency, figure

Writes benchmarks/results/latency_cifar.json (with provenance) and figs/latency_cifar.png (top-1 against
measured INT8 latency).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from provenance import provenance  # noqa: E402
from resrep_cifar import training_time  # noqa: E402

RESULTS = os.path.join(HERE, "results")
FIGS = os.path.join(os.path.dirname(HERE), "figs")
VARIANTS = ("latency", "macs_same_latency", "macs_same_macs", "resrep_latency")
X = torch.randn(1, 3, 32, 32)


def prune_once(reference, **options):
    import fxcompress
    from fxcompress.passes import MagnitudePrune
    r = fxcompress.compile(reference, [MagnitudePrune(**options)], X, progress=False)
    return r.model.eval(), r.report.records[-1]


def int8_ms(models: dict, args) -> dict:
    """Each model's INT8 (the reference also FP32) latency at batch 32, side by side, in ms."""
    import tempfile
    from fxcompress.latency import Runtime, export_for, measure
    int8, fp32 = Runtime("onnxruntime-int8", 2, 32), Runtime("onnxruntime-fp32", 2, 32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {k: export_for(m, (X,), int8, os.path.join(tmp, f"{k}.onnx")) for k, m in models.items()}
        paths["reference_fp32"] = export_for(models["reference"], (X,), fp32, os.path.join(tmp, "ref32.onnx"))
        ms = measure(paths, int8, (X,), runs=20, budget_s=6.0)
    return {k: v.ms for k, v in ms.items()}


def plan(reference, args) -> dict:
    """Prune the three students here; write each one's state and kept widths to the work dir."""
    common = dict(round_to=args.round_to)
    lat_model, lat_rec = prune_once(reference, target_latency=args.target, runtime="onnxruntime-int8", batch=32,
                                    relative_to="onnxruntime-fp32", **common)
    macs_fraction = lat_rec.macs_after / lat_rec.macs_before
    students = {"latency": (lat_model, lat_rec)}
    students["macs_same_macs"] = prune_once(reference, target_macs=macs_fraction, **common)
    # bisect the MACs target (min_channels=16) until its INT8 latency matches the latency student's
    lo, hi, search = 0.05, 0.95, []
    for _ in range(args.bisect_steps):
        mid = (lo + hi) / 2
        model, rec = prune_once(reference, target_macs=mid, min_channels=16, **common)
        ms = int8_ms({"reference": reference, "latency": lat_model, "candidate": model}, args)
        ratio = ms["candidate"] / ms["latency"]
        search.append({"target_macs": mid, "macs": rec.macs_after, "int8_ms_over_latency_student": ratio})
        print(f"macs target {mid:.3f}: {rec.macs_after / 1e6:.1f}M MACs, INT8 latency x{ratio:.3f} the "
              f"latency student's", flush=True)
        if abs(ratio - 1) <= args.match:
            break
        lo, hi = (mid, hi) if ratio < 1 else (lo, mid)
    best = min(search, key=lambda s: abs(s["int8_ms_over_latency_student"] - 1))
    students["macs_same_latency"] = prune_once(reference, target_macs=best["target_macs"], min_channels=16, **common)
    out = {"latency_metrics": {k: v for k, v in lat_rec.metrics.items() if k not in ("latency_model", "measured_ms")},
           "macs_fraction_of_latency_student": macs_fraction, "macs_before": lat_rec.macs_before, "bisection": search, "students": {}}
    for name, (model, rec) in students.items():
        torch.save(model.state_dict(), os.path.join(args.workdir, f"{name}_pruned.pt"))
        out["students"][name] = {"group_widths": rec.metrics["group_widths"], "macs": rec.macs_after,
                                 "params": rec.params_after, "options": {k: str(v) for k, v in rec.metrics.items()
                                                                        if k in ("target_latency", "ratio")},
                                 "output_on_seed": model(torch.ones(1, 3, 32, 32)).flatten().tolist()}
    with open(os.path.join(args.workdir, "plan.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def rebuild(reference, name: str, planned: dict, args):
    """The pruned student from its kept widths (magnitude order) and saved weights, checked to reproduce
    the planned model's output."""
    import fxcompress
    from fxcompress.latency import traced_groups
    from fxcompress.passes import PruneChannels
    from fxcompress.prune.plan import magnitude_scores
    widths = {int(g): w for g, w in planned["group_widths"].items()}
    gm, result = traced_groups(copy.deepcopy(reference), (X,))
    scores = magnitude_scores(gm, result, [result.groups[g] for g in widths])
    kept = {g: np.sort(np.argsort(-scores[g], kind="stable")[:w]) for g, w in widths.items()}
    model = fxcompress.compile(reference, [PruneChannels(kept)], X, progress=False).model
    model.load_state_dict(torch.load(os.path.join(args.workdir, f"{name}_pruned.pt"), weights_only=True))
    out = model.eval()(torch.ones(1, 3, 32, 32)).flatten()
    if not torch.allclose(out, torch.tensor(planned["output_on_seed"]), rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"{name}: the rebuilt student does not reproduce the planned one; run --plan again")
    return model


def run_variant(name, reference, planned, data, args) -> dict:
    import fxcompress
    from fxcompress.distill import DistillHook, KDLoss
    from fxcompress.onnx.measure import onnx_top1
    from fxcompress.passes import ExportONNX, FineTune, QuantizeINT8
    train, test, calib = data
    cached = os.path.join(args.workdir, f"{name}.json")
    if os.path.exists(cached):
        with open(cached) as f:
            return json.load(f)
    ckpt = os.path.join(args.workdir, name)
    hooks = [DistillHook(copy.deepcopy(reference), KDLoss(temperature=4.0))]
    common = dict(epochs=args.epochs, lr=args.lr, hooks=hooks, checkpoint_dir=ckpt, resume=True,
                  max_steps_per_epoch=args.max_steps_per_epoch)
    if name == "resrep_latency":   # chooses its channels while training, by compactor norm per latency saved
        from fxcompress.passes import ResRep
        student, passes = reference, [ResRep(target_latency=args.target, runtime="onnxruntime-int8", batch=32,
                                             relative_to="onnxruntime-fp32", round_to=args.round_to,
                                             lasso_strength=3e-4, warmup_epochs=2, mask_interval=60,
                                             step_channels=4, **common)]
    else:
        student, passes = rebuild(reference, name, planned, args), [FineTune(**common)]
    result = fxcompress.compile(student, passes, X, train_loader=train, val_loader=test, device=args.device,
                                progress=True)
    if args.train_only:
        return {"variant": name, "trained": True}
    model = result.model.cpu().eval()
    fp32, int8 = (os.path.join(args.workdir, f"{name}{s}.onnx") for s in ("", "_int8"))
    fxcompress.compile(model, [ExportONNX(fp32)], X, progress=False)
    fxcompress.compile(model, [QuantizeINT8(method="kl"), ExportONNX(int8)], X, calib_loader=calib,
                       val_loader=test, progress=False)
    if name == "resrep_latency":
        record = result.report.records[0]
        planned = {"macs": record.macs_after, "params": record.params_after,
                   "group_widths": {str(w["group"]): w["after"] for w in record.metrics["widths"]}}
        extra = {"resrep": {k: record.metrics.get(k) for k in ("latency_calibration", "predicted_latency",
                                                              "measured_latency", "met_target", "top1_trained",
                                                              "top1_after", "zeroing_max_rel_change", "warning")}}
    else:
        extra = {}
    row = {"variant": name, "epochs": args.epochs, **training_time(ckpt), "macs": planned["macs"], **extra,
           "params": planned["params"], "group_widths": planned["group_widths"],
           "widths": [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)],
           "top1_fp32": onnx_top1(fp32, test), "top1_int8": onnx_top1(int8, test)}
    with open(cached, "w") as f:
        json.dump(row, f, indent=1)
    return row


def figure(rows, latency, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(out_dir, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(rows):   # one colour per model, FP32 circle -> INT8 square
        xs = [latency[f"{r['variant']}_{k}"] for k in ("fp32", "int8")]
        ys = [100 * r[f"top1_{k}"] for k in ("fp32", "int8")]
        ax.plot(xs, ys, "-", color=f"C{i}", alpha=0.4)
        ax.scatter(xs[:1], ys[:1], marker="o", color=f"C{i}")
        ax.scatter(xs[1:], ys[1:], marker="s", color=f"C{i}", label=r["variant"])
    ax.text(0.02, 0.02, "circle FP32, square INT8", transform=ax.transAxes, fontsize=7)
    ax.set_xlabel("onnxruntime latency, batch 32, 2 threads (ms)")
    ax.set_ylabel("top-1 (%), CIFAR-10 test")
    ax.set_title("ResNet-20: latency target vs MACs target")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "latency_cifar.png"), dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", action="store_true", help="prune here and write the students to --workdir")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--target", type=float, default=0.36, help="INT8 latency as a fraction of the unpruned FP32's")
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--bisect-steps", type=int, default=8)
    ap.add_argument("--match", type=float, default=0.03, help="bisection: relative latency match to stop at")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30, help="latency: interleaved rounds")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--workdir", default=os.path.join(RESULTS, "latency_cifar_work"))
    ap.add_argument("--max-steps-per-epoch", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=os.path.join(RESULTS, "latency_cifar.json"))
    ap.add_argument("--figs", default=FIGS)
    args = ap.parse_args(argv)
    from int8_cifar import load_reference, reference_and_loaders
    os.makedirs(args.workdir, exist_ok=True)
    torch.set_num_threads(args.threads)
    if args.plan:
        planned = plan(load_reference()[0].eval(), args)
        print(json.dumps({k: {kk: v[kk] for kk in ("group_widths", "macs")} for k, v in planned["students"].items()}))
        return 0
    with open(os.path.join(args.workdir, "plan.json")) as f:
        planned = json.load(f)
    reference, meta, train, test, calib = reference_and_loaders()
    rows = [run_variant(v, reference, planned["students"].get(v), (train, test, calib), args) for v in args.variants]
    if args.train_only:
        print(json.dumps(rows))
        return 0
    import fxcompress
    from fxcompress.onnx.measure import interleaved_latency, onnx_top1
    from fxcompress.passes import ExportONNX, QuantizeINT8
    base = {"variant": "unpruned"}
    ref_fp32, ref_int8 = (os.path.join(args.workdir, f"reference{s}.onnx") for s in ("", "_int8"))
    fxcompress.compile(reference, [ExportONNX(ref_fp32)], X, progress=False)
    fxcompress.compile(reference, [QuantizeINT8(method="kl"), ExportONNX(ref_int8)], X, calib_loader=calib,
                       val_loader=test, progress=False)
    base.update(top1_fp32=onnx_top1(ref_fp32, test), top1_int8=onnx_top1(ref_int8, test),
                macs=planned["macs_before"])
    paths = {"unpruned_fp32": ref_fp32, "unpruned_int8": ref_int8}
    for r in rows:
        paths.update({f"{r['variant']}_fp32": os.path.join(args.workdir, f"{r['variant']}.onnx"),
                      f"{r['variant']}_int8": os.path.join(args.workdir, f"{r['variant']}_int8.onnx")})
    latency = {b: interleaved_latency(paths, torch.randn(b, 3, 32, 32), runs=args.runs) for b in (32, 1)}
    lines = ["| model | top-1 FP32 | top-1 INT8 | MACs | INT8 b32 (ms) | speed-up over FP32, b32 | b1 |",
             "|---|---|---|---|---|---|---|"]
    for r in [base] + rows:
        r["latency_ms"] = {f"b{b}_{k}": latency[b][f"{r['variant']}_{k}"] for b in (32, 1) for k in ("fp32", "int8")}
        r["speedup_int8_over_unpruned_fp32"] = {f"b{b}": latency[b]["unpruned_fp32"] / latency[b][f"{r['variant']}_int8"]
                                                for b in (32, 1)}
        s = r["speedup_int8_over_unpruned_fp32"]
        lines.append(f"| {r['variant']} | {100 * r['top1_fp32']:.2f}% | {100 * r['top1_int8']:.2f}% | "
                     f"{(r['macs'] or 0) / 1e6:.1f}M | {r['latency_ms']['b32_int8']:.2f} | {s['b32']:.2f}x | "
                     f"{s['b1']:.2f}x |")
    text = "\n".join(lines)
    print(text)
    figure([base] + rows, latency[32], args.figs)
    payload = {"protocol": {k: v for k, v in vars(args).items() if k not in ("workdir", "out", "figs", "train_only",
                                                                               "plan", "device", "threads")},
               "plan": planned, "baseline": base, "rows": rows, "table": text, "provenance": provenance(ort_threads=2)}
    from fxcompress.core.files import atomic_write_text
    atomic_write_text(args.out, json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
