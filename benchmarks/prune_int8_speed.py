"""Pruning + INT8 on resnet50, against FP32, side by side in one run.

resnet50 with random weights (BatchNorm statistics re-estimated on random data) is exported in FP32,
then compiled with MagnitudePrune(target_macs=0.5, round_to=8) + FoldBatchNorm + QuantizeINT8(kl) +
ExportONNX (the INT8 file is verified against the fake-quant model and checked for integer kernels).
With --target-latency F, a second pruned model beside it: MagnitudePrune(target_latency=F,
runtime="onnxruntime-int8", batch=8, relative_to="onnxruntime-fp32", round_to=8), INT8 at F of the FP32
model's latency at batch 8 (channels ranked by importance per predicted latency saved), then the same INT8
passes. Latency: onnxruntime, 2 threads, batch 1 and 8, medians of interleaved runs, all models side by side.

    python benchmarks/prune_int8_speed.py [--runs 20] [--calib-images 64]
    python benchmarks/prune_int8_speed.py --target-latency 0.14 --out benchmarks/results/prune_int8_latency.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch
import torchvision

import fxcompress
from fxcompress.core.files import atomic_write_text
from fxcompress.onnx.measure import interleaved_latency
from fxcompress.models.random_init import recalibrate_batchnorm
from fxcompress.passes import CountFlops, ExportONNX, FoldBatchNorm, MagnitudePrune, QuantizeINT8
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from provenance import provenance  # noqa: E402  (benchmarks/provenance.py)

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--target-latency", type=float, default=None,
                    help="also prune to this fraction of the FP32 latency, met in INT8 at batch 8")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "prune_int8_speed.json"))
    args = ap.parse_args()

    torch.manual_seed(0)
    model = recalibrate_batchnorm(torchvision.models.get_model(args.model, weights=None), (1, 3, 224, 224),
                                  batches=4, batch_size=8).eval()
    example = (torch.randn(1, 3, 224, 224),)
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 3, 224, 224, generator=gen) for _ in range(args.calib_images // 8)]
    work = tempfile.mkdtemp(prefix="prune_int8_")
    paths = {"fp32": os.path.join(work, "fp32.onnx")}
    fp32 = fxcompress.compile(model, [CountFlops(), ExportONNX(paths["fp32"])], example)
    prunes = {"pruned": MagnitudePrune(target_macs=0.5, round_to=8)}
    if args.target_latency is not None:
        prunes["latency"] = MagnitudePrune(target_latency=args.target_latency, runtime="onnxruntime-int8", batch=8,
                                           relative_to="onnxruntime-fp32", round_to=8)
    rows = {"macs_fp32": fp32.report.records[0].macs_after}
    macs = {"fp32": rows["macs_fp32"]}
    for name, prune in prunes.items():
        paths[f"{name}_fp32"] = os.path.join(work, f"{name}_fp32.onnx")
        paths[f"{name}_int8"] = os.path.join(work, f"{name}_int8.onnx")
        pruned = fxcompress.compile(model, [prune, ExportONNX(paths[f"{name}_fp32"])], example)
        # random weights: quantization noise flips more top-1 decisions than on a trained model
        result = fxcompress.compile(pruned.model, [FoldBatchNorm(), QuantizeINT8(method="kl"),
                                                   ExportONNX(paths[f"{name}_int8"])], example, calib_loader=calib)
        print(result.report)
        rows[f"macs_{name}"] = macs[f"{name}_fp32"] = macs[f"{name}_int8"] = pruned.report.records[0].macs_after
        rows[f"export_int8_{name}"] = result.report.records[-1].metrics
        rows[f"prune_{name}"] = {k: v for k, v in pruned.report.records[0].metrics.items()
                                 if k not in ("latency_model", "measured_ms", "latency_rounds")}
    rows["bytes"] = {k: os.path.getsize(p) for k, p in paths.items()}
    for batch in (1, 8):
        lat = interleaved_latency(paths, torch.randn(batch, 3, 224, 224), runs=args.runs, warmup=3)
        rows[f"latency_ms_b{batch}"] = lat
    print(f"\n## {args.model}: pruning (half the MACs; latency target {args.target_latency}) + INT8 (onnxruntime, "
          f"2 threads, medians of {args.runs} interleaved runs)\n")
    print("| variant | MACs | file | latency b1 (ms) | latency b8 (ms) | speed-up b1 | speed-up b8 |")
    print("|---|---|---|---|---|---|---|")
    for k in paths:
        b1, b8 = rows["latency_ms_b1"][k], rows["latency_ms_b8"][k]
        print(f"| {k} | {macs[k] / 1e9:.2f}G | {rows['bytes'][k] / 2**20:.1f} MiB | {b1:.1f} | {b8:.1f} | "
              f"{rows['latency_ms_b1']['fp32'] / b1:.2f}x | {rows['latency_ms_b8']['fp32'] / b8:.2f}x |")
    rows["provenance"] = provenance(ort_threads=2)
    atomic_write_text(args.out, json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
