"""fxcompress passes: analysis, transform and lowering passes over a torch.fx graph."""
from .channel_groups import ChannelGroups
from .export_onnx import ExportONNX
from .fine_tune import FineTune
from .flops import CountFlops
from .magnitude_prune import MagnitudePrune
from .prune_channels import PruneChannels
from .shapes import ShapeAnalysis

__all__ = ["ChannelGroups", "CountFlops", "ExportONNX", "FineTune", "MagnitudePrune", "PruneChannels", "ShapeAnalysis"]
