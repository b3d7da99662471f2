"""The report's figures as PNG bytes, drawn with matplotlib's object API (a `Figure` on an Agg canvas: no
pyplot state, no backend switch for the caller). Each function takes the validated summary's parts and
returns None when there is nothing to draw (no latency measured, nothing pruned, nothing trained).

    png = accuracy_vs_latency(summary["stages"])   # bytes of a PNG, or None
"""
from __future__ import annotations

import io
from typing import Dict, List, Optional

PALETTE = {"fp32": "#4c72b0", "int8": "#dd8452"}
CURVE_PANELS = (("loss", "training loss", None), ("val_top1", "validation top-1", "percent"),
                ("masked_channels", "masked channels", None), ("macs", "MACs of the masked model", "macs"))


def new_figure(width: float, height: float):
    """A matplotlib Figure with its own Agg canvas (imported here: matplotlib loads only when drawing)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def accuracy_vs_latency(stages: List[dict]) -> Optional[bytes]:
    """Top-1 against onnxruntime latency, at batch 1 and batch 32, one point per stage."""
    points = [s for s in stages if s["top1"] is not None and s["latency_ms"] is not None]
    if not points:
        return None
    fig = new_figure(10, 4)
    axes = fig.subplots(1, 2)
    for ax, batch in zip(axes, ("b1", "b32")):
        xs = [s["latency_ms"][batch] for s in points]
        ys = [100 * s["top1"] for s in points]
        ax.plot(xs, ys, color="#999999", linewidth=1, zorder=1)   # stages in pipeline order
        for s, x, y in zip(points, xs, ys):
            ax.scatter([x], [y], s=60, color=PALETTE[s["precision"]], zorder=2, edgecolor="black", linewidth=0.5)
            ax.annotate(s["name"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.set_xlabel(f"onnxruntime latency at batch {batch[1:]} (ms)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"accuracy vs latency, batch {batch[1:]}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.margins(0.2)
    for precision, color in PALETTE.items():
        axes[1].scatter([], [], color=color, label=precision.upper(), edgecolor="black", linewidth=0.5)
    axes[1].legend(loc="lower right", fontsize=8)
    return to_png(fig)


def widths_before_after(widths: Optional[dict]) -> Optional[bytes]:
    """Output channels of every pruned layer, before and after."""
    if not widths or not widths["layers"]:
        return None
    layers, n = widths["layers"], len(widths["layers"])
    fig = new_figure(min(max(6.0, 0.28 * n + 2), 40.0), 4.5)
    ax = fig.subplots()
    xs = list(range(n))
    ax.bar([x - 0.2 for x in xs], widths["before"], width=0.4, color="#c6d4e6", label="before")
    ax.bar([x + 0.2 for x in xs], widths["after"], width=0.4, color="#4c72b0", label="after")
    ax.set_xticks(xs)
    ax.set_xticklabels(layers, rotation=90, fontsize=7 if n > 30 else 8)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("output channels")
    kept = sum(widths["after"]) / max(sum(widths["before"]), 1)
    ax.set_title(f"widths per layer ({kept:.0%} of the channels kept)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return to_png(fig)


def training_curves(stage: str, points: List[dict]) -> Optional[bytes]:
    """One stage's curves: loss, and where recorded validation top-1, masked channels and MACs (ResRep)."""
    from matplotlib.ticker import MaxNLocator

    if not points:
        return None
    panels = [p for p in CURVE_PANELS if any(key_in(pt, p[0]) for pt in points)]
    fig = new_figure(10.6, 3.0)   # one width for every stage: the curves of different stages line up
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, label, scale) in zip(axes, panels):
        rows = [(pt["epoch"], pt[key]) for pt in points if key_in(pt, key)]
        xs = [r[0] for r in rows]
        ys = [100 * r[1] if scale == "percent" else r[1] / 1e6 if scale == "macs" else r[1] for r in rows]
        ax.plot(xs, ys, marker="o", markersize=3, color="#4c72b0")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label + (" (%)" if scale == "percent" else " (M)" if scale == "macs" else ""))
        ax.grid(alpha=0.3)
    fig.suptitle(f"training curves: {stage}", fontsize=10)
    return to_png(fig)


def key_in(point: dict, key: str) -> bool:
    return point.get(key) is not None


def all_charts(summary: dict) -> Dict[str, Optional[bytes]]:
    """Every figure of the report, by caption (None where there is nothing to draw)."""
    charts = {"accuracy vs latency per stage": accuracy_vs_latency(summary["stages"]),
              "widths per layer, before and after pruning": widths_before_after(summary["widths"])}
    for stage, points in summary["curves"].items():
        charts[f"training curves: {stage}"] = training_curves(stage, points)
    return charts
