"""Why a pruned ResNet-20 does not get much faster in INT8: onnxruntime latency of ResNet-20-shaped
networks of several widths, FP32 and fxcompress INT8, side by side at batch 32.

ResNet-20's layers are 16, 32 and 64 channels wide. onnxruntime's integer convolution gathers each
output pixel's inputs (im2col) and runs them through a GEMM whose width is the output channel count;
at 8-16 channels that overhead dominates, so removing channels saves MACs but little time, and an
8-wide layer can be slower than a 16-wide one. Each network: random weights, BatchNorm statistics
re-estimated on random data, FoldBatchNorm + QuantizeINT8(kl) on random calibration data (speed does
not depend on the values). Widths: (residual stream per stage, inner width per stage).

    python benchmarks/int8_narrow_layers.py [--runs 30]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from provenance import provenance  # noqa: E402  (benchmarks/provenance.py)

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "int8_narrow_layers.json")

CONFIGS = {   # name: (stream widths, inner widths)
    "resnet20 (reference)": ((16, 32, 64), (16, 32, 64)),
    "~MagnitudePrune 50%, round_to=8 (int8_cifar)": ((8, 24, 40), (16, 24, 48)),
    "stream whole, inner halved": ((16, 32, 64), (8, 16, 32)),
    "stage 1 whole, stages 2-3 halved": ((16, 16, 32), (16, 16, 32)),
    "all x0.75": ((16, 24, 48), (16, 24, 48)),
    "all halved": ((8, 16, 32), (8, 16, 32)),
}


class Block(nn.Module):
    def __init__(self, cin, mid, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, stream, inner, classes=10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, stream[0], 3, 1, 1, bias=False), nn.BatchNorm2d(stream[0])
        layers, cin = [], stream[0]
        for stage, (width, mid) in enumerate(zip(stream, inner)):
            for k in range(3):
                layers.append(Block(cin, mid, width, 2 if k == 0 and stage else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    import onnx
    import fxcompress
    from fxcompress.graph.macs import count_macs
    from fxcompress.onnx.measure import interleaved_latency
    from fxcompress.models.random_init import recalibrate_batchnorm
    from fxcompress.onnx.write import to_onnx_proto
    from fxcompress.passes import ExportONNX, FoldBatchNorm, QuantizeINT8
    from fxcompress.graph.tracing import propagate_shapes, trace

    torch.manual_seed(0)
    calib = [(torch.randn(32, 3, 32, 32), torch.zeros(32, dtype=torch.long)) for _ in range(2)]
    rows, paths = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (stream, inner)) in enumerate(CONFIGS.items()):
            net = recalibrate_batchnorm(ResNet20(stream, inner), (1, 3, 32, 32), batches=4, batch_size=32).eval()
            gm = trace(net)
            propagate_shapes(gm, (torch.randn(1, 3, 32, 32),))
            rows[name] = {"stream": stream, "inner": inner, "macs": count_macs(gm).macs}
            paths[f"{i}/fp32"] = os.path.join(tmp, f"{i}_fp32.onnx")
            onnx.save(to_onnx_proto(net, (torch.randn(1, 3, 32, 32),)), paths[f"{i}/fp32"])
            paths[f"{i}/int8"] = os.path.join(tmp, f"{i}_int8.onnx")
            fxcompress.compile(net, [FoldBatchNorm(), QuantizeINT8(progress=False),
                                     ExportONNX(paths[f"{i}/int8"])], torch.randn(1, 3, 32, 32),
                               calib_loader=calib, progress=False)
        lat = interleaved_latency(paths, torch.randn(args.batch, 3, 32, 32), runs=args.runs)
    base = lat["0/fp32"]
    print(f"\n## ResNet-20 widths in onnxruntime (2 threads, batch {args.batch}, medians of {args.runs} "
          f"interleaved runs); speed-ups against the reference FP32\n")
    print("| network | stream / inner widths | MACs | FP32 ms | INT8 ms | FP32 speed-up | INT8 speed-up | "
          "INT8 GMAC/s |")
    print("|---|---|---|---|---|---|---|---|")
    for i, (name, row) in enumerate(rows.items()):
        row.update(fp32_ms=lat[f"{i}/fp32"], int8_ms=lat[f"{i}/int8"])
        row.update(fp32_speedup=base / row["fp32_ms"], int8_speedup=base / row["int8_ms"])
        gmacs = row["macs"] * args.batch / row["int8_ms"] / 1e6
        print(f"| {name} | {row['stream']} / {row['inner']} | {row['macs'] / 1e6:.1f}M | {row['fp32_ms']:.2f} | "
              f"{row['int8_ms']:.2f} | {row['fp32_speedup']:.2f}x | {row['int8_speedup']:.2f}x | {gmacs:.0f} |")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"batch": args.batch, "runs": args.runs, "rows": rows, "provenance": provenance(ort_threads=2)}, f,
                  indent=1)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
