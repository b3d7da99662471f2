"""Op knowledge, one module per op family (MACs, channel coupling, resizing, INT8, BatchNorm folding),
registered one way in `fxcompress.ops.registry`. Importing this package registers every family.

Supporting a new op is adding its rules to its family's module (or a new module imported here) and a test.
"""
from . import (attention, conv, elementwise, embedding, indexing, linear, matmul, norm,  # noqa: F401
               padding, pooling, reduction, reshape, scale)
from .registry import BN_FOLD, COUPLING, EXPORT, MACS, QUANT, RESIZE, ExportRule, OpRegistry, QuantRule, optional

__all__ = ["OpRegistry", "QuantRule", "ExportRule", "optional", "MACS", "COUPLING", "RESIZE", "QUANT", "BN_FOLD",
           "EXPORT"]
