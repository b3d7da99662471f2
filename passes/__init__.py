"""fxcompress passes: analysis, transform and lowering passes over a torch.fx graph."""
from .channel_groups import ChannelGroups
from .distill import Distill
from .export_onnx import ExportONNX
from .fine_tune import FineTune
from .flops import CountFlops
from .fold_batchnorm import FoldBatchNorm
from .magnitude_prune import MagnitudePrune
from .prune_channels import PruneChannels
from .quantize_int8 import QuantizeINT8
from .resrep import ResRep
from .shapes import ShapeAnalysis

__all__ = ["ChannelGroups", "CountFlops", "Distill", "ExportONNX", "FineTune", "FoldBatchNorm", "MagnitudePrune",
           "PruneChannels", "QuantizeINT8", "ResRep",
           "ShapeAnalysis"]
