"""Draws the README's three diagrams into figs/ (python figs/make_figs.py; needs matplotlib):

    overview.png      what the tool does: a model in, a slimmer, verified INT8 ONNX file and a report out
    architecture.png  how it is built: tracing -> analyses -> transforms -> lowering, and the folders of each
    workflow.png      the workflow: prune, distil, quantize, alone or combined

Diagrams only: no measured figure is drawn here (those come from the benchmarks' results files).
"""
from __future__ import annotations

import argparse
import os
import sys

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))   # fxcompress from this checkout: its atomic writer
from fxcompress.core.files import atomic_output  # noqa: E402

COLORS = {"input": "#eeeeee", "graph": "#dbe9f6", "analysis": "#e2f0d9", "transform": "#fde9c9",
          "lowering": "#e8dff5", "core": "#f2f2f2", "prune": "#cfe8cf", "distill": "#e3d7f3", "quant": "#fbd9b5",
          "export": "#d9d9d9", "output": "#fff2cc"}


def canvas(width: float, height: float, xmax: float, ymax: float):
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, ymax)
    ax.axis("off")
    return fig, ax


def box(ax, x, y, w, h, title, body="", color="#eeeeee", title_size=10, body_size=8):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.04,rounding_size=0.12", fc=color, ec="#555555",
                                linewidth=1))
    if body:
        ax.text(x + w / 2, y + h - 0.14, title, ha="center", va="top", fontsize=title_size, weight="bold")
        ax.text(x + w / 2, y + h - 0.46, body, ha="center", va="top", fontsize=body_size, linespacing=1.35)
    else:
        ax.text(x + w / 2, y + h / 2, title, ha="center", va="center", fontsize=title_size, weight="bold")


def arrow(ax, start, end, label="", color="#444444", rad=0.0, size=8):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color=color, linewidth=1.3,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=2, shrinkB=2))
    if label:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, label, ha="center", va="bottom",
                fontsize=size, color="#333333")


def layer_bars(ax, x, y, widths, color, height=0.22, gap=0.08, scale=0.035):
    """A network drawn as a stack of layers, each as wide as its channel count."""
    for i, w in enumerate(widths):
        ax.add_patch(Rectangle((x - w * scale / 2, y + i * (height + gap)), w * scale, height, fc=color,
                               ec="#555555", linewidth=0.6))


def overview():
    fig, ax = canvas(13.4, 4.9, 13.4, 4.9)
    ax.text(0.2, 4.75, "What fxcompress does", fontsize=13, weight="bold", va="top")
    widths = [16, 32, 32, 64, 64, 48, 24]
    box(ax, 0.2, 0.85, 2.6, 3.4, "", color=COLORS["input"])
    layer_bars(ax, 1.5, 1.6, widths, "#9db9dc")
    ax.text(1.5, 4.1, "your model", ha="center", va="top", fontsize=10, weight="bold")
    ax.text(1.5, 1.45, "nn.Module + checkpoint\nFP32, every channel", ha="center", va="top", fontsize=8)
    box(ax, 0.2, 0.15, 2.6, 0.45, "+ images (folder, CIFAR-10, digits)", color="#ffffff", title_size=8)

    steps = [("trace", "torch.fx graph"), ("prune", "ResRep / magnitude:\nwhole channel groups"),
             ("distil", "KD / IRG / VID from\nthe original model"), ("quantize", "INT8, KL-calibrated\nfake-quant"),
             ("lower", "ONNX, checked in\nonnxruntime")]
    colors = [COLORS["graph"], COLORS["prune"], COLORS["distill"], COLORS["quant"], COLORS["export"]]
    x0, w, gap = 3.45, 1.25, 0.2
    inner = len(steps) * (w + gap) - gap
    box(ax, x0 - 0.2, 0.85, inner + 0.4, 3.4, "", color="#fafafa")
    ax.text(x0 + inner / 2, 4.1, "fxcompress  (python -m fxcompress run recipe.yaml)", ha="center", va="top",
            fontsize=10, weight="bold")
    for i, ((title, body), color) in enumerate(zip(steps, colors)):
        x = x0 + i * (w + gap)
        box(ax, x, 2.0, w, 1.25, title, body, color=color, body_size=7)
        if i:
            arrow(ax, (x - gap, 2.62), (x, 2.62))
    ax.text(x0 + inner / 2, 1.45, "every transform verified numerically:\nshapes, exactness where claimed, "
            "onnxruntime parity", ha="center", va="center", fontsize=8, style="italic")
    arrow(ax, (2.85, 2.62), (x0 - 0.25, 2.62))
    right = x0 + inner + 0.55
    arrow(ax, (x0 + inner + 0.25, 2.62), (right - 0.05, 2.62))
    box(ax, right, 0.85, 2.6, 3.4, "", color=COLORS["output"])
    layer_bars(ax, right + 1.3, 1.6, [max(8, int(v * 0.6)) for v in widths], "#f0a868")
    ax.text(right + 1.3, 4.1, "compressed.onnx", ha="center", va="top", fontsize=10, weight="bold")
    ax.text(right + 1.3, 1.45, "fewer channels, INT8 kernels\nverified against PyTorch", ha="center", va="top",
            fontsize=8)
    box(ax, right, 0.15, 2.6, 0.45, "+ report.html / .md / .json", color="#ffffff", title_size=8)
    return fig


