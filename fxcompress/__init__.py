"""fxcompress: a model-compression compiler for PyTorch built on torch.fx."""
from .core.compiler import CompileResult, compile
from .core.context import PassContext
from .core.errors import (CheckpointError, DataError, ExportError, FxCompressError, ModelNotFoundError, PassError,
                     ShapeError, TraceError, VerificationError)
from .core.pass_base import AnalysisPass, LoweringPass, Pass, TransformPass
from .graph.tracing import propagate_shapes, trace

__version__ = "0.1.0"

__all__ = ["compile", "CompileResult", "PassContext", "Pass", "AnalysisPass", "TransformPass", "LoweringPass",
           "trace", "propagate_shapes", "FxCompressError", "TraceError", "ShapeError", "PassError",
           "VerificationError", "ExportError", "CheckpointError", "ModelNotFoundError", "DataError"]
