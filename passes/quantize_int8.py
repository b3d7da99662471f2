"""QuantizeINT8: fake-quant INT8 (int8 per-channel weights, uint8 activations) calibrated on
calib_loader, optionally fine-tuned (QAT), lowered by ExportONNX to a genuinely INT8 ONNX model."""
from __future__ import annotations

import copy
import time
from typing import Optional

from fxcompress.fold.batchnorm import exact_folds, fold_batchnorms
from fxcompress.core.errors import PassError
from fxcompress.core.pass_base import TransformPass
from fxcompress.quant.calibrate import calibrate
from fxcompress.quant.decompose import decompose_modules
from fxcompress.quant.out_of_place import out_of_place_arithmetic
from fxcompress.quant.bias_correction import correct_biases
from fxcompress.quant.emulate import install_integer_emulation
from fxcompress.quant.insert import insert_fake_quant, plan_quantization, weighted_modules
from fxcompress.quant.fake_quant import is_quantized, refresh_weight_scales
from fxcompress.quant.observers import CalibrationConfig
from fxcompress.quant.ort_integer_kernels import ort_u8s8_saturates
from fxcompress.core.verify import compare_exact, run_eval
from fxcompress.graph.macs import node_macs
from fxcompress.graph.shapes import record_shapes
from fxcompress.ops.registry import QUANT
from fxcompress.train.loop import TrainConfig, fit


