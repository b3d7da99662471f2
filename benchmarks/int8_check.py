"""The INT8 export check on real models, measured by ExportONNX itself: quantizer by quantizer, how far
onnxruntime's codes are from the fake-quant model's given the same inputs (the largest step, the largest
fraction of one quantizer's codes that differ, and where), the SNR of the outputs computed from those forced
codes; and, reported, what quantization costs (SNR of the fake-quant model vs float) and the end-to-end SNR of
onnxruntime INT8 vs the fake-quant model on held-out inputs (val_loader), every output.

    python benchmarks/int8_check.py [--models cifar_resnet20 resnet18 ...] [--size 64] [--figure F.png]
    python benchmarks/int8_check.py --models zoo --threads 1 --out benchmarks/results/int8_zoo.json \
        --figure figs/int8_zoo.png      # all 80 torchvision classifiers and the trained ResNet-20

Random-weight torchvision models get realistic BatchNorm statistics (models.random_init) and random
images (calibration and held-out drawn apart); the reference CIFAR-10 ResNet-20 (../shared/models) is
calibrated on 64 test images and checked on 64 others. JSON: benchmarks/results/int8_check.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

import fxcompress
from fxcompress.core.files import atomic_write_text
from fxcompress.core.verify import TOLERANCES
from fxcompress.passes import ExportONNX, FoldBatchNorm, QuantizeINT8

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from provenance import provenance  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "shared"))
MODELS = ["cifar_resnet20", "resnet18", "resnet50", "mobilenet_v2", "regnet_x_400mf", "shufflenet_v2_x1_0",
          "efficientnet_b0", "googlenet", "densenet121"]


def build(name: str, size: int):
    """(model, calibration batches, held-out batches)"""
    if name == "cifar_resnet20":
        from fxcompress.data import cifar10
        from fxcompress.models import load_model
        model = load_model(os.path.join(SHARED, "models", "cifar_resnet.py") + ":cifar_resnet",
                           os.path.join(SHARED, "models", "cifar_resnet20.pt"))
        batches = [x for x, _ in cifar10(os.path.join(SHARED, "data"), "test", batch_size=16, shuffle=False,
                                         limit=128)]
        return model.eval(), batches[:4], batches[4:8]
    from fxcompress.models.random_init import recalibrate_batchnorm
    from zoo_prune import build as zoo_model   # the zoo sweep's models and the input size each accepts
    torch.manual_seed(0)
    model, x = zoo_model(name, size)
    size = x.shape[-1]
    if getattr(model, "AuxLogits", None) is not None:   # inception_v3's training-only head: too small an input
        model.AuxLogits = None                          # for it at this size, and never part of the INT8 model
    recalibrate_batchnorm(model, (1, 3, size, size))
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 3, size, size, generator=gen) for _ in range(4)]
    held = [torch.randn(8, 3, size, size, generator=gen) for _ in range(2)]
    return model.eval(), calib, held


def plot(rows, path: str) -> None:
    """Per model: the share of MACs in integer kernels, the largest fraction of a quantizer's codes that
    differ from onnxruntime's (the check's limit drawn), and the end-to-end vs forced-codes SNR."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in rows if r.get("passed")]
    x = range(len(rows))
    fig, axes = plt.subplots(3, 1, figsize=(max(10, len(rows) * 0.22), 9), sharex=True)
    axes[0].bar(x, [100 * r["int8_mac_fraction"] for r in rows], color="tab:blue")
    axes[0].axhline(90, color="k", lw=0.8, ls="--")
    axes[0].set_ylim(80, 100.5)
    axes[0].set_ylabel("MACs in integer\nkernels (%)")
    floor = 1e-6
    axes[1].bar(x, [max(r["code_flip_fraction"], floor) for r in rows], color="tab:orange")
    axes[1].axhline(TOLERANCES["int8_code_flip_fraction"], color="k", lw=0.8, ls="--", label="check's limit")
    axes[1].set_yscale("log")
    axes[1].set_ylim(floor, 1e-2)
    axes[1].set_ylabel("codes flipped\n(worst quantizer)")
    axes[1].legend(loc="upper left", fontsize=8)
    axes[2].plot(x, [r["snr_lower_db"] for r in rows], "o", ms=3, label="end to end (reported)")
    axes[2].plot(x, [r["snr_forced_db"] for r in rows], "s", ms=3, label="from forced codes (>= 60 dB required)")
    axes[2].plot(x, [r["snr_quant_db"] for r in rows], "^", ms=3, label="quantization itself")
    axes[2].set_ylabel("SNR vs fake-quant (dB)")
    axes[2].legend(loc="lower left", fontsize=8)
    axes[2].set_xticks(list(x))
    axes[2].set_xticklabels([r["model"] for r in rows], rotation=90, fontsize=7)
    fig.suptitle(f"INT8 check over {len(rows)} models (FoldBatchNorm + QuantizeINT8(kl) + ExportONNX)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=MODELS, help="model names, or 'zoo' for every torchvision "
                   "classification model")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--out", default=os.path.join(HERE, "results", "int8_check.json"))
    p.add_argument("--threads", type=int, default=2, help="torch threads (onnxruntime's own default)")
    p.add_argument("--figure", help="also draw the per-model figure here (e.g. figs/int8_zoo.png)")
    p.add_argument("--plot-only", metavar="RESULTS_JSON", help="only draw --figure from an existing results file")
    args = p.parse_args(argv)
    if args.plot_only:
        with open(args.plot_only) as f:
            plot(json.load(f)["rows"], args.figure or os.path.splitext(args.plot_only)[0] + ".png")
        return
    torch.set_num_threads(args.threads)
    if args.models == ["zoo"]:
        import torchvision
        args.models = ["cifar_resnet20"] + torchvision.models.list_models(module=torchvision.models)
    rows = []
    partial = args.out + ".partial"   # a row per finished model: an interrupted sweep resumes where it stopped
    if os.path.exists(partial):
        with open(partial) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    done = {r["model"] for r in rows}
    print("| model | SNR quant (dB) | SNR lower end to end (dB) | max code step | codes flipped (worst quantizer) "
          "| SNR from forced codes (dB) | top-1 agreement | int8 MACs | passed |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m for m in args.models if m not in done]:
            start = time.perf_counter()
            row = {"model": name}
            try:
                model, calib, held = build(name, args.size)
                result = fxcompress.compile(model, [FoldBatchNorm(), QuantizeINT8(progress=False),
                                                    ExportONNX(os.path.join(tmp, f"{name}.onnx"))],
                                            (calib[0],), calib_loader=calib, val_loader=held, progress=False)
                m = result.report.records[-1].metrics
                row.update({k: m[k] for k in ("snr_quant_db", "snr_lower_db", "max_code_step", "code_flip_fraction",
                                              "worst_quantizer", "snr_forced_db", "quantizer_calls_compared",
                                              "check_samples", "int8_mac_fraction") if k in m},
                           top1_agreement=m.get("top1_agreement"), passed=True)
            except fxcompress.FxCompressError as e:   # which check refused it (the codes check or another)
                codes = "does not compute what the fake-quant model computes" in str(e)
                row.update(passed=False, failed_check="codes" if codes else type(e).__name__, error=str(e)[:400])
            except Exception as e:  # noqa: BLE001 - a sweep records every failure and goes on
                row.update(passed=False, failed_check=type(e).__name__, error=str(e)[:300])
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            with open(partial, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            if os.path.exists(os.path.join(tmp, f"{name}.onnx")):   # big models: keep the disk free
                os.remove(os.path.join(tmp, f"{name}.onnx"))
            f = lambda k: f"{row[k]:.1f}" if isinstance(row.get(k), float) else "-"  # noqa: E731
            macs = f"{row['int8_mac_fraction']:.1%}" if "int8_mac_fraction" in row else "-"
            flips = f"{row['code_flip_fraction']:.1e} ({row['worst_quantizer']})" if "code_flip_fraction" in row else "-"
            print(f"| {name} | {f('snr_quant_db')} | {f('snr_lower_db')} | {f('max_code_step')} | {flips} | "
                  f"{f('snr_forced_db')} | {row.get('top1_agreement') or '-'} | {macs} | "
                  f"{row['passed'] or row['failed_check']} |", flush=True)
    refused = [r["model"] for r in rows if r.get("failed_check") == "codes"]
    print(f"\n{sum(r['passed'] for r in rows)} / {len(rows)} passed every export check; the codes check refused "
          f"{len(refused)} {refused}; the others failed earlier checks (see failed_check)")
    out = {"provenance": provenance(), "command": "python benchmarks/int8_check.py " + " ".join(argv or sys.argv[1:]),
           "tolerances": {k: v for k, v in TOLERANCES.items() if k.startswith("int8")}, "rows": rows}
    atomic_write_text(args.out, json.dumps(out, indent=2))
    os.remove(partial)
    if args.figure:
        plot(rows, args.figure)


if __name__ == "__main__":
    main()
