"""fxcompress passes: analysis, transform and lowering passes over a torch.fx graph."""
from .export_onnx import ExportONNX
from .fine_tune import FineTune
from .flops import CountFlops
from .shapes import ShapeAnalysis

__all__ = ["CountFlops", "ExportONNX", "FineTune", "ShapeAnalysis"]
