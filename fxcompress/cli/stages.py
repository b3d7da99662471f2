"""Measuring every stage of a run: a probe pass after each pipeline pass, the training curves, the layer
widths before and after, onnxruntime latency of the written files side by side, and the per-stage table.

    rows = []
    passes = [ResRep(...), StageProbe("ResRep", rows, val), FloatExport("fp32.onnx", rows), QuantizeINT8(),
              StageProbe("QuantizeINT8", rows, val), ExportONNX("m.onnx"),
              StageProbe("ExportONNX", rows, val, "cpu", onnx_file="m.onnx")]
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from ..core.pass_base import LoweringPass
from ..core.report import human
from ..quant.fake_quant import is_quantized
from ..train.loop import evaluate

log = logging.getLogger("fxcompress.run")
CURVE_KEYS = ("val_top1", "masked_channels", "macs")   # drawn where a history records them


def layer_widths(model: nn.Module) -> Dict[str, int]:
    """Output width of every conv and linear layer, by module name."""
    widths = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            widths[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            widths[name] = m.out_features
    return widths


class StageProbe(LoweringPass):
    """Measures the model as the stage before it left it and appends a row to `rows`: params, MACs,
    precision, top-1 (of the file in onnxruntime when `onnx_file` is that stage's ONNX output, else of the
    model in PyTorch, which for a fake-quant model computes onnxruntime's integer kernels exactly) and the
    layer widths."""

    def __init__(self, stage: str, rows: list, val_loader, device="cpu", onnx_file: Optional[str] = None):
        self.stage, self.rows, self.val_loader, self.device, self.onnx_file = stage, rows, val_loader, device, onnx_file

    def run(self, ctx) -> dict:
        from ..onnx.measure import onnx_top1
        flops = ctx.flops()
        int8 = is_quantized(ctx.gm)
        row = {"name": self.stage, "params": flops.params, "macs": flops.macs, "precision": "int8" if int8 else "fp32",
               "onnx_path": self.onnx_file, "widths": None if int8 else layer_widths(ctx.gm)}
        if self.onnx_file:
            row["top1"] = onnx_top1(self.onnx_file, self.val_loader)
        else:
            row["top1"] = evaluate(ctx.gm, self.val_loader, self.device)["top1"]
        self.rows.append(row)
        log.info("stage %s: top-1 %.2f%%%s, %s params, %s MACs, %s", self.stage, 100 * row["top1"],
                 " (onnxruntime)" if self.onnx_file else "", human(flops.params), human(flops.macs), row["precision"])
        return {"stage": self.stage, "top1": row["top1"]}


class FloatExport(LoweringPass):
    """Writes the float model as it is (ExportONNX, verified) and gives the file to the last measured stage:
    the input model, and the compressed model as it enters quantization."""

    def __init__(self, path: str, rows: list):
        self.path, self.rows = path, rows

    def output_path(self) -> str:
        return self.path

    def run(self, ctx) -> dict:
        from ..passes import ExportONNX
        metrics = ExportONNX(self.path).run(ctx)
        self.rows[-1]["onnx_path"] = self.path
        return metrics


def curve(history: Optional[list]) -> list:
    """A training history as report curve points (epoch, loss, and val_top1 / masked_channels / macs where
    recorded)."""
    points = []
    for h in history or []:
        point = {"epoch": int(h["epoch"]), "loss": float(h["loss"])}
        for key in CURVE_KEYS:
            if h.get(key) is not None:
                point[key] = float(h[key]) if key == "val_top1" else int(h[key])
        points.append(point)
    return points


def stage_history(metrics: dict, checkpoint_dir: Optional[str]) -> Optional[list]:
    """A training stage's per-epoch history: from its report metrics (ResRep adds masked channels and MACs
    there), else from its last checkpoint (FineTune reports only the final loss)."""
    from ..train.checkpoint import read_checkpoint
    if metrics.get("history"):
        return metrics["history"]
    if metrics.get("qat_history"):
        return metrics["qat_history"]
    path = os.path.join(checkpoint_dir, "last.pt") if checkpoint_dir else None
    if path and os.path.isfile(path):
        return read_checkpoint(path).get("history")
    return None


def widths_before_after(before: Dict[str, int], rows: List[dict]) -> Optional[dict]:
    """Layer widths of the input model and of the last float stage, over the layers both have; None if no
    layer changed width (nothing was pruned)."""
    after = next((r["widths"] for r in reversed(rows) if r.get("widths") is not None), None)
    if after is None:
        return None
    layers = [name for name in before if name in after]
    if all(before[n] == after[n] for n in layers):
        return None
    return {"layers": layers, "before": [before[n] for n in layers], "after": [after[n] for n in layers]}


def measure_latency(rows: List[dict], val_loader, runs: int) -> None:
    """onnxruntime latency (ms, medians of `runs` interleaved rounds, 2 threads) of every row's ONNX file at
    batch 1 and 32, all files side by side so that machine noise hits them alike; rows without a file get None."""
    from ..onnx.measure import interleaved_latency
    files = {r["name"]: r["onnx_path"] for r in rows if r.get("onnx_path")}
    for r in rows:
        r["latency_ms"] = None
    if not files or runs <= 0:
        return
    images = torch.cat([x for x, _ in _first_batches(val_loader, 32)])[:32]
    batch32 = torch.cat([images] * (32 // len(images) + 1))[:32]
    b1 = interleaved_latency(files, batch32[:1].contiguous(), runs=runs)
    b32 = interleaved_latency(files, batch32.contiguous(), runs=runs)
    for r in rows:
        if r["name"] in files:
            r["latency_ms"] = {"b1": b1[r["name"]], "b32": b32[r["name"]]}


def _first_batches(loader, samples: int):
    seen = 0
    for batch in loader:
        yield batch
        seen += len(batch[0])
        if seen >= samples:
            return


def stage_table(stages: List[dict]) -> str:
    """The per-stage table (Markdown)."""
    lines = ["| stage | precision | top-1 | params | MACs | ONNX size | ORT latency b1 | ORT latency b32 |",
             "|---|---|---|---|---|---|---|---|"]
    base = stages[0]
    for s in stages:
        lat = s.get("latency_ms") or {}
        ratio = f" ({s['macs'] / base['macs']:.0%})" if base["macs"] and s is not base else ""
        top1 = "-" if s.get("top1") is None else f"{100 * s['top1']:.2f}%"
        lines.append(f"| {s['name']} | {s['precision']} | {top1} | {human(s['params'])} | "
                     f"{human(s['macs'])}{ratio} | {human(s.get('onnx_bytes'), 'B')} | "
                     f"{_ms(lat.get('b1'))} | {_ms(lat.get('b32'))} |")
    return "\n".join(lines)


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f} ms"
