"""ExportONNX: lower the current model to an ONNX file, checked by onnx.checker and verified in onnxruntime."""
from __future__ import annotations

import os
from typing import Optional

import torch

from fxcompress.onnx.runtime import ort_session, run_ort
from fxcompress.onnx.write import save_checked, to_onnx_proto
from fxcompress.core.pass_base import LoweringPass
from fxcompress.core.verify import TOLERANCES, compare_outputs


class ExportONNX(LoweringPass):
    """Write `path` atomically. With `verify`, onnxruntime's outputs on the example inputs (and, with
    `dynamic_batch`, on a batch of a different size) must match PyTorch's within tolerance, else
    VerificationError and no file is written."""

    def __init__(self, path: str, opset: Optional[int] = None, dynamic_batch: bool = True, verify: bool = True):
        self.path = os.fspath(path)
        self.opset = opset
        self.dynamic_batch = dynamic_batch
        self.verify = verify

    def output_path(self) -> str:
        return self.path

    def run(self, ctx) -> dict:
        gm = ctx.gm.eval()
        proto = to_onnx_proto(gm, ctx.example_inputs, self.opset, self.dynamic_batch)
        for rewrite in ctx.onnx_rewrites:
            proto = rewrite(proto)
        metrics = save_checked(proto, self.path, self._verify(ctx) if self.verify else None)
        ctx.add_artifact(self.path)
        return metrics

    def _verify(self, ctx):
        def check(tmp_path: str) -> dict:
            session = ort_session(tmp_path)
            batches = [ctx.example_inputs]
            if self.dynamic_batch:  # a second batch size proves the batch axis really is dynamic
                batches.append(tuple(torch.cat([t, t.flip(0) + 0.1 * torch.randn_like(t)]) if t.is_floating_point()
                                     else torch.cat([t, t]) for t in ctx.example_inputs))
            worst = {"max_abs_error": 0.0, "max_rel_error": 0.0}
            compare = ctx.export_tolerance.get("compare")  # set by inexact transforms such as quantization
            for inputs in batches:
                with torch.no_grad():
                    expected = ctx.gm(*inputs)
                got = [torch.from_numpy(a) for a in run_ort(session, inputs)]
                if compare is not None:
                    result = compare(got, expected)
                else:
                    result = compare_outputs(got, expected, TOLERANCES["onnx_fp32"], f"ONNX Runtime vs PyTorch ({self.path})")
                worst = {k: max(worst.get(k, 0.0), v) for k, v in result.items()}
            for extra_check in ctx.export_checks:  # registered by transforms, e.g. INT8 kernel checks
                worst.update(extra_check(tmp_path))
            return worst
        return check
