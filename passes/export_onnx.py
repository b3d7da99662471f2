"""ExportONNX: lower the current model to an ONNX file, checked by onnx.checker and verified in onnxruntime."""
from __future__ import annotations

import os
from typing import Optional

import torch

from fxcompress.core.pass_base import LoweringPass
from fxcompress.core.verify import TOLERANCES, compare_outputs
from fxcompress.onnx.runtime import ort_session, run_ort
from fxcompress.onnx.write import save_checked, to_onnx_proto
from fxcompress.quant.check import check_int8_export, held_out_batches, quantized_layers
from fxcompress.quant.fake_quant import is_quantized
from fxcompress.quant.lower import lower_int8


class ExportONNX(LoweringPass):
    """Write `path` atomically; with `verify`, nothing is written unless onnxruntime computes what the model
    computes, on the example inputs and (with `dynamic_batch`) on a batch of another size:
    - a float model: relative error below TOLERANCES["onnx_fp32"];
    - a fake-quant model (after QuantizeINT8, read from the graph itself): a genuinely INT8 file, every
      quantized layer in an integer kernel of onnxruntime's optimized graph, and, quantizer by quantizer,
      onnxruntime's codes those of the fake-quant model given onnxruntime's own inputs (at most one step
      apart, on at most TOLERANCES["int8_code_flip_fraction"] of a quantizer's codes), on the first
      held-out batch of val_loader when there is one; end-to-end SNRs on up to 64 held-out samples are
      reported (see fxcompress.quant.check).

        fxcompress.compile(model, [FoldBatchNorm(), QuantizeINT8(), ExportONNX("model.onnx")], x,
                           calib_loader=calib, val_loader=val)
    """

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
        folded = {}   # int8 initializer -> the float weight it replaces
        int8 = is_quantized(gm)
        if int8:
            proto = lower_int8(proto, folded)
        check = (self._int8_check(ctx, folded, proto) if int8 else self._float_check(ctx)) if self.verify else None
        metrics = save_checked(proto, self.path, check)
        ctx.add_artifact(self.path)
        return metrics

    def _batches(self, ctx) -> list:
        batches = [ctx.example_inputs]
        if self.dynamic_batch:  # a second batch size proves the batch axis really is dynamic
            batches.append(tuple(torch.cat([t, t.flip(0) + 0.1 * torch.randn_like(t)]) if t.is_floating_point()
                                 else torch.cat([t, t]) for t in ctx.example_inputs))
        return batches

    def _float_check(self, ctx):
        def check(tmp_path: str) -> dict:
            session = ort_session(tmp_path)
            worst = {"max_abs_error": 0.0, "max_rel_error": 0.0}
            for inputs in self._batches(ctx):
                with torch.no_grad():
                    expected = ctx.gm(*inputs)
                got = [torch.from_numpy(a) for a in run_ort(session, inputs)]
                result = compare_outputs(got, expected, TOLERANCES["onnx_fp32"],
                                         f"ONNX Runtime vs PyTorch ({self.path})")
                worst = {k: max(worst[k], v) for k, v in result.items()}
            return worst
        return check

    def _int8_check(self, ctx, folded, proto):
        flops = ctx.flops()
        macs = {}   # a layer called several times (a shared MLP) does the MACs of every call
        for n in ctx.gm.graph.nodes:
            if n.op == "call_module":
                macs[n.target] = macs.get(n.target, 0) + flops.per_node.get(n.name, 0)
        layer_macs = {layer: macs.get(layer, 0) for layer in quantized_layers(ctx.gm).values()}
        held_out = held_out_batches(ctx.val_loader) if ctx.val_loader is not None else []
        batches = [tuple(t.to(ctx.device) for t in b) for b in held_out] or self._batches(ctx)

        def check(tmp_path: str) -> dict:
            metrics = check_int8_export(tmp_path, ctx.gm, batches, folded, layer_macs, flops.macs, proto)
            metrics["check_inputs"] = "val_loader" if held_out else "example inputs"
            return metrics
        return check
