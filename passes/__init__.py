"""fxcompress passes: analysis, transform and lowering passes over a torch.fx graph."""
from .export_onnx import ExportONNX
from .fine_tune import FineTune
from .flops import CountFlops
from .fold_batchnorm import FoldBatchNorm
from .quantize_int8 import QuantizeINT8
from .shapes import ShapeAnalysis

__all__ = ["CountFlops", "ExportONNX", "FineTune", "FoldBatchNorm", "QuantizeINT8", "ShapeAnalysis"]
