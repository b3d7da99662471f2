"""Draws figs/dataflow.png: how fxcompress is built (python figs/dataflow.py; needs matplotlib)."""
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

BOXES = {  # name: (x, y, w, h, title, body)
    "model": (0.2, 8.4, 2.6, 1.0, "nn.Module", "the user's model\n(never modified)"),
    "graph": (3.6, 8.4, 3.0, 1.0, "graph/", "tracing, shapes (meta),\nValueKey, MACs"),
    "core": (7.4, 8.4, 3.6, 1.0, "core/", "compile, PassManager, PassContext\n(cached analyses), verify, report"),
    "ops": (3.6, 5.9, 3.0, 1.6, "ops/  (one module per op family)",
            "conv, linear, norm, elementwise,\npooling, reduction, reshape,\nindexing, matmul, attention, embedding\n"
            "rules: MACS COUPLING RESIZE QUANT BN_FOLD"),
    "analysis": (0.2, 3.6, 3.2, 1.6, "analyses", "ChannelGroups -> prune/\n(builder, coupling, probe)\n"
                 "CountFlops, ShapeAnalysis\ncached in the context"),
    "transform": (4.0, 3.6, 3.6, 1.6, "transforms", "MagnitudePrune, PruneChannels -> prune/\n"
                  "FoldBatchNorm -> fold/\nQuantizeINT8 -> quant/\nFineTune -> train/"),
    "lowering": (8.2, 3.6, 2.8, 1.6, "lowering", "ExportONNX -> onnx/\n(+ quant/lower, quant/check\nwhen the graph "
                 "carries\nfake-quant modules)"),
    "result": (3.6, 1.0, 3.8, 1.1, "CompileResult", "model (GraphModule), report,\nverified ONNX artefacts"),
}
ARROWS = [("model", "graph", "trace"), ("graph", "core", ""), ("ops", "graph", "MACs"),
          ("core", "analysis", ""), ("core", "transform", ""), ("core", "lowering", "  passes, in order"),
          ("ops", "analysis", "coupling"), ("ops", "transform", "resize, quant, fold"),
          ("analysis", "transform", "declared analyses"), ("transform", "lowering", "the graph"),
          ("transform", "result", "checked: shapes,\nexactness"), ("lowering", "result", "checked in\nonnxruntime")]


def center(name, side):
    x, y, w, h = BOXES[name][:4]
    return {"top": (x + w / 2, y + h), "bottom": (x + w / 2, y), "left": (x, y + h / 2), "right": (x + w, y + h / 2)}[side]


def main(path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "dataflow.png")):
    fig, ax = plt.subplots(figsize=(11, 8.2))
    colors = {"model": "#eeeeee", "graph": "#dbe9f6", "core": "#dbe9f6", "ops": "#fde9c9", "analysis": "#e2f0d9",
              "transform": "#e2f0d9", "lowering": "#e2f0d9", "result": "#eeeeee"}
    for name, (x, y, w, h, title, body) in BOXES.items():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=colors[name], ec="#555555"))
        ax.text(x + w / 2, y + h - 0.18, title, ha="center", va="top", fontsize=10, weight="bold")
        ax.text(x + w / 2, y + h - 0.45, body, ha="center", va="top", fontsize=8)
    for a, b, label in ARROWS:
        ya, yb = BOXES[a][1], BOXES[b][1]
        if abs(ya - yb) < 0.5:
            pa, pb = (center(a, "right"), center(b, "left")) if BOXES[a][0] < BOXES[b][0] else \
                (center(a, "left"), center(b, "right"))
        else:
            pa, pb = (center(a, "bottom"), center(b, "top")) if ya > yb else (center(a, "top"), center(b, "bottom"))
        ax.add_patch(FancyArrowPatch(pa, pb, arrowstyle="-|>", mutation_scale=12, color="#333333", lw=1))
        if label:
            ax.text((pa[0] + pb[0]) / 2 + 0.05, (pa[1] + pb[1]) / 2, label, fontsize=7.5, color="#333333")
    ax.set_xlim(0, 11.2)
    ax.set_ylim(0.6, 9.6)
    ax.axis("off")
    ax.set_title("fxcompress: model -> graph -> analyses -> transforms -> artefacts (imports point the same way)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
