"""ResRep against magnitude pruning + fine-tuning on a real trained network: the reference CIFAR-10 ResNet-20
(../shared/models, 87.67%, 40.8M MACs), both to half the MACs with the same epochs and the same schedule
(SGD, cosine from --lr), each with and without distillation from the unpruned model (KDLoss, T=4).

Variants: resrep_mean (ResRep, group_score="mean": the pass's default), resrep_sum (group_score="sum": a residual
group's score is its producers' row norms summed), magnitude (MagnitudePrune(target_macs=0.5) then FineTune), and
each with "_kd".
Each variant ends as an FP32 and an INT8 (QuantizeINT8 kl) ONNX model; top-1 on the 10,000 test images in
onnxruntime, MACs, params, and onnxruntime latency at batch 1 and 32 of every model side by side
(interleaved medians, 2 threads). A finished variant is cached in --workdir (its JSON and ONNX files), and
training checkpoints every epoch there, so an interrupted run continues where it stopped.

    python benchmarks/resrep_cifar.py                          # 30 epochs per variant: ~3 h on 2 CPU cores
    python benchmarks/resrep_cifar.py --epochs 8 --variants resrep_mean magnitude
    python benchmarks/resrep_cifar.py --device cuda            # on a GPU machine

Writes benchmarks/results/resrep_cifar.json (with provenance), figs/resrep_cifar_{accuracy,widths,masking}.png,
and the ResRep model as benchmarks/results/resrep_resnet20.onnx and resrep_resnet20_int8.onnx (inputs:
RGB 32x32 in [0, 1], normalised with the reference model's mean and std).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from provenance import provenance  # noqa: E402
from int8_cifar import reference_and_loaders  # noqa: E402

RESULTS = os.path.join(HERE, "results")
FIGS = os.path.join(os.path.dirname(HERE), "figs")
VARIANTS = ("resrep_mean", "resrep_sum", "magnitude", "resrep_mean_kd", "resrep_sum_kd", "magnitude_kd")
SHIPPED = "resrep_mean_kd"   # committed as resrep_resnet20.onnx / _int8.onnx: the shipped CIFAR-10 recipe's configuration
X = torch.randn(1, 3, 32, 32)


def passes_for(variant: str, reference, args, ckpt: str):
    from fxcompress.distill import DistillHook, KDLoss
    from fxcompress.passes import FineTune, MagnitudePrune, ResRep
    hooks = [DistillHook(copy.deepcopy(reference), KDLoss(temperature=4.0))] if variant.endswith("_kd") else []
    common = dict(epochs=args.epochs, lr=args.lr, hooks=hooks, checkpoint_dir=ckpt, resume=True,
                  max_steps_per_epoch=args.max_steps_per_epoch)
    if variant.startswith("resrep"):
        return [ResRep(target_macs=args.target, lasso_strength=args.lasso, warmup_epochs=args.warmup_epochs,
                       mask_interval=args.mask_interval, step_channels=args.step_channels,
                       group_score=variant.split("_")[1], **common)]
    return [MagnitudePrune(target_macs=args.target), FineTune(**common)]


def run_variant(variant: str, reference, data, args) -> dict:
    """Train one variant (or load its cached result) and write its FP32 and INT8 ONNX models."""
    import fxcompress
    from fxcompress.onnx.measure import onnx_top1
    from fxcompress.passes import ExportONNX, QuantizeINT8
    train, test, calib = data
    cached = os.path.join(args.workdir, f"{variant}.json")
    if os.path.exists(cached):
        with open(cached) as f:
            return json.load(f)
    fp32, int8 = (os.path.join(args.workdir, f"{variant}{s}.onnx") for s in ("", "_int8"))
    start = time.perf_counter()
    ckpt = os.path.join(args.workdir, variant)
    result = fxcompress.compile(reference, passes_for(variant, reference, args, ckpt),
                                X, train_loader=train, val_loader=test, device=args.device, progress=True)
    seconds = time.perf_counter() - start
    if args.train_only:   # the checkpoint is the product; a later run without --train-only resumes from it
        return {"variant": variant, "seconds": seconds}
    train_time = training_time(ckpt)
    pruned = result.model.cpu().eval()
    fxcompress.compile(pruned, [ExportONNX(fp32)], X, progress=False)
    try:   # the INT8 check on 64 test images (val_loader); a refusal is a result, recorded, not a crash
        q = fxcompress.compile(pruned, [QuantizeINT8(method="kl"), ExportONNX(int8)], X, calib_loader=calib,
                               val_loader=test, progress=False)
        int8_export, int8_error = {k: v for k, v in q.report.records[-1].metrics.items()
                                   if k in ("snr_quant_db", "snr_lower_db", "max_code_step", "code_flip_fraction",
                                            "int8_mac_fraction", "integer_kernels")}, None
    except fxcompress.FxCompressError as e:
        int8_export, int8_error = {}, f"{type(e).__name__}: {e}"
        print(f"{variant}: INT8 export refused: {int8_error}", file=sys.stderr)
    records = result.report.records
    train_metrics = records[-1].metrics
    row = {"variant": variant, "epochs": args.epochs, "compile_seconds": seconds, **train_time,
           "macs": records[-1].macs_after, "params": records[-1].params_after,
           "macs_before": records[0].macs_before, "params_before": records[0].params_before,
           "top1_fp32": onnx_top1(fp32, test), "top1_int8": onnx_top1(int8, test) if int8_error is None else None,
           "int8_export": int8_export, "int8_error": int8_error,
           "widths": [m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)],
           "train": {k: v for k, v in train_metrics.items() if k not in ("widths", "skipped_groups")}}
    if variant.startswith("resrep"):
        row["group_widths"] = train_metrics["widths"]
    with open(cached, "w") as f:
        json.dump(row, f, indent=1)
    return row


def training_time(checkpoint_dir: str) -> dict:
    """Where and how long the training ran, from the checkpoint's per-epoch timing (a run trained on a GPU
    and finished here records the GPU's seconds, not the resume's)."""
    from fxcompress.train.checkpoint import read_checkpoint
    path = os.path.join(checkpoint_dir, "last.pt")
    timing = read_checkpoint(path).get("timing", []) if os.path.isfile(path) else []
    return {"train_seconds": sum(t["train_seconds"] + t["val_seconds"] for t in timing),
            "train_device": sorted({t["device"] for t in timing}),
            "epoch_seconds": [round(t["train_seconds"] + t["val_seconds"], 3) for t in timing]}


def plots(rows, baseline, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(out_dir, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter([baseline["macs"] / 1e6], [100 * baseline["top1_fp32"]], marker="*", s=120, label="unpruned")
    for r in rows:
        ax.scatter([r["macs"] / 1e6], [100 * r["top1_fp32"]], label=r["variant"])
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel("top-1 (%), CIFAR-10 test")
    ax.set_title("ResNet-20 at half the MACs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "resrep_cifar_accuracy.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(baseline["widths"], "k-", label="unpruned")
    for r in rows:
        if not r["variant"].endswith("_kd"):
            ax.plot(r["widths"], marker="o", ms=3, label=r["variant"])
    ax.set_xlabel("conv layer (order of definition)")
    ax.set_ylabel("output channels")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "resrep_cifar_widths.png"), dpi=120)
    plt.close(fig)

    fig, ax1 = plt.subplots(figsize=(5.5, 3.5))
    ax2 = ax1.twinx()
    for r in rows:
        if r["variant"].startswith("resrep") and not r["variant"].endswith("_kd"):
            h = r["train"]["history"]
            ax1.plot([e["epoch"] for e in h], [e["masked_channels"] for e in h], marker="o", ms=3,
                     label=f"{r['variant']}: masked channels")
            ax2.plot([e["epoch"] for e in h], [e["macs"] / 1e6 for e in h], "--", label=f"{r['variant']}: MACs")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("masked channels")
    ax2.set_ylabel("MACs with masks removed (M)")
    ax1.legend(loc="center right", fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "resrep_cifar_masking.png"), dpi=120)
    plt.close(fig)


def table(rows, baseline) -> str:
    lines = ["| variant | top-1 FP32 | top-1 INT8 | MACs | params | ORT b1 FP32 / INT8 (ms) | ORT b32 FP32 / INT8 (ms) |",
             "|---|---|---|---|---|---|---|"]
    for r in [baseline] + rows:
        lat = r.get("latency_ms", {})
        int8 = f"{100 * r['top1_int8']:.2f}%" if r.get("top1_int8") is not None else "refused by the INT8 check"
        lines.append(f"| {r['variant']} | {100 * r['top1_fp32']:.2f}% | {int8} | "
                     f"{r['macs'] / 1e6:.1f}M | {r['params'] / 1e3:.0f}k | "
                     f"{lat.get('b1_fp32', 0):.3f} / {lat.get('b1_int8', 0):.3f} | "
                     f"{lat.get('b32_fp32', 0):.2f} / {lat.get('b32_int8', 0):.2f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.03, help="peak learning rate (cosine), the same for every variant")
    ap.add_argument("--target", type=float, default=0.5, help="fraction of the MACs to keep")
    ap.add_argument("--lasso", type=float, default=3e-4, help="ResRep lasso_strength")
    ap.add_argument("--warmup-epochs", type=float, default=2.0, help="ResRep: epochs before any masking")
    ap.add_argument("--mask-interval", type=int, default=60, help="ResRep: iterations between masking steps")
    ap.add_argument("--step-channels", type=int, default=4, help="ResRep: channels masked per step")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default=os.path.join(RESULTS, "resrep_cifar_work"),
                    help="cached variants and training checkpoints (delete to start afresh)")
    ap.add_argument("--runs", type=int, default=30, help="latency: interleaved rounds")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (onnxruntime latency: always 2)")
    ap.add_argument("--train-only", action="store_true",
                    help="train and checkpoint only (e.g. on a GPU machine); run again without it to finish")
    ap.add_argument("--max-steps-per-epoch", type=int, default=None, help=argparse.SUPPRESS)   # smoke tests
    ap.add_argument("--out", default=os.path.join(RESULTS, "resrep_cifar.json"))
    ap.add_argument("--figs", default=FIGS)
    args = ap.parse_args(argv)
    import fxcompress
    from fxcompress.onnx.measure import interleaved_latency, onnx_top1
    from fxcompress.passes import ExportONNX, QuantizeINT8
    from fxcompress.graph.macs import count_macs
    from fxcompress.graph.tracing import propagate_shapes, trace

    os.makedirs(args.workdir, exist_ok=True)
    torch.set_num_threads(args.threads)
    reference, meta, train, test, calib = reference_and_loaders()
    if args.train_only:
        for v in args.variants:
            print(json.dumps(run_variant(v, reference, (train, test, calib), args)))
        return 0

    base_fp32, base_int8 = (os.path.join(args.workdir, f"reference{s}.onnx") for s in ("", "_int8"))
    fxcompress.compile(reference, [ExportONNX(base_fp32)], X, progress=False)
    fxcompress.compile(reference, [QuantizeINT8(method="kl"), ExportONNX(base_int8)], X, calib_loader=calib,
                       val_loader=test, progress=False)
    gm = trace(copy.deepcopy(reference))
    propagate_shapes(gm, (X,))
    flops = count_macs(gm)
    baseline = {"variant": "unpruned", "macs": flops.macs, "params": flops.params,
                "top1_fp32": onnx_top1(base_fp32, test), "top1_int8": onnx_top1(base_int8, test),
                "widths": [m.out_channels for m in reference.modules() if isinstance(m, torch.nn.Conv2d)]}
    rows = [run_variant(v, reference, (train, test, calib), args) for v in args.variants]

    paths = {"unpruned_fp32": base_fp32, "unpruned_int8": base_int8}
    for r in rows:
        paths[f"{r['variant']}_fp32"] = os.path.join(args.workdir, f"{r['variant']}.onnx")
        if r.get("top1_int8") is not None:
            paths[f"{r['variant']}_int8"] = os.path.join(args.workdir, f"{r['variant']}_int8.onnx")
    latency = {b: interleaved_latency(paths, torch.randn(b, 3, 32, 32), runs=args.runs) for b in (1, 32)}
    for r in [baseline] + rows:
        r["latency_ms"] = {f"b{b}_{kind}": latency[b][f"{r['variant']}_{kind}"] for b in (1, 32)
                           for kind in ("fp32", "int8") if f"{r['variant']}_{kind}" in paths}
    text = table(rows, baseline)
    print(text)
    plots(rows, baseline, args.figs)
    payload = {"protocol": {k: v for k, v in vars(args).items()
                            if k not in ("workdir", "out", "figs", "train_only", "threads", "device")},
               "baseline": baseline, "rows": rows, "table": text,
               "provenance": provenance(ort_threads=2)}
    with open(args.out, "w") as f:
        json.dump(payload, f, indent=1)
    if SHIPPED in args.variants and args.max_steps_per_epoch is None:
        for suffix in ("", "_int8") if rows[args.variants.index(SHIPPED)].get("top1_int8") is not None else ("",):
            shutil.copyfile(os.path.join(args.workdir, f"{SHIPPED}{suffix}.onnx"),
                            os.path.join(RESULTS, f"resrep_resnet20{suffix}.onnx"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
