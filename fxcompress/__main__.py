"""python -m fxcompress: the main job on an embedded default that needs no download.

Trains a small CNN on scikit-learn's bundled digits for a few seconds, compiles it with the default
recipe, and prints a before/after table (params, MACs, ONNX size, top-1 in PyTorch and onnxruntime,
latency measured side by side); writes the ONNX files and the report JSON to --out-dir.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from .cli.common import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fxcompress", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="fxcompress_out", help="where ONNX files and the report go")
    p.add_argument("--epochs", type=int, default=8, help="training epochs of the baseline (default 8)")
    p.add_argument("--seed", type=int, default=0)
    return p


def default_recipe(out_dir: str):
    """The passes the main job runs; each later capability adds its pass here."""
    from . import passes
    return [
        passes.CountFlops(),
        passes.MagnitudePrune(target_macs=0.5, round_to=8),   # half the MACs, widths CPU kernels like
        passes.FineTune(epochs=3, lr=0.02),                   # recover what pruning cost
        passes.FoldBatchNorm(),                               # exact; fewer ops to quantize
        passes.QuantizeINT8(method="kl", calib_batches=8),    # uint8 activations, int8 per-channel weights
        passes.ExportONNX(os.path.join(out_dir, "compressed.onnx")),
    ]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from . import compile, passes
    from .data import digits
    from .onnx.measure import interleaved_latency, onnx_top1
    from .models import get_model
    from .train.loop import TrainConfig, evaluate, fit

    os.makedirs(args.out_dir, exist_ok=True)
    torch.manual_seed(args.seed)
    train, test = digits("train", seed=args.seed), digits("test", batch_size=256)
    model = get_model("small_cnn")
    print(f"training small_cnn on digits ({train.num_samples} images, {args.epochs} epochs)")
    fit(model, train, TrainConfig(epochs=args.epochs, lr=0.05, seed=args.seed), desc="baseline")
    example = (next(iter(test))[0][:1],)

    baseline = compile(model, [passes.CountFlops(), passes.ExportONNX(os.path.join(args.out_dir, "baseline.onnx"))],
                       example, progress=False)
    result = compile(model, default_recipe(args.out_dir), example, train_loader=train, val_loader=test,
                     calib_loader=train)
    print(result.report)

    base_path, final_path = baseline.artifacts[-1], result.artifacts[-1]
    latency = interleaved_latency({"baseline": base_path, "compressed": final_path},
                                  torch.cat([example[0]] * 32), runs=50)
    rows = []
    for name, res, path in (("baseline", baseline, base_path), ("compressed", result, final_path)):
        flops = res.report.records[-1]
        rows.append({"model": name, "params": flops.params_after, "macs": flops.macs_after,
                     "onnx_bytes": os.path.getsize(path), "top1_torch": evaluate(res.model, test)["top1"],
                     "top1_onnx": onnx_top1(path, test), "latency_ms_b32": latency[name]})
    print("\n| model | params | MACs | ONNX size | top-1 PyTorch | top-1 ONNX | latency (batch 32) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['macs']:,} | {r['onnx_bytes'] / 1024:.1f} KiB | "
              f"{r['top1_torch']:.2%} | {r['top1_onnx']:.2%} | {r['latency_ms_b32']:.3f} ms |")
    speedup = latency["baseline"] / latency["compressed"]
    print(f"\nspeed-up {speedup:.2f}x, MACs reduction {rows[0]['macs'] / rows[1]['macs']:.2f}x, "
          f"size {rows[0]['onnx_bytes'] / rows[1]['onnx_bytes']:.2f}x smaller "
          f"(onnxruntime, 2 threads, medians of 50 interleaved runs)")
    from .core.files import atomic_write_text
    atomic_write_text(os.path.join(args.out_dir, "report.json"),
                      json.dumps({"summary": rows, "speedup": speedup, "report": result.report.to_dict()},
                                 indent=2, default=str))
    print(f"wrote {os.path.abspath(args.out_dir)}/{{baseline.onnx, compressed.onnx, report.json}}")
    return 0


if __name__ == "__main__":
    run_cli("fxcompress", main)
