"""ResRep (Ding et al., ICCV 2021) on fxcompress's channel groups: compactor placement and insertion,
the training hook (ResRep update and masking), merging, and the removal plan. The pass is
`fxcompress.passes.ResRep`."""
from .compactor import COMPACTORS, ChannelScale, ConvCompactor, LinearCompactor, is_compactor
from .hook import ResRepHook
from .masking import ChannelMasks
from .merge import merge_compactors, zero_masked_rows
from .placement import Placement, Site, find_sites, insert_compactors
from .remove import removal_plan

__all__ = ["COMPACTORS", "ChannelMasks", "ChannelScale", "ConvCompactor", "LinearCompactor", "Placement",
           "ResRepHook", "Site", "find_sites", "insert_compactors", "is_compactor", "merge_compactors",
           "removal_plan", "zero_masked_rows"]
