"""python -m fxcompress compress: a recipe from flags, no file. Prune (ResRep or magnitude + training) to a
MACs target, distil from the input model, quantize to INT8, write a verified ONNX file and the report;
the recipe it ran is written beside them (OUT/recipe.yaml: `python -m fxcompress run OUT/recipe.yaml`
reruns it), and --resume continues an interrupted run.

    python -m fxcompress compress --model resnet20 --checkpoint r20.pt --data cifar10 --prune resrep \\
        --target-macs 0.5 --distill kd --int8 kl --epochs 30 --output out/r20
    python -m fxcompress compress --model small_cnn --pretrain-epochs 8 --data digits --epochs 10 \\
        --set pipeline.ResRep.mask_interval=4 --output out/digits
"""
from __future__ import annotations

import argparse
import os

from .common import run_cli
from .run import DEFAULT_ROOT, add_run_options

FLAGS = {  # recipe path -> the flag that set it, for error messages
    ("model", "name"): "--model", ("model", "checkpoint"): "--checkpoint", ("model", "num_classes"): "--num-classes",
    ("model", "pretrain"): "--pretrain-epochs", ("data",): "--data", ("data", "image_size"): "--image-size",
    ("data", "batch_size"): "--batch-size", ("settings", "device"): "--device", ("settings", "seed"): "--seed",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fxcompress compress", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="registry name, torchvision name or path/to/file.py:factory")
    p.add_argument("--checkpoint", help="the model's trained weights (a state dict)")
    p.add_argument("--num-classes", type=int, help="classes of the model's head, when not its default")
    p.add_argument("--pretrain-epochs", type=int, default=0, help="train the model first (no checkpoint)")
    p.add_argument("--data", required=True,
                   help="cifar10, digits, or an image folder / .tar of one (train/<class>/<image>, val/...)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("W", "H"), help="resize images (image folders)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--prune", default="resrep", choices=("resrep", "magnitude", "none"))
    p.add_argument("--target-macs", type=float, default=0.5, help="fraction of the MACs to keep (default 0.5)")
    p.add_argument("--distill", default="kd", choices=("kd", "irg", "vid", "none"),
                   help="distil from the input model after pruning (default kd)")
    p.add_argument("--distill-nodes", default="", help="comma-separated layers to match (vid needs them)")
    p.add_argument("--int8", default="kl", choices=("kl", "minmax", "percentile", "none"))
    p.add_argument("--epochs", type=int, default=10, help="epochs of each training stage (default 10)")
    p.add_argument("--lr", type=float, default=0.01, help="learning rate of pruning / fine-tuning (default 0.01)")
    p.add_argument("--distill-lr", type=float, help="learning rate of distillation (default: lr / 10)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", "--out-dir", dest="output", default=os.path.join(DEFAULT_ROOT, "compress"),
                   help=f"run folder (default {DEFAULT_ROOT}/compress)")
    add_run_options(p)
    return p


def _pipeline(args, lines: dict) -> list:
    """The passes the flags ask for, with the flag behind each option noted for error messages."""
    stages = []

    def add(name, flags=None, **options):
        i = len(stages)
        stages.append({name: options})
        lines[("pipeline", i)] = f"--{args.prune if name in ('ResRep', 'MagnitudePrune') else name.lower()}"
        for option, flag in (flags or {}).items():
            lines[("pipeline", i, name, option)] = flag

    trained = {"epochs": "--epochs", "lr": "--lr"}
    if args.prune == "resrep":
        add("ResRep", {"target_macs": "--target-macs", **trained}, target_macs=args.target_macs, epochs=args.epochs,
            lr=args.lr, seed=args.seed)
    elif args.prune == "magnitude":
        add("MagnitudePrune", {"target_macs": "--target-macs"}, target_macs=args.target_macs)
    if args.distill != "none":
        nodes = [n for n in args.distill_nodes.split(",") if n]
        add("Distill", {"losses": "--distill", "student_nodes": "--distill-nodes", "epochs": "--epochs",
                        "lr": "--distill-lr"}, losses=[args.distill], student_nodes=nodes, epochs=args.epochs,
            lr=args.distill_lr or args.lr / 10, seed=args.seed)
    elif args.prune == "magnitude":
        add("FineTune", trained, epochs=args.epochs, lr=args.lr, seed=args.seed)
    if args.int8 != "none":
        add("FoldBatchNorm")
        add("QuantizeINT8", {"method": "--int8"}, method=args.int8)
    add("ExportONNX", path="compressed.onnx")
    return stages


def recipe_data(args) -> tuple:
    """(raw recipe, locations) from the flags; validated like a file."""
    lines = dict(FLAGS)
    kinds = {"cifar10": {"kind": "cifar10"}, "digits": {"kind": "digits"}}
    data = dict(kinds.get(args.data) or {"kind": "image_folder", "path": args.data})
    lines[("data", "path")] = "--data"
    if args.image_size:
        data["image_size"] = list(args.image_size)
    if args.batch_size:
        data["batch_size"] = args.batch_size
    model = {"name": args.model, "checkpoint": args.checkpoint, "num_classes": args.num_classes}
    if args.pretrain_epochs:
        model["pretrain"] = {"epochs": args.pretrain_epochs, "seed": args.seed}
    raw = {"title": f"{os.path.basename(args.model)} on {os.path.basename(args.data.rstrip('/'))}, compressed",
           "model": model, "data": data, "pipeline": _pipeline(args, lines),
           "settings": {"device": args.device, "seed": args.seed}}
    return raw, lines


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ..recipes import recipe_from_data
    from .progress import progress_lines
    from .runner import run_recipe
    raw, lines = recipe_data(args)
    recipe = recipe_from_data(raw, lines, "compress", os.getcwd(), args.overrides)
    with progress_lines() as bars:
        written = run_recipe(recipe, args.output, resume=args.resume, progress=bars).describe()
    if written:
        print("\n" + written)
    return 0


if __name__ == "__main__":
    run_cli("fxcompress compress", main)
