"""python -m fxcompress explain: the channel groups of a model, and why each that cannot be pruned cannot.

Prints one row per channel group (its layers, width, the share of the model's MACs in the layers whose width
it sets, prunable or the reason it is not, naming the op that blocks it) and writes a figure of the group
graph. `--layer NAME` shows only the groups holding that layer's channels: "why was this layer not pruned".
"""
from __future__ import annotations

import argparse
import json
import os
import re

import torch

from .common import parse_shape, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fxcompress explain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="registry name (resnet20 ...), torchvision name (resnet18 ...) or path/to/file.py:factory")
    p.add_argument("--checkpoint", help="state dict to load (read with torch.load(weights_only=True))")
    p.add_argument("--input-shape", type=parse_shape, help="example input shape, e.g. 1,3,224,224 "
                   "(default: the registry's shape, else 1,3,224,224)")
    p.add_argument("--leaf", action="append", default=[], help="module name to keep as a leaf when tracing")
    p.add_argument("--layer", help="show only the groups holding this module's channels (a name or part of one)")
    p.add_argument("--all", action="store_true",
                   help="also list the groups of kernel, spatial and batch dimensions (never pruned)")
    p.add_argument("--members", type=int, default=3, help="module names shown per group (default 3)")
    p.add_argument("--figure", help="where to write the group graph (.png, .svg or .pdf; default "
                   "<model>_groups.png); 'none' writes no figure")
    p.add_argument("--json", help="also write the rows as JSON here")
    return p


def default_figure_path(model: str) -> str:
    stem = os.path.splitext(os.path.basename(model.rpartition(":")[2] or model))[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) + "_groups.png"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ..core.errors import PassError
    from ..core.files import atomic_write_text, check_writable
    from ..core.report import human
    from ..models import INPUT_SHAPES, load_model
    from ..reporting.channel_groups import explain_model, groups_markdown, rows_for_layer

    figure = None if (args.figure or "").lower() == "none" else args.figure or default_figure_path(args.model)
    for path in (figure, args.json):   # fail before any work
        if path:
            check_writable(path)
    if args.members < 1:
        raise PassError(f"--members must be at least 1, got {args.members}")
    model = load_model(args.model, args.checkpoint).eval()
    shape = args.input_shape or INPUT_SHAPES.get(args.model, (1, 3, 224, 224))
    torch.manual_seed(0)
    explained = explain_model(model, (torch.randn(*shape),), leaf_modules=args.leaf)

    rows = explained.rows if args.all else explained.channel_rows()
    if args.layer:
        rows = rows_for_layer(rows, args.layer)
        if not rows:
            modules = sorted({m for r in explained.rows for m in r.modules})
            raise PassError(f"--layer {args.layer!r}: no channel group holds a module of that name; modules with "
                            f"channels: {', '.join(modules[:12])}{' ...' if len(modules) > 12 else ''}")
    print(f"## channel groups of {args.model} (input {tuple(shape)}, {human(explained.macs)} MACs, "
          f"{human(explained.params)} parameters)\n")
    print(explained.headline() + "\n")
    print(groups_markdown(rows, args.members))
    print("\nMACs share: the model's MACs in the layers whose width the group sets (a layer counts for its input "
          "and its output channels, so the shares add up to more than 100 %).")
    fixed = explained.largest_fixed()
    if fixed and not args.layer:
        print("\nfixed groups with the largest MACs share (what to fix first):")
        for r in fixed:
            print(f"- group {r.id} ({r.width} channels of {', '.join(r.modules[:2]) or 'no layer'}, "
                  f"{r.macs_share:.1%} of the MACs): {r.reason}")
    if figure:
        from ..reporting.group_graph import group_graph_figure, save_figure
        print(f"\nwrote {save_figure(group_graph_figure(explained, title=args.model), figure)}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"model": args.model, "input_shape": list(shape),
                                                 "macs": explained.macs, "params": explained.params,
                                                 "groups": [r.to_dict() for r in rows]}, indent=2))
        print(f"wrote {os.path.abspath(args.json)}")
    return 0


if __name__ == "__main__":
    run_cli("fxcompress explain", main)