class QuantizeINT8(TransformPass):
    """Insert fake-quant nodes where onnxruntime's integer kernels will quantize, calibrate them with
    streaming observers (method "kl" | "minmax" | "percentile"), optionally run `qat_epochs` of
    quantization-aware training on train_loader. ExportONNX lowers the resulting graph (the quantizers
    are in it) to a genuinely INT8 model and verifies it. BatchNorms after convs are folded first (checked
    exact, like FoldBatchNorm). Running it on an already quantized graph is an error. Convs with
    fewer than `min_input_channels` input channels (4: the RGB stem) can be kept in float so that the raw
    image is never quantized; the default quantizes every layer, which is faster in onnxruntime
    (resnet50: a float stem made batch 8 1.25x slower, by the layout changes around it). With
    `bias_correction`, each layer's mean output shift caused by rounding its weights is measured on the
    calibration data and taken out of its bias (stored as int32: free at run time). `weight_bits` is 8, 7
    or "auto": 7 where this CPU's onnxruntime saturates int16 pairs of u8 x s8 products (AVX2 without VNNI,
    `quant/ort_integer_kernels.py`), so that the file computes what the check verifies; a file that must
    run on any x86-64 CPU wants 7.

        fxcompress.compile(model, [QuantizeINT8("kl"), ExportONNX("int8.onnx")], x, calib_loader=calib)
    """
    requires = ("calib_loader",)

    def __init__(self, method: str = "kl", num_bins: int = 2048, num_quantized_bins: int = 128,
                 percentile: float = 99.99, per_channel: bool = True, symmetric_weights: bool = True,
                 calib_batches: Optional[int] = None, qat_epochs: int = 0, qat_lr: float = 1e-3,
                 progress: bool = True, min_input_channels: int = 1, bias_correction: bool = True,
                 weight_bits="auto"):
        self.config = CalibrationConfig(method, num_bins, num_quantized_bins, percentile)  # validates
        if calib_batches is not None and calib_batches < 1:
            raise PassError(f"calib_batches must be >= 1 or None, got {calib_batches}")
        if qat_epochs < 0:
            raise PassError(f"qat_epochs must be >= 0, got {qat_epochs}")
        self.per_channel = per_channel
        self.symmetric_weights = symmetric_weights
        self.calib_batches = calib_batches
        self.qat_epochs = qat_epochs
        self.qat_lr = qat_lr
        self.progress = progress
        if not isinstance(min_input_channels, int) or min_input_channels < 1:
            raise PassError(f"min_input_channels must be an integer >= 1, got {min_input_channels!r}")
        self.min_input_channels = min_input_channels
        self.bias_correction = bias_correction
        if weight_bits not in ("auto", 7, 8) or isinstance(weight_bits, bool):
            raise PassError(f"weight_bits must be 8, 7 or 'auto', got {weight_bits!r}")
        self.weight_bits = weight_bits

    def __repr__(self) -> str:
        return f"QuantizeINT8(method={self.config.method!r})"

    def run(self, ctx) -> dict:
        if self.qat_epochs and ctx.train_loader is None:
            raise PassError("QuantizeINT8(qat_epochs>0) needs train_loader: pass train_loader=... to compile()")
        if is_quantized(ctx.gm):
            raise PassError("QuantizeINT8: the model is already quantized (it carries fake-quant modules); "
                            "run QuantizeINT8 once")
        gm = copy.deepcopy(ctx.gm)   # ctx.gm stays untouched if calibration fails
        bn_folded, _ = fold_batchnorms(gm)
        gm.recompile()
        if bn_folded:   # checked exactly, like FoldBatchNorm
            compare_exact(lambda x: run_eval(ctx.gm, x), lambda x: run_eval(gm, x), (ctx.gm, gm),
                          ctx.example_inputs, "QuantizeINT8's BatchNorm folding", exact_folds(ctx.gm, gm))
        record_shapes(gm, ctx.example_inputs)
        out_of_place = out_of_place_arithmetic(gm)   # x.add_(y): the emulation must read x as it was
        decomposed = decompose_modules(gm)   # attention's projections become nn.Linear layers
        if decomposed["decomposed"] or out_of_place:
            what = "QuantizeINT8's decomposition of " + ", ".join((decomposed["decomposed"] + out_of_place)[:3])
            compare_exact(lambda x: run_eval(ctx.gm, x), lambda x: run_eval(gm, x), (ctx.gm, gm),
                          ctx.example_inputs, what)
            record_shapes(gm, ctx.example_inputs)
        plan = plan_quantization(gm, self.min_input_channels)
        if not plan.weighted:
            raise PassError("QuantizeINT8 found no conv/linear layer to quantize in the model")
        layer_macs = node_macs(gm)
        modules = dict(gm.named_modules())
        bits = self.weight_bits if self.weight_bits != "auto" else 7 if ort_u8s8_saturates() else 8
        quantizers = insert_fake_quant(gm, plan, self.config, self.per_channel, self.symmetric_weights, bits)
        start = time.perf_counter()
        calib = calibrate(gm, ctx.calib_loader, quantizers, self.calib_batches, ctx.device,
                          self.progress and ctx.progress)
        if self.bias_correction:
            calib.update(correct_biases(gm, weighted_modules(gm), ctx.calib_loader, self.calib_batches, ctx.device))
        calib_seconds = time.perf_counter() - start
        qat = self._qat(gm, ctx) if self.qat_epochs else {}
        gm.eval()
        # from here on (eval mode) the fake-quant graph computes the integer kernels' exact codes
        emulated = install_integer_emulation(gm, weighted_modules(gm))
        ctx.gm = gm
        planned = sum(layer_macs.get(n.name, 0) for n in plan.weighted)
        return {"method": self.config.method, "weight_bits": bits, "u8s8_saturates": ort_u8s8_saturates(),
                "bn_folded": len(bn_folded), "quantized_layers": len(plan.weighted),
                "activation_quantizers": len(quantizers),
                "int8_mac_fraction_planned": planned / max(sum(layer_macs.values()), 1),
                "calib_seconds": calib_seconds, **calib, **qat, **emulated,
                "unquantized_layers": [n for n, m in modules.items() if _is_weighted(m) and
                                       n not in {w.target for w in plan.weighted}],
                "kept_float": dict(plan.kept_float), "decomposed": decomposed["decomposed"],
                "kept_whole": decomposed["kept"], "out_of_place": out_of_place}

    def _qat(self, gm, ctx) -> dict:
        gm.train()
        # activation scales stay frozen from calibration; weight scales follow the weights (see WeightQuantizer)
        config = TrainConfig(epochs=self.qat_epochs, lr=self.qat_lr, weight_decay=0.0,
                             progress=self.progress and ctx.progress)
        history = fit(gm, ctx.train_loader, config, device=ctx.device, desc="QAT")
        gm.eval()
        refresh_weight_scales(gm)
        return {"qat_epochs": self.qat_epochs, "qat_history": history}


def _is_weighted(m) -> bool:
    """A layer whose op family quantizes it with an int8 weight (ops' QUANT rules: conv, linear)."""
    rule = QUANT.for_type(type(m))
    return rule is not None and rule.role == "weighted"
