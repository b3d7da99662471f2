"""Detectors from the wild: ultralytics YOLOv8n and YOLO11n (built from their bundled YAML, random weights,
BatchNorm statistics re-estimated on random images), pruned to half the MACs and quantized, against FP32 at
640x640, side by side in one run.

Per model: capture (the report says which tracer read it), MagnitudePrune(target_macs=0.5, round_to=8)
(exactness checked by the pass) + ExportONNX (onnxruntime parity on every output), then FoldBatchNorm +
QuantizeINT8(kl) + ExportONNX (the INT8 check on every output). Latency: onnxruntime, 2 threads, batch 1,
medians of interleaved runs. Every timed file is exported with a static batch of 1, as ultralytics' own ONNX
export does by default (`dynamic=False`): onnxruntime then folds the shape arithmetic (split sizes, anchor
grids) into constants; --dynamic-batch exports them with a dynamic batch axis instead.

    python benchmarks/yolo_detect.py [--models yolov8n yolo11n] [--runs 20] [--calib-images 16]
    python benchmarks/yolo_detect.py --target-latency 0.3      # also a latency-targeted model beside it

With --target-latency F, a second pruned model: MagnitudePrune(target_latency=F, runtime="onnxruntime-int8",
relative_to="onnxruntime-fp32", batch=1, round_to=8), widths chosen where this machine's INT8 kernels are fast,
then the same INT8 lowering; its MACs fraction is reported beside the speed-up.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import traceback
import warnings

import torch

import fxcompress
from fxcompress.core.files import atomic_write_text
from fxcompress.latency.search import LatencyUnreachable
from fxcompress.models.random_init import recalibrate_batchnorm
from fxcompress.onnx.measure import interleaved_latency
from fxcompress.passes import ChannelGroups, CountFlops, ExportONNX, FoldBatchNorm, MagnitudePrune, QuantizeINT8
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from provenance import provenance, scrub_paths  # noqa: E402  (benchmarks/provenance.py)

HERE = os.path.dirname(os.path.abspath(__file__))
FLOOR_ATTEMPTS = 3   # a refused target is retried just above the floor the refusal measured


def build(name: str, size: int):
    from ultralytics.nn.tasks import DetectionModel   # a benchmark dependency, never a runtime one
    torch.manual_seed(0)
    model = DetectionModel(f"{name}.yaml", verbose=False)
    return recalibrate_batchnorm(model, (1, 3, size, size), batches=2, batch_size=4).eval()


def latency_prune(target: float) -> MagnitudePrune:
    """Pruning to `target` x the unpruned FP32 latency, met by the INT8 model at batch 1."""
    return MagnitudePrune(target_latency=target, runtime="onnxruntime-int8", batch=1, relative_to="onnxruntime-fp32",
                          round_to=8)


def run_model(name: str, args, work: str) -> dict:
    row = {"model": name}
    model = build(name, args.size)
    example = (torch.randn(1, 3, args.size, args.size),)
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(4, 3, args.size, args.size, generator=gen) for _ in range(args.calib_images // 4)]
    paths = {"fp32": os.path.join(work, f"{name}_fp32.onnx")}
    dynamic = args.dynamic_batch
    fp32 = fxcompress.compile(model, [CountFlops(), ExportONNX(paths["fp32"], dynamic_batch=dynamic)], example)
    row["capture"] = {k: v for k, v in fp32.report.capture.items() if k != "specialised"}
    prunes = {"pruned": MagnitudePrune(target_macs=0.5, round_to=8)}
    if args.target_latency is not None:
        prunes["latency"] = latency_prune(args.target_latency)
    for kind, prune in prunes.items():
        prefix = "" if kind == "pruned" else "latency_"
        paths[f"{kind}_fp32"] = os.path.join(work, f"{name}_{kind}_fp32.onnx")
        for attempt in range(FLOOR_ATTEMPTS):
            try:
                pruned = fxcompress.compile(model, [ChannelGroups(), prune,
                                                    ExportONNX(paths[f"{kind}_fp32"], dynamic_batch=dynamic)], example)
                break
            except LatencyUnreachable as e:   # below the model's floor: recorded, then just above the floor
                row.setdefault("latency_target_refused", []).append(str(e))
                if attempt == FLOOR_ATTEMPTS - 1:
                    raise
                # each attempt measures the model anew, and the floor moves with the timing noise
                prune = latency_prune(round(math.ceil(e.reachable * 100) / 100 + 0.01, 2))
        groups, record, export = pruned.report.records
        row.update({f"{prefix}macs_pruned": record.macs_after, f"{prefix}params_pruned": record.params_after,
                    f"{prefix}prune_max_rel_error": record.metrics.get("max_rel_error"),
                    f"{prefix}onnx_max_rel_error": export.metrics.get("max_rel_error")})
        if kind == "pruned":
            row.update(macs=record.macs_before, params=record.params_before,
                       fixed_reasons=groups.metrics.get("fixed_reasons"))
        else:
            row["latency_target"] = {k: v for k, v in record.metrics.items()
                                     if k in ("target_latency", "predicted_latency", "measured_latency", "met_target",
                                              "runtime", "relative_to", "batch", "threads", "aim",
                                              "latency_model")}
            # each round's aim, prediction and measurement: where the latency model misses, for diagnosis
            row["latency_target"]["rounds"] = [{k: x[k] for k in ("aimed", "predicted", "measured", "groups_pruned")}
                                               for x in record.metrics.get("latency_rounds", [])]
        try:   # a failed INT8 check leaves no file: the FP32 rows are still measured
            paths[f"{kind}_int8"] = os.path.join(work, f"{name}_{kind}_int8.onnx")
            quant = fxcompress.compile(pruned.model, [FoldBatchNorm(), QuantizeINT8(method="kl"),
                                                      ExportONNX(paths[f"{kind}_int8"], dynamic_batch=dynamic)],
                                    example, calib_loader=calib)
            row[f"{prefix}int8_export"] = {k: v for k, v in quant.report.records[-1].metrics.items()
                                           if not isinstance(v, (list, dict))}
        except fxcompress.FxCompressError as e:
            row[f"{prefix}int8_error"] = f"{type(e).__name__}: {str(e)[:600]}"
            del paths[f"{kind}_int8"]
    row["bytes"] = {k: os.path.getsize(p) for k, p in paths.items()}
    row["latency_ms_b1"] = interleaved_latency(paths, example[0], runs=args.runs, warmup=3)
    lat = row["latency_ms_b1"]
    for kind in prunes:
        prefix = "" if kind == "pruned" else "latency_"
        row[f"{prefix}speedup_pruned_fp32"] = lat["fp32"] / lat[f"{kind}_fp32"]
        if f"{kind}_int8" in lat:
            row[f"{prefix}speedup_pruned_int8"] = lat["fp32"] / lat[f"{kind}_int8"]
    return row


def table_row(r: dict, kind: str, prefix: str, label: str) -> str:
    """One Markdown row: the model pruned as `kind` ("pruned": half the MACs, "latency": to the latency target),
    its fields stored under `prefix`."""
    lat = r["latency_ms_b1"]
    int8 = "failed: " + r[f"{prefix}int8_error"][:160] if f"{prefix}int8_error" in r else "passed"
    int8_ms = f"{lat[f'{kind}_int8']:.1f}" if f"{kind}_int8" in lat else "-"
    speedup = r.get(f"{prefix}speedup_pruned_int8", r[f"{prefix}speedup_pruned_fp32"])
    macs = r[f"{prefix}macs_pruned"]
    return (f"| {label} | {r['capture']['method']} | {r['macs'] / 1e9:.2f}G -> {macs / 1e9:.2f}G "
            f"({macs / r['macs']:.0%}) | {r['params'] / 1e6:.2f}M -> {r[f'{prefix}params_pruned'] / 1e6:.2f}M | "
            f"{r[f'{prefix}prune_max_rel_error']:.1e} | {r[f'{prefix}onnx_max_rel_error']:.1e} | {int8} | "
            f"{lat['fp32']:.1f} | {lat[f'{kind}_fp32']:.1f} | {int8_ms} | {speedup:.2f}x |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["yolov8n", "yolo11n"])
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--calib-images", type=int, default=16)
    ap.add_argument("--target-latency", type=float, default=None,
                    help="also prune to this fraction of the FP32 latency, met by the INT8 model at batch 1")
    ap.add_argument("--dynamic-batch", action="store_true",
                    help="export with a dynamic batch axis (default: static batch 1, as ultralytics exports)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "yolo_detect.json"))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    rows = []
    with tempfile.TemporaryDirectory(prefix="yolo_") as work:
        for name in args.models:
            try:
                rows.append(run_model(name, args, work))
            except Exception as e:  # noqa: BLE001 - a failing model is a row with its reason
                rows.append({"model": name, "error": f"{type(e).__name__}: {str(e)[:400]}",
                             "trace": traceback.format_exc(limit=-3)})
    batch = "dynamic batch axis" if args.dynamic_batch else "static batch"
    print(f"\n## YOLO at {args.size}x{args.size}: pruned to half the MACs + INT8 (onnxruntime, 2 threads, batch 1, "
          f"{batch}, medians of {args.runs} interleaved runs)\n")
    print("| model | capture | MACs | params | prune err | ONNX err | INT8 check | FP32 ms | pruned FP32 ms | "
          "pruned INT8 ms | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | failed: {r['error']} |")
            continue
        print(table_row(r, "pruned", "", r["model"]))
        if "latency_macs_pruned" in r:
            print(table_row(r, "latency", "latency_", f"{r['model']}, target_latency="
                                                        f"{r['latency_target']['target_latency']:g}"))
    atomic_write_text(args.out, scrub_paths(json.dumps({"rows": rows, "size": args.size, "runs": args.runs,
                                                        "dynamic_batch": args.dynamic_batch,
                                            "provenance": provenance(ort_threads=2)}, indent=1, default=str)))
    return 0 if all("error" not in r and "int8_error" not in r and "latency_int8_error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
