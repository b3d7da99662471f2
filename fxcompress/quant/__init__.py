"""INT8 quantization machinery: streaming observers, KL/percentile calibration, fake-quant modules,
the op registry saying what is quantized and how, graph insertion, and the ONNX lowering rewrites."""
from .kl import kl_divergences, kl_threshold, kl_threshold_bin, percentile_threshold
from .fake_quant import ActivationQuantizer, WeightQuantizer
from .histogram import StreamingHistogram
from .insert import QuantPlan, insert_fake_quant, plan_quantization, weighted_modules
from .observers import METHODS, ActivationObserver, CalibrationConfig

__all__ = ["StreamingHistogram", "kl_divergences", "kl_threshold", "kl_threshold_bin", "percentile_threshold",
           "ActivationObserver", "CalibrationConfig", "METHODS", "ActivationQuantizer", "WeightQuantizer",
           "QuantPlan", "plan_quantization", "insert_fake_quant", "weighted_modules"]
