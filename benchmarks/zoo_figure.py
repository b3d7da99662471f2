"""Draws a zoo sweep's results (benchmarks/zoo_prune.py's JSON) as one figure: every model's fraction of
parameters removed against its size, coloured by outcome, and the count of each outcome.

    python benchmarks/zoo_figure.py                                   # timm: figs/zoo_timm.png
    python benchmarks/zoo_figure.py --results benchmarks/results/zoo_prune.json --out figs/zoo_torchvision.png

Reads only the results file: the figure shows what the sweep measured, nothing else.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from fxcompress.core.files import atomic_output  # noqa: E402


def outcome(row: dict, min_removed: float) -> str:
    """What a row's status and reason say, in a few words (the table has the full reason)."""
    if row["status"] == "ok":
        return "passed"
    reason = row.get("reason", "")
    if (row.get("params_removed") or 0) < min_removed and row.get("params_after"):
        return f"under {min_removed:.0%} removed"
    for key, label in (("ExportError", "ONNX export fails"), ("VerificationError", "not exact (caught)"),
                       ("TraceError", "does not trace"), ("Proxy(", "does not trace"), ("parity", "no ONNX parity")):
        if key in reason:
            return label
    return "other error"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=os.path.join(HERE, "results", "zoo_timm.json"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "figs", "zoo_timm.png"))
    args = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(args.results) as f:
        data = json.load(f)
    rows, min_removed = data["rows"], data.get("min_removed", 0.25)
    labels = [outcome(r, min_removed) for r in rows]
    order = ["passed"] + sorted({lab for lab in labels if lab != "passed"})
    colors = {lab: f"C{i}" for i, lab in enumerate(order)}
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [2.2, 1]})
    for lab in order:
        pts = [(r["params_before"] / 1e6, 100 * (r.get("params_removed") or 0)) for r, lb in zip(rows, labels)
               if lb == lab and r.get("params_before")]
        if pts:
            ax.scatter(*zip(*pts), s=14, color=colors[lab], label=lab)
    ax.axhline(100 * min_removed, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("parameters before pruning (M)")
    ax.set_ylabel("parameters removed (%)")
    ax.set_title(f"{data.get('source', '')}: {data['passed']} / {data['total']} pass "
                 f"({data.get('method', 'magnitude')}, ratio {data.get('ratio')})", fontsize=10)
    ax.legend(fontsize=7)
    counts = [labels.count(lab) for lab in order]
    bars.barh(order[::-1], counts[::-1], color=[colors[lab] for lab in order[::-1]])
    for i, c in enumerate(counts[::-1]):
        bars.text(c, i, f" {c}", va="center", fontsize=8)
    bars.set_xlabel("models")
    fig.tight_layout()
    with atomic_output(args.out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    print(f"{args.out}: " + ", ".join(f"{lab} {c}" for lab, c in zip(order, counts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
