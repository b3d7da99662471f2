"""The run summary a report is drawn from, and its validation: a wrong or missing key is named by its path
(`stages[2].latency_ms.b32`) before anything is drawn or written.

    summary = {"title": "ResNet-20 on CIFAR-10", "recipe": {...}, "model": "resnet20", "data": "cifar10",
               "stages": [{"name": "baseline", "top1": 0.9167, "params": 272474, "macs": 40553472,
                           "onnx_bytes": 1090000, "precision": "fp32", "latency_ms": {"b1": 0.9, "b32": 11.2}}],
               "widths": {"layers": ["layer1.0.conv1"], "before": [16], "after": [8]},   # or None
               "curves": {"ResRep": [{"epoch": 0, "loss": 1.2, "val_top1": 0.8, "masked_channels": 12,
                                      "macs": 30000000}]},
               "provenance": {"commit": "abc1234", "torch": "2.14.1", "threads": 2}}
    clean = validate_summary(summary)   # ReportError naming the culprit if anything is off

In a stage, `top1`, `onnx_bytes` and `latency_ms` may be None or absent (not measured); `widths` may be None
(nothing was pruned) and `curves` empty (nothing was trained). A curve point needs `epoch` and `loss`; its
`val_top1`, `masked_channels` and `macs` are drawn where present.
"""
from __future__ import annotations

import math
from typing import Any, Dict

from ..core.errors import FxCompressError

PRECISIONS = ("fp32", "int8")
TOP_KEYS = ("title", "recipe", "model", "data", "stages", "widths", "curves", "provenance")
CURVE_OPTIONAL = ("val_top1", "masked_channels", "macs")


class ReportError(FxCompressError):
    """A run summary handed to the report writer is malformed (the message names the key)."""


def _fail(path: str, what: str) -> None:
    raise ReportError(f"report summary key {path}: {what}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _need(d: dict, key: str, path: str):
    if key not in d:
        _fail(f"{path}{key}", "missing" + ("" if path else f" (a summary has {', '.join(TOP_KEYS)})"))
    return d[key]


def _check_type(value, ok, path: str, expected: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not ok(value):
        _fail(path, f"expected {expected}{' or None' if allow_none else ''}, got {type(value).__name__} {value!r:.60}")


def _check_stage(stage, i: int) -> dict:
    path = f"stages[{i}]"
    _check_type(stage, lambda v: isinstance(v, dict), path, "a dict")
    for key in ("name", "params", "macs", "precision"):
        if key not in stage:
            _fail(f"{path}.{key}", "missing (a stage needs name, params, macs, precision)")
    _check_type(stage["name"], lambda v: isinstance(v, str) and v, f"{path}.name", "a non-empty string")
    for key in ("params", "macs"):
        _check_type(stage[key], lambda v: _is_int(v) and v >= 0, f"{path}.{key}", "a non-negative int")
    if stage["precision"] not in PRECISIONS:
        _fail(f"{path}.precision", f"expected one of {', '.join(PRECISIONS)}, got {stage['precision']!r}")
    top1 = stage.get("top1")
    _check_type(top1, lambda v: _is_number(v) and 0 <= v <= 1, f"{path}.top1", "a fraction in [0, 1]", True)
    onnx_bytes = stage.get("onnx_bytes")
    _check_type(onnx_bytes, lambda v: _is_int(v) and v > 0, f"{path}.onnx_bytes", "a positive int", True)
    latency = stage.get("latency_ms")
    _check_type(latency, lambda v: isinstance(v, dict), f"{path}.latency_ms", "a dict with b1 and b32", True)
    if latency is not None:
        for b in ("b1", "b32"):
            v = _need(latency, b, f"{path}.latency_ms.")
            _check_type(v, lambda x: _is_number(x) and 0 < x < math.inf, f"{path}.latency_ms.{b}",
                        "a positive finite number (ms)")
        latency = {"b1": float(latency["b1"]), "b32": float(latency["b32"])}
    return {"name": stage["name"], "top1": None if top1 is None else float(top1), "params": stage["params"],
            "macs": stage["macs"], "onnx_bytes": onnx_bytes, "precision": stage["precision"], "latency_ms": latency}


def _check_widths(widths) -> dict:
    if widths is None:
        return None
    _check_type(widths, lambda v: isinstance(v, dict), "widths", "a dict with layers, before, after", True)
    layers = _need(widths, "layers", "widths.")
    _check_type(layers, lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "widths.layers",
                "a list of layer names")
    out = {"layers": list(layers)}
    for key in ("before", "after"):
        values = _need(widths, key, "widths.")
        _check_type(values, lambda v: isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v),
                    f"widths.{key}", "a list of non-negative ints")
        if len(values) != len(layers):
            _fail(f"widths.{key}", f"has {len(values)} entries for {len(layers)} layers")
        out[key] = list(values)
    return out


def _check_curves(curves) -> dict:
    _check_type(curves, lambda v: isinstance(v, dict), "curves", "a dict of stage name -> list of points")
    out = {}
    for stage, points in curves.items():
        path = f"curves[{stage!r}]"
        _check_type(stage, lambda v: isinstance(v, str), path, "a stage name (str) as key")
        _check_type(points, lambda v: isinstance(v, list), path, "a list of points")
        clean = []
        for j, p in enumerate(points):
            _check_type(p, lambda v: isinstance(v, dict), f"{path}[{j}]", "a dict")
            point = {"epoch": _need(p, "epoch", f"{path}[{j}]."), "loss": _need(p, "loss", f"{path}[{j}].")}
            _check_type(point["epoch"], _is_int, f"{path}[{j}].epoch", "an int")
            _check_type(point["loss"], _is_number, f"{path}[{j}].loss", "a number")
            for key in CURVE_OPTIONAL:
                if p.get(key) is not None:
                    _check_type(p[key], _is_int if key != "val_top1" else _is_number, f"{path}[{j}].{key}",
                                "an int" if key != "val_top1" else "a number")
                    point[key] = p[key]
            clean.append(point)
        out[stage] = clean
    return out


def validate_summary(summary: Any) -> Dict[str, Any]:
    """A checked, normalised copy of `summary` (see the module docstring); ReportError names what is wrong."""
    _check_type(summary, lambda v: isinstance(v, dict), "(summary)", "a dict")
    for key in TOP_KEYS:
        _need(summary, key, "")
    for key in ("title", "model", "data"):
        _check_type(summary[key], lambda v: isinstance(v, str), key, "a string")
    for key in ("recipe", "provenance"):
        _check_type(summary[key], lambda v: isinstance(v, dict), key, "a dict")
    stages = summary["stages"]
    _check_type(stages, lambda v: isinstance(v, list) and v, "stages", "a non-empty list of stage dicts")
    clean_stages = [_check_stage(s, i) for i, s in enumerate(stages)]
    return {"title": summary["title"], "recipe": summary["recipe"], "model": summary["model"],
            "data": summary["data"], "stages": clean_stages, "widths": _check_widths(summary["widths"]),
            "curves": _check_curves(summary["curves"]), "provenance": summary["provenance"]}
