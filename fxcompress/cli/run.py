"""python -m fxcompress run RECIPE [--set key=value ...] [--output DIR] [--resume]: run a compression recipe.

RECIPE is a YAML file or a shipped recipe's name (digits, cifar10_resnet20, torchvision_image_folder). The
recipe is checked before anything runs; OUT gets the ONNX files, report.{json,md,html}, the recipe as run
(recipe.yaml) and checkpoints/, from which --resume continues an interrupted run to the same result.

    python -m fxcompress run digits --output out/digits
    python -m fxcompress run my.yaml --set pipeline.ResRep.epochs=5 --set data.batch_size=64 --resume
"""
from __future__ import annotations

import argparse
import os

from .common import run_cli

DEFAULT_ROOT = "fxcompress_out"


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options `run` and `compress` share."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a recipe value (YAML), e.g. pipeline.ResRep.epochs=5, data.batch_size=64, "
                        "settings.device=cuda; repeatable")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in the output folder (same recipe) from its checkpoints")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fxcompress run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="a recipe YAML file or a shipped recipe name")
    p.add_argument("--output", "--out-dir", dest="output",
                   help=f"run folder (default: the recipe's `output`, else {DEFAULT_ROOT}/RECIPE_NAME)")
    add_run_options(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ..recipes import load_recipe
    from .progress import progress_lines
    from .runner import run_recipe
    recipe = load_recipe(args.recipe, args.overrides)
    stem = os.path.splitext(os.path.basename(args.recipe))[0]
    out = args.output or recipe.data["output"] or os.path.join(DEFAULT_ROOT, stem)
    with progress_lines() as bars:
        written = run_recipe(recipe, out, resume=args.resume, progress=bars).describe()
    if written:
        print("\n" + written)
    return 0


if __name__ == "__main__":
    run_cli("fxcompress run", main)
