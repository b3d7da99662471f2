"""From ResRep's masks (units of the original graph's groups) to a removal plan on the merged graph.

Merging folds BatchNorms away, so the merged graph has its own channel groups. Each compactor row is one
output channel of the producer it merged into, and that producer's weight (dim 0) exists in both graphs:
its positions name the same channels. A merged group's unit is removed when its masked positions say so;
a unit both kept and removed would mean the two analyses disagree, and is an error.

    plan = removal_plan(merged_result, masks, placement.sites)
    pruned, metrics = prune(merged_gm, merged_result, plan, example_inputs)
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from ...core.errors import VerificationError
from ...graph.keys import ValueKey
from ..groups import ChannelGroupsResult
from .masking import ChannelMasks
from .placement import Site


def removal_plan(merged: ChannelGroupsResult, masks: ChannelMasks, sites: Sequence[Site]) -> Dict[int, np.ndarray]:
    producer_of = {site.compactor: site.producer for site in sites}
    where = {}
    for g in merged.groups:
        for m in g.param_members():
            if m.dim == 0:
                where.setdefault(m.key, []).append((g.id, m))
    removed: Dict[int, set] = {}
    kept: Dict[int, set] = {}
    for gid, masked in masks.masked.items():
        if not masked.any():
            continue
        for compactor, pos, units in masks.rows[gid]:
            key = ValueKey.of_param(f"{producer_of[compactor]}.weight")
            if key not in where:
                raise VerificationError(f"after merging, {key.name} is in no channel group: cannot remove "
                                        f"the channels ResRep masked in group {gid}")
            off = masked[units]
            for new_gid, m in where[key]:
                at = dict(zip(m.positions.tolist(), m.units.tolist()))
                for p, is_off in zip(pos.tolist(), off.tolist()):
                    if p in at:
                        (removed if is_off else kept).setdefault(new_gid, set()).add(at[p])
    plan = {}
    for new_gid, units in removed.items():
        clash = units & kept.get(new_gid, set())
        if clash:
            raise VerificationError(f"merged group {new_gid}: units {sorted(clash)[:5]} are masked through one "
                                    f"producer and kept through another")
        group = merged.groups[new_gid]
        if not group.prunable:
            raise VerificationError(f"merged group {new_gid} is fixed ({'; '.join(group.reasons[:2])}) but "
                                    f"ResRep masked {len(units)} of its channels")
        plan[new_gid] = np.array(sorted(set(range(group.size)) - units), dtype=np.int64)
    return plan
