"""A figure of the channel-group graph: groups as nodes in model order, a layer as an edge from the group
of its input channels to the group of its output channels (an arc above the line when the layer reads an
earlier group, below when it writes back into one, as a residual stream does). Green nodes are prunable,
red ones fixed, with their reasons listed under the plot; a node's area is its MACs share.

    png = group_graph_png(explain_model(model, (x,)), title="resnet50")
    save_figure(png_or_fig, "resnet50_groups.png")
"""
from __future__ import annotations

import math
import os
import textwrap
from typing import Dict, List, Set, Tuple

from ..core.files import atomic_output
from .channel_groups import GroupRow, GroupsExplanation
from .charts import new_figure

PRUNABLE, FIXED = "#55a868", "#c44e52"


def layer_edges(explained: GroupsExplanation) -> List[Tuple[int, int, str]]:
    """(input-channel group, output-channel group, layer) for every weight whose dims 1 and 0 lie in channel
    groups (each pair once)."""
    shown = {r.id for r in explained.channel_rows()}
    groups_of: Dict[tuple, Set[int]] = {}
    for g in explained.result.groups:
        if g.id in shown:
            for m in g.param_members():
                if m.dim in (0, 1) and len(explained.result.shapes.get(m.key, ())) >= 2:
                    groups_of.setdefault((m.name, m.dim), set()).add(g.id)
    edges, seen = [], set()
    for (name, dim), outs in sorted(groups_of.items()):
        if dim != 0:
            continue
        for a in sorted(groups_of.get((name, 1), ())):
            for b in sorted(outs):
                if a != b and (a, b) not in seen:
                    seen.add((a, b))
                    edges.append((a, b, name.rsplit(".", 1)[0]))
    return edges


def _fixed_notes(rows: List[GroupRow], limit: int = 10) -> List[str]:
    fixed = [r for r in rows if not r.prunable]
    notes = [f"group {r.id} ({r.width} ch.): {r.reason[:110]}" for r in fixed[:limit]]
    if len(fixed) > limit:
        notes.append(f"... and {len(fixed) - limit} more fixed groups: see the table")
    return notes


def group_graph_figure(explained: GroupsExplanation, title: str = ""):
    """The matplotlib Figure of the group graph (see the module docstring)."""
    from matplotlib.patches import Arc

    rows = explained.channel_rows()
    x_of = {r.id: i for i, r in enumerate(rows)}
    edges = [(a, b, layer) for a, b, layer in layer_edges(explained) if a in x_of and b in x_of]
    notes = _fixed_notes(rows)
    n = max(len(rows), 1)
    span = max([abs(x_of[a] - x_of[b]) for a, b, _ in edges] or [1])
    backward = any(x_of[a] > x_of[b] for a, b, _ in edges)
    fig = new_figure(min(max(8.0, 0.16 * n + 2), 40.0), (5.2 if backward else 3.9) + 0.2 * len(notes))
    ax = fig.subplots()
    for a, b, _ in edges:
        xa, xb = x_of[a], x_of[b]
        d = abs(xb - xa)
        # an arc's height grows with the distance it spans (flat ones where every layer links neighbours);
        # forward edges (reading an earlier group) above the line, backward ones below
        height = 0.4 if span <= 3 else 0.15 + 0.85 * d / span
        theta = (0, 180) if xa < xb else (180, 360)
        ax.add_patch(Arc(((xa + xb) / 2, 0), d, 2 * height, theta1=theta[0], theta2=theta[1],
                         color="#4c72b0" if xa < xb else "#8172b3", alpha=0.35, linewidth=0.8))
    sizes = [20 + 600 * math.sqrt(max(r.macs_share, 0.0)) for r in rows]
    ax.scatter(range(len(rows)), [0] * len(rows), s=sizes, c=[PRUNABLE if r.prunable else FIXED for r in rows],
               edgecolors="black", linewidths=0.5, zorder=3)
    step = max(1, len(rows) // 60)   # label every group on small models, every step-th on large ones
    for i, r in enumerate(rows):
        if i % step == 0 or not r.prunable:
            ax.annotate(str(r.id), (i, 0), textcoords="offset points", xytext=(0, -14), ha="center", va="top",
                        fontsize=6 if n > 40 else 8, color=FIXED if not r.prunable else "black", zorder=4)
    ax.set_xlim(-1, n)
    ax.set_ylim(-1.1 if backward else -0.3, 1.1)
    ax.set_yticks([])
    ax.set_xticks([])
    ax.set_xlabel("channel groups in model order (number: group id, as in the table)")
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    prunable = sum(r.prunable for r in rows)
    legend = ("arcs: layers, from the group of their input channels to that of their output channels (above: to a "
              "later group, below: back into an earlier one); area: MACs share")
    ax.set_title(f"{title + ': ' if title else ''}channel groups, {prunable} of {len(rows)} prunable\n"
                 + "\n".join(textwrap.wrap(legend, int(fig.get_figwidth() * 14))), fontsize=9, loc="left")
    ax.scatter([], [], c=PRUNABLE, label="prunable", edgecolors="black", linewidths=0.5)
    ax.scatter([], [], c=FIXED, label="fixed", edgecolors="black", linewidths=0.5)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    if notes:
        fig.text(0.01, 0.005, "fixed groups:\n" + "\n".join(notes), fontsize=7, va="bottom", ha="left",
                 family="monospace")
        fig.get_layout_engine().set(rect=(0, 0.04 + 0.032 * len(notes), 1, 1 - 0.04 - 0.032 * len(notes)))
    return fig


def save_figure(fig, path: str, dpi: int = 110) -> str:
    """Save a matplotlib Figure whole or not at all; the format follows the extension (png, svg, pdf)."""
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    with atomic_output(path, suffix=f".{fmt}") as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return os.path.abspath(path)
