"""Merging trained compactors back into their producers, leaving a graph without compactors.

For a full compactor Q after conv (or linear) W, b and BatchNorm (scale s, shift t per channel):
    Q(s * (W x + b) + t) = (Q diag(s) W) x + Q (s * b + t)
so the BatchNorm folds into the producer (fxcompress.fold) and Q multiplies its rows. A ChannelScale d
scales the rows (and bias) of its producer, or the affine of the BatchNorm it follows. Computed in float64.

The merge writes into `target`, the original graph (the compacted graph shares its tensors and keeps
training state intact): each merged producer gets new parameter tensors, folded BatchNorm nodes leave the
graph. The caller compares the two graphs' outputs (exactness).

    zero_masked_rows(compactors, masks.row_masks())
    merge_compactors(original_gm, compacted_gm, placement.sites)
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from ...fold.batchnorm import bn_scale_shift
from .compactor import ChannelScale
from .placement import Site


@torch.no_grad()
def zero_masked_rows(compactors: Dict[str, nn.Module], row_masks: Dict[str, torch.Tensor]) -> int:
    """Set the masked rows to exactly zero (training only decays them). Returns how many rows."""
    count = 0
    for name, q in compactors.items():
        masked = row_masks[name] == 0
        if masked.any():
            q.weight.view(q.weight.shape[0], -1)[masked.to(q.weight.device)] = 0.0
            count += int(masked.sum())
    return count


def _merged_weights(producer: nn.Module, norm, q: nn.Module):
    """(weight, bias) of producer followed by norm (optional) and compactor q, in float64."""
    w = producer.weight.detach().double()
    rows = w.shape[0]
    b = producer.bias.detach().double() if getattr(producer, "bias", None) is not None else \
        torch.zeros(rows, dtype=torch.float64, device=w.device)
    if norm is not None:
        s, t = bn_scale_shift(norm)
        w = w * s.view(-1, *[1] * (w.dim() - 1))
        b = b * s + t
    qw = q.weight.detach().double()
    if isinstance(q, ChannelScale):
        d = qw.view(-1)
        return w * d.view(-1, *[1] * (w.dim() - 1)), b * d
    qm = qw.view(qw.shape[0], -1)
    return (qm @ w.reshape(rows, -1)).view(qm.shape[0], *w.shape[1:]), qm @ b


def merge_compactors(target: fx.GraphModule, compacted: fx.GraphModule, sites: Sequence[Site]) -> None:
    """Fold each site's BatchNorm and compactor into its producer in `target` (see module doc)."""
    nodes = {n.name: n for n in target.graph.nodes}
    folded = []
    for site in sites:
        q = compacted.get_submodule(site.compactor)
        producer = target.get_submodule(site.producer)
        dtype = producer.weight.dtype
        if isinstance(producer, nn.modules.batchnorm._BatchNorm):   # a ChannelScale on a BatchNorm's affine
            d = q.weight.detach().double().view(-1)
            producer.weight = nn.Parameter((producer.weight.detach().double() * d).to(dtype))
            producer.bias = nn.Parameter((producer.bias.detach().double() * d).to(dtype))
            continue
        norm = target.get_submodule(site.norm) if site.norm else None
        w, b = _merged_weights(producer, norm, q)
        producer.weight = nn.Parameter(w.to(dtype))
        producer.bias = nn.Parameter(b.to(dtype))
        if norm is not None:
            bn_node = nodes[site.attach]
            bn_node.replace_all_uses_with(bn_node.args[0])
            target.graph.erase_node(bn_node)
            folded.append(site.norm)
    for name in folded:
        target.delete_submodule(name)
    target.graph.lint()
    target.recompile()
