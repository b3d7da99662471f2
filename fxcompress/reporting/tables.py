"""The report's tables as rows of strings (header first), shared by the Markdown and HTML writers.

    rows = stage_rows(summary["stages"])   # [["stage", "precision", "top-1", ...], ["baseline", "FP32", ...]]
"""
from __future__ import annotations

import json
from typing import List, Optional

from ..core.report import human

Rows = List[List[str]]


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _ms(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.3f} ms"


def _ratio(base: Optional[float], v: Optional[float]) -> str:
    return "-" if base is None or v is None else f"{base / v:.2f}x"


def _latency(stage: dict, batch: str) -> Optional[float]:
    return None if stage["latency_ms"] is None else stage["latency_ms"][batch]


def stage_rows(stages: List[dict]) -> Rows:
    """One row per stage; the speed-ups are against the first stage (the baseline), from latencies measured
    side by side in one run."""
    base = stages[0]
    rows = [["stage", "precision", "top-1", "params", "MACs", "ONNX size", "latency b1", "latency b32",
             f"speed-up b1 (vs {base['name']})", "speed-up b32"]]
    for s in stages:
        rows.append([s["name"], s["precision"].upper(), _pct(s["top1"]), human(s["params"]), human(s["macs"]),
                     human(s["onnx_bytes"], "B"), _ms(_latency(s, "b1")), _ms(_latency(s, "b32")),
                     _ratio(_latency(base, "b1"), _latency(s, "b1")),
                     _ratio(_latency(base, "b32"), _latency(s, "b32"))])
    return rows


def width_rows(widths: Optional[dict]) -> Rows:
    if not widths:
        return []
    rows = [["layer", "before", "after", "kept"]]
    for name, before, after in zip(widths["layers"], widths["before"], widths["after"]):
        rows.append([name, str(before), str(after), "-" if not before else f"{after / before:.0%}"])
    return rows


def curve_rows(curves: dict) -> Rows:
    """The last point of every stage's curves (the figures show the whole run)."""
    if not any(curves.values()):
        return []
    rows = [["stage", "epochs", "final loss", "final val top-1", "masked channels", "MACs"]]
    for stage, points in curves.items():
        if not points:
            continue
        last = points[-1]
        rows.append([stage, str(len(points)), f"{last['loss']:.4g}", _pct(last.get("val_top1")),
                     str(last["masked_channels"]) if last.get("masked_channels") is not None else "-",
                     human(last.get("macs"))])
    return rows


def flat_items(d: dict, prefix: str = "") -> Rows:
    """A nested dict as (dotted key, value) rows: provenance and the like."""
    rows = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(flat_items(value, name + "."))
        else:
            rows.append([name, value if isinstance(value, str) else json.dumps(value, default=str)])
    return rows


def markdown_table(rows: Rows) -> str:
    if not rows:
        return ""
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")   # noqa: E731
    lines = ["| " + " | ".join(cell(c) for c in rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows[1:]]
    return "\n".join(lines)
