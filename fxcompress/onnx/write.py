"""Writing a GraphModule to an ONNX file: torch's exporter, onnx.checker, an atomic write after a check.
The ExportONNX pass is built on this."""
from __future__ import annotations

import io
import warnings
from typing import Callable, List, Optional, Sequence

import onnx
import torch

from ..core.errors import ExportError
from ..core.files import atomic_output

DEFAULT_OPSET = 17


def to_onnx_proto(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor], opset: Optional[int] = None,
                  dynamic_batch: bool = True, input_names: Optional[List[str]] = None) -> onnx.ModelProto:
    """Export with torch's TorchScript-based exporter: a single self-contained file, several times faster
    to export than the dynamo exporter with the same onnxruntime latency."""
    module = module.eval()
    input_names = input_names or [f"input{i}" if len(example_inputs) > 1 else "input" for i in range(len(example_inputs))]
    with torch.no_grad():
        n_out = len(_flat(module(*example_inputs)))
    output_names = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
    axes = {n: {0: "batch"} for n in input_names + output_names} if dynamic_batch else None
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, tuple(example_inputs), buf, opset_version=opset or DEFAULT_OPSET,
                              input_names=input_names, output_names=output_names, dynamic_axes=axes,
                              do_constant_folding=True, dynamo=False)
        except Exception as e:
            raise ExportError(f"torch.onnx.export failed for {type(module).__name__}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from e
    return onnx.load_from_string(buf.getvalue())


def _flat(out):
    from ..core.verify import flatten_outputs
    return flatten_outputs(out)


def save_checked(proto: onnx.ModelProto, path: str, check: Optional[Callable[[str], dict]] = None) -> dict:
    """Check `proto` with onnx.checker, write it to a temp file, run `check(tmp_path)`, then rename onto path.
    Nothing is left at `path` if any step fails."""
    try:
        onnx.checker.check_model(proto, full_check=False)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"onnx.checker rejected the exported model: {str(e).splitlines()[0]}") from e
    with atomic_output(path, suffix=".onnx") as tmp:
        try:
            onnx.save_model(proto, tmp)
        except OSError as e:
            raise ExportError(f"cannot write {path}: {e}") from e
        return check(tmp) if check else {}
