"""python -m fxcompress.export: a model (registry name, torchvision name or file.py:factory) to verified ONNX;
with --recipe, the compressed model a recipe produces (its training, pruning, INT8) to verified ONNX.

    python -m fxcompress.export --model resnet18 --output r18.onnx
    python -m fxcompress.export --recipe digits --output digits_int8.onnx
    python -m fxcompress.export --recipe my.yaml --set pipeline.ResRep.epochs=5 --run-dir runs/my --output m.onnx
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import torch

from .common import parse_shape


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fxcompress.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model",
                        help="registry name (resnet20 ...), torchvision name (resnet18 ...) or path/to/file.py:factory")
    source.add_argument("--recipe", help="a recipe YAML file or shipped recipe name: export what it produces")
    p.add_argument("--checkpoint", help="state dict to load (read with torch.load(weights_only=True))")
    p.add_argument("--input-shape", type=parse_shape, help="example input shape, e.g. 1,3,224,224 "
                   "(default: the registry's shape, else 1,3,224,224)")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=None)
    p.add_argument("--static-batch", action="store_true", help="fix the batch size instead of a dynamic axis")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime parity check")
    p.add_argument("--leaf", action="append", default=[], help="module name to keep as a leaf when tracing")
    p.add_argument("--report-json", help="also write the report as JSON here")
    recipe = p.add_argument_group("with --recipe")
    recipe.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a recipe value, e.g. pipeline.ResRep.epochs=5")
    recipe.add_argument("--run-dir", help="keep the run (checkpoints, report) here, resumable with --resume "
                                          "(default: a temporary folder, removed afterwards)")
    recipe.add_argument("--resume", action="store_true", help="continue the interrupted run in --run-dir")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..core.files import check_writable
    check_writable(args.output)  # fail before any work
    if args.recipe:
        for flag in ("checkpoint", "input_shape", "report_json", "opset"):
            if getattr(args, flag):
                parser.error(f"--{flag.replace('_', '-')} is for --model; with --recipe, set it in the recipe "
                             f"(--set)")
        if args.resume and not args.run_dir:
            parser.error("--resume needs the --run-dir of the interrupted run")
        return export_recipe(args)
    from .. import compile
    from ..models import INPUT_SHAPES, load_model
    from ..passes import CountFlops, ExportONNX

    model = load_model(args.model, args.checkpoint).eval()
    shape = args.input_shape or INPUT_SHAPES.get(args.model, (1, 3, 224, 224))
    torch.manual_seed(0)
    result = compile(model, [CountFlops(), ExportONNX(args.output, args.opset, not args.static_batch,
                                                      not args.no_verify)],
                     example_inputs=(torch.randn(*shape),), leaf_modules=args.leaf, progress=False)
    print(result.report)
    if args.report_json:
        result.report.save_json(args.report_json)
    print(f"\nwrote {os.path.abspath(args.output)}")
    return 0


def export_recipe(args) -> int:
    """Run the recipe with its last ExportONNX writing --output (one is added if it has none)."""
    from ..recipes import load_recipe
    from ..recipes.schema import PASSES
    from .progress import progress_lines
    from .runner import run_recipe
    recipe = load_recipe(args.recipe, args.overrides)
    output = os.path.abspath(args.output)
    exports = [opts for name, opts in recipe.passes() if name == "ExportONNX"]
    if not exports:
        recipe.data["pipeline"].append({"ExportONNX": {k: o.default for k, o in PASSES["ExportONNX"].items()}})
        exports = [recipe.data["pipeline"][-1]["ExportONNX"]]
    exports[-1].update(path=output, dynamic_batch=not args.static_batch, verify=not args.no_verify)
    recipe.data["model"]["leaf"] += [leaf for leaf in args.leaf if leaf not in recipe.data["model"]["leaf"]]
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="fxcompress_export_")
    try:
        with progress_lines() as bars:
            outcome = run_recipe(recipe, run_dir, resume=args.resume, progress=bars)
    finally:
        if not args.run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
    print(f"\n{outcome.describe()}" if args.run_dir else f"\nwrote {output}")
    return 0
