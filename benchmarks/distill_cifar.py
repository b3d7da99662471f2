"""Distillation on CIFAR-10: the reference ResNet-20 (../shared/models, 87.67%) teaches the half-width
ResNet-20 (`resnet20_half`), every method with the same epochs and schedule (SGD, cosine from --lr):
scratch (labels only), KD (T=4), IRG (stage outputs + logits), VID (one loss per stage output), KD+IRG;
then a pruned student (MagnitudePrune of the reference to half its MACs) fine-tuned with and without KD from
its unpruned self. Top-1 on the 10,000 test images in onnxruntime, mean and spread over --seeds.

Tapped layers: the output of each of the three stages (the last block's ReLU), found in the traced graph,
paired stage by stage between student and teacher.

    python benchmarks/distill_cifar.py                     # 30 epochs x 7 runs x seeds: hours on 2 CPU cores
    python benchmarks/distill_cifar.py --epochs 5 --seeds 0 --methods scratch kd
    python benchmarks/distill_cifar.py --device cuda

Finished runs are cached in --workdir (JSON + ONNX), training checkpoints every epoch there. Writes
benchmarks/results/distill_cifar.json (with provenance), figs/distill_cifar.png, and the scratch student and
the best distilled one as benchmarks/results/distill_scratch.onnx / distill_best.onnx (inputs as the
reference's: RGB 32x32 in [0, 1], normalised with its mean and std).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from provenance import provenance  # noqa: E402
from int8_cifar import reference_and_loaders  # noqa: E402
from resrep_cifar import training_time  # noqa: E402

RESULTS = os.path.join(HERE, "results")
FIGS = os.path.join(os.path.dirname(HERE), "figs")
METHODS = ("scratch", "kd", "irg", "vid", "kd_irg", "pruned", "pruned_kd")
X = torch.randn(1, 3, 32, 32)


def stage_outputs(model) -> list:
    """Node names of the three stage outputs: the ReLU after the residual add of each stage's last block."""
    from fxcompress.graph.tracing import trace
    gm = trace(model)
    blocks = [n.name for n in gm.graph.nodes
              if n.op == "call_function" and "relu" in str(n.target) and n.args
              and getattr(n.args[0], "op", None) == "call_function" and "add" in str(n.args[0].target)]
    per_stage = len(blocks) // 3
    return [blocks[(s + 1) * per_stage - 1] for s in range(3)]


def run_method(method: str, seed: int, reference, data, args) -> dict:
    import fxcompress
    from fxcompress.models import get_model
    from fxcompress.onnx.measure import onnx_top1
    from fxcompress.passes import Distill, ExportONNX, MagnitudePrune
    train, test = data
    key = f"{method}_s{seed}"
    cached = os.path.join(args.workdir, key + ".json")
    if os.path.exists(cached):
        with open(cached) as f:
            return json.load(f)
    torch.manual_seed(seed)
    nodes = stage_outputs(reference)
    losses = {"scratch": [], "kd": ["kd"], "irg": ["irg"], "vid": ["vid"], "kd_irg": ["kd", "irg"],
              "pruned": [], "pruned_kd": ["kd"]}[method]
    taps = nodes if any(loss in ("irg", "vid") for loss in losses) else []
    common = dict(epochs=args.epochs, lr=args.lr, seed=seed, checkpoint_dir=os.path.join(args.workdir, key),
                  resume=True, max_steps_per_epoch=args.max_steps_per_epoch)
    if method.startswith("pruned"):
        student, passes = reference, [MagnitudePrune(target_macs=0.5)]
    else:
        student, passes = get_model("resnet20_half"), []
    # labels only: Distill with no losses is plain training with the same loop and schedule
    passes.append(Distill(teacher=reference, losses=losses, student_nodes=taps, **common))
    start = time.perf_counter()
    result = fxcompress.compile(student, passes, X, train_loader=train, val_loader=test, device=args.device)
    if args.train_only:   # the checkpoint is the product; a later run without --train-only resumes from it
        return {"method": method, "seed": seed, "seconds": time.perf_counter() - start}
    path = os.path.join(args.workdir, key + ".onnx")
    fxcompress.compile(result.model.cpu().eval(), [ExportONNX(path)], X, progress=False)
    rec = result.report.records[-1]
    row = {"method": method, "seed": seed, "epochs": args.epochs, "compile_seconds": time.perf_counter() - start,
           **training_time(os.path.join(args.workdir, key)),
           "top1": onnx_top1(path, test), "macs": rec.macs_after, "params": rec.params_after,
           "pairs": rec.metrics.get("pairs"), "train_loss": rec.metrics.get("train_loss"),
           "top1_before_training": rec.metrics.get("top1_before"), "onnx": os.path.basename(path)}
    with open(cached, "w") as f:
        json.dump(row, f, indent=1)
    return row


