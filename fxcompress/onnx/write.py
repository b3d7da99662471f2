"""Writing a GraphModule to an ONNX file: torch's exporter, onnx.checker, an atomic write after a check.
The ExportONNX pass is built on this."""
from __future__ import annotations

import io
import os
import tempfile
import warnings
from typing import Callable, List, Optional, Sequence

import onnx
import torch

from ..core.errors import ExportError
from ..core.files import atomic_output
from .exportable import exportable

DEFAULT_OPSET = 17


def to_onnx_proto(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor], opset: Optional[int] = None,
                  dynamic_batch: bool = True, input_names: Optional[List[str]] = None) -> onnx.ModelProto:
    """Export with torch's TorchScript-based exporter: a single self-contained file, several times faster
    to export than the dynamo exporter with the same onnxruntime latency. `opset` None: DEFAULT_OPSET, or
    the first opset holding every op of the graph where that is higher."""
    module = module.eval()
    name = type(module).__name__
    # ops the exporter cannot take as traced (Unfold, adaptive pools, col2im with sizes it cannot read) are
    # rewritten on a copy of the graph, and col2im needs opset 18
    module, needed = exportable(module, example_inputs)
    opset = opset or max(DEFAULT_OPSET, needed or 0)
    input_names = input_names or [f"input{i}" if len(example_inputs) > 1 else "input" for i in range(len(example_inputs))]
    with torch.no_grad():
        n_out = len(_flat(module(*example_inputs)))
    output_names = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
    axes = {n: {0: "batch"} for n in input_names + output_names} if dynamic_batch else None
    kwargs = dict(opset_version=opset, input_names=input_names, output_names=output_names,
                  dynamic_axes=axes, do_constant_folding=True, dynamo=False)
    large = _tensor_bytes(module) > _PROTOBUF_LIMIT
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        try:
            if not large:
                buf = io.BytesIO()
                torch.onnx.export(module, tuple(example_inputs), buf, **kwargs)
                return onnx.load_from_string(buf.getvalue())
            # over protobuf's 2 GiB a file can only be written with its tensors beside it (external data);
            # read back, the model lives in memory whole (an INT8 lowering then brings it under the limit)
            path = os.path.join(tmp, "model.onnx")
            torch.onnx.export(module, tuple(example_inputs), path, **kwargs)
            return onnx.load(path)
        except Exception as e:
            raise ExportError(f"torch.onnx.export failed for {name}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from e


# protobuf cannot serialize a message of 2 GiB or more; with the graph itself, export stays well under
_PROTOBUF_MAX = 2 ** 31
_PROTOBUF_LIMIT = 1.8 * 2 ** 30


def _tensor_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def _flat(out):
    from ..core.verify import flatten_outputs
    return flatten_outputs(out)


def save_checked(proto: onnx.ModelProto, path: str, check: Optional[Callable[[str], dict]] = None) -> dict:
    """Check `proto` with onnx.checker, write it to a temp file, run `check(tmp_path)`, then rename onto path.
    Nothing is left at `path` if any step fails."""
    if proto.ByteSize() >= _PROTOBUF_MAX:
        raise ExportError(f"the ONNX model is {proto.ByteSize() / 2 ** 30:.1f} GiB, over protobuf's 2 GiB: one file "
                          f"cannot hold it (quantize it to INT8 first, a quarter of the size, or export a smaller "
                          f"model); {path} was not written")
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
