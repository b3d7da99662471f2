"""python -m fxcompress.export: a model (registry name, torchvision name or file.py:factory) to verified ONNX."""
from __future__ import annotations

import argparse
import os

import torch

from .common import parse_shape


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fxcompress.export", description=__doc__)
    p.add_argument("--model", required=True,
                   help="registry name (resnet20 ...), torchvision name (resnet18 ...) or path/to/file.py:factory")
    p.add_argument("--checkpoint", help="state dict to load (read with torch.load(weights_only=True))")
    p.add_argument("--input-shape", type=parse_shape, help="example input shape, e.g. 1,3,224,224 "
                   "(default: the registry's shape, else 1,3,224,224)")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=None)
    p.add_argument("--static-batch", action="store_true", help="fix the batch size instead of a dynamic axis")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime parity check")
    p.add_argument("--leaf", action="append", default=[], help="module name to keep as a leaf when tracing")
    p.add_argument("--report-json", help="also write the report as JSON here")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .. import compile
    from ..core.files import check_writable
    from ..models import INPUT_SHAPES, load_model
    from ..passes import CountFlops, ExportONNX

    check_writable(args.output)  # fail before any work
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