def summary(rows) -> dict:
    out, before = {}, {}
    for r in rows:
        out.setdefault(r["method"], []).append(r["top1"])
        if r.get("top1_before_training") is not None:
            before.setdefault(r["method"], []).append(r["top1_before_training"])
    return {m: {"mean": statistics.mean(v), "spread": (max(v) - min(v)) if len(v) > 1 else None, "runs": len(v),
                "before_training": statistics.mean(before[m]) if m in before else None}
            for m, v in out.items()}


def plot(stats, reference_top1, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(stats)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    means = [100 * stats[m]["mean"] for m in names]
    errs = [100 * (stats[m]["spread"] or 0) / 2 for m in names]
    ax.bar(names, means, yerr=errs, capsize=3, color=["#999"] + ["#4c72b0"] * (len(names) - 1))
    ax.axhline(100 * reference_top1, color="k", ls="--", lw=1, label="teacher (ResNet-20)")
    ax.set_ylim(min(means) - 3, max(max(means), 100 * reference_top1) + 1.5)
    ax.set_ylabel("top-1 (%), CIFAR-10 test")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.1, help="peak learning rate (cosine), the same for every run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default=os.path.join(RESULTS, "distill_cifar_work"))
    ap.add_argument("--max-steps-per-epoch", type=int, default=None, help=argparse.SUPPRESS)   # smoke tests
    ap.add_argument("--threads", type=int, default=2, help="torch threads (onnxruntime: always 2)")
    ap.add_argument("--train-only", action="store_true",
                    help="train and checkpoint only (e.g. on a GPU machine); run again without it to finish")
    ap.add_argument("--out", default=os.path.join(RESULTS, "distill_cifar.json"))
    ap.add_argument("--fig", default=os.path.join(FIGS, "distill_cifar.png"))
    args = ap.parse_args(argv)
    from fxcompress.onnx.measure import onnx_top1
    import fxcompress
    from fxcompress.passes import ExportONNX

    os.makedirs(args.workdir, exist_ok=True)
    torch.set_num_threads(args.threads)
    reference, meta, train, test, calib = reference_and_loaders()
    if args.train_only:
        for m in args.methods:
            for s in args.seeds:
                print(json.dumps(run_method(m, s, reference, (train, test), args)))
        return 0
    ref_path = os.path.join(args.workdir, "reference.onnx")
    fxcompress.compile(reference, [ExportONNX(ref_path)], X, progress=False)
    reference_top1 = onnx_top1(ref_path, test)
    rows = [run_method(m, s, reference, (train, test), args) for m in args.methods for s in args.seeds]
    stats = summary(rows)
    lines = ["| method | top-1 (mean) | spread | runs | before training |", "|---|---|---|---|---|",
             f"| teacher ResNet-20 | {100 * reference_top1:.2f}% | - | - | - |"]
    for m, s in stats.items():
        spread = "-" if s["spread"] is None else f"{100 * s['spread']:.2f}"
        before = "-" if s["before_training"] is None else f"{100 * s['before_training']:.2f}%"
        lines.append(f"| {m} | {100 * s['mean']:.2f}% | {spread} | {s['runs']} | {before} |")
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.dirname(args.fig), exist_ok=True)
    plot(stats, reference_top1, args.fig)
    with open(args.out, "w") as f:
        json.dump({"protocol": {k: v for k, v in vars(args).items()
                                if k not in ("workdir", "out", "fig", "train_only", "threads", "device")},
                   "teacher_top1": reference_top1, "rows": rows, "summary": stats, "table": text,
                   "provenance": provenance(ort_threads=2)}, f, indent=1)
    if args.max_steps_per_epoch is None and "scratch" in stats:
        shutil.copyfile(os.path.join(args.workdir, next(r["onnx"] for r in rows if r["method"] == "scratch")),
                        os.path.join(RESULTS, "distill_scratch.onnx"))
        distilled = [r for r in rows if r["method"] not in ("scratch", "pruned", "pruned_kd")]
        if distilled:
            best = max(distilled, key=lambda r: r["top1"])
            shutil.copyfile(os.path.join(args.workdir, best["onnx"]), os.path.join(RESULTS, "distill_best.onnx"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