ARCH_COLUMNS = [  # (title, colour, passes, folders)
    ("tracing", "graph", "compile(model, passes, x)", "graph/  capture, tracing,\nshapes (meta), keys, MACs\n"
                                                      "canonical forms (timm layers)"),
    ("analyses", "analysis", "ChannelGroups\nCountFlops, ShapeAnalysis", "prune/  builder, coupling,\nprobe, groups"),
    ("transforms", "transform", "MagnitudePrune, ResRep,\nPruneChannels, Distill, FineTune,\n"
                                "FoldBatchNorm, QuantizeINT8",
     "prune/ (+ resrep/), distill/,\ntrain/, fold/, quant/"),
    ("lowering", "lowering", "ExportONNX", "onnx/  write, runtime, measure\nquant/  lower, check, codes"),
]


def architecture():
    fig, ax = canvas(12.5, 6.0, 12.5, 6.0)
    ax.text(0.2, 5.85, "How fxcompress is built", fontsize=13, weight="bold", va="top")
    w, gap, x0 = 2.7, 0.35, 0.35
    top, h = 5.05, 2.05   # the columns' top edge and height
    for i, (title, color, passes, folders) in enumerate(ARCH_COLUMNS):
        x = x0 + i * (w + gap)
        box(ax, x, top - h, w, h, "", color=COLORS[color])
        ax.text(x + w / 2, top - 0.15, title, ha="center", va="top", fontsize=11, weight="bold")
        ax.text(x + w / 2, top - 0.5, passes, ha="center", va="top", fontsize=8, linespacing=1.35)
        ax.plot([x + 0.15, x + w - 0.15], [top - 1.2, top - 1.2], color="#999999", linewidth=0.6)
        ax.text(x + w / 2, top - 1.3, folders, ha="center", va="top", fontsize=7.5, family="monospace",
                linespacing=1.35)
        if i:
            arrow(ax, (x - gap + 0.02, top - h / 2), (x - 0.02, top - h / 2))
    ax.text(x0 + w / 2 + 0.1, 5.3, "nn.Module", ha="left", va="center", fontsize=8)
    arrow(ax, (x0 + w / 2, 5.45), (x0 + w / 2, top + 0.05))
    end = x0 + 4 * w + 3 * gap
    box(ax, x0, 1.75, end - x0, 0.85, "core/", "compile, PassManager (runs the passes: requirements, cached analyses, "
        "invalidation), verify after every transform (shapes; exactness where claimed), report", color=COLORS["core"])
    box(ax, x0, 0.55, end - x0, 0.85, "ops/  one module per op family",
        "conv, linear, norm, elementwise, pooling, reduction, reshape, indexing, matmul, attention, embedding: "
        "the rules every pass looks up (MACS, COUPLING, RESIZE, QUANT, BN_FOLD)", color="#fff7e0")
    for i in range(4):
        xc = x0 + i * (w + gap) + w / 2
        arrow(ax, (xc, 2.6), (xc, top - h - 0.03), color="#888888")
    ax.text(x0, 0.2, "front ends:  cli/ (export, explain, run, compress)   recipes/ (YAML)   reporting/ "
            "(report.html, explain's table and graph)   models/, data/ (registries, loaders)", fontsize=8,
            family="monospace")
    return fig


WORKFLOWS = [  # (label, [(pass, kind)], what it gives)
    ("prune", [("MagnitudePrune / ResRep", "prune"), ("FineTune", "prune"), ("ExportONNX", "export")],
     "fewer channels, fewer MACs"),
    ("distil", [("Distill(kd | irg | vid)", "distill"), ("ExportONNX", "export")],
     "a student trained on the teacher"),
    ("quantize", [("FoldBatchNorm", "quant"), ("QuantizeINT8(kl)", "quant"), ("ExportONNX", "export")],
     "INT8 weights and kernels"),
    ("combined", [("ResRep", "prune"), ("Distill(kd)", "distill"), ("FoldBatchNorm", "quant"),
                  ("QuantizeINT8(kl)", "quant"), ("ExportONNX", "export")],
     "all three, teacher = the original"),
]


def workflow():
    fig, ax = canvas(14, 5.1, 14, 5.1)
    ax.text(0.2, 4.95, "The workflow: prune, distil, quantize, alone or combined", fontsize=13, weight="bold",
            va="top")
    w, gap, x0 = 1.62, 0.28, 1.45
    for row, (label, steps, gives) in enumerate(WORKFLOWS):
        y = 3.55 - row * 0.95
        ax.text(0.25, y + 0.3, label, fontsize=10, weight="bold", va="center")
        for i, (name, kind) in enumerate(steps):
            x = x0 + i * (w + gap)
            box(ax, x, y, w, 0.6, name, color=COLORS[kind], title_size=7.5)
            if i:
                arrow(ax, (x - gap + 0.02, y + 0.3), (x - 0.02, y + 0.3))
        ax.text(x0 + 5 * (w + gap) + 0.05, y + 0.3, gives, fontsize=8.5, va="center", style="italic")
    for i, (kind, text) in enumerate((("prune", "pruning"), ("distill", "distillation"), ("quant", "quantization"),
                                      ("export", "lowering"))):
        ax.add_patch(Rectangle((x0 + i * 2.3, 0.2), 0.3, 0.22, fc=COLORS[kind], ec="#555555"))
        ax.text(x0 + i * 2.3 + 0.4, 0.31, text, fontsize=8, va="center")
    ax.text(x0 + 9.3, 0.31, "each row is one pass list: a recipe or compile(...)", fontsize=8, va="center",
            color="#555555")
    return fig


FIGURES = {"overview.png": overview, "architecture.png": architecture, "workflow.png": workflow}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=HERE, help="where the PNGs go (default: this folder)")
    args = p.parse_args(argv)
    for name, draw in FIGURES.items():
        path = os.path.join(args.out_dir, name)
        with atomic_output(path, suffix=".png") as tmp:
            draw().savefig(tmp, format="png", dpi=110)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
