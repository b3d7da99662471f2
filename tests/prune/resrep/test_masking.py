"""Masks are shared by all compactors of a group, and masking stops at the MACs target, never going below
min_channels and keeping widths at multiples of round_to."""
import numpy as np
import pytest
import torch

from fxcompress.graph.macs import count_macs
from fxcompress.prune.plan import PlanMacs
from fxcompress.prune.resrep import ChannelMasks, find_sites, insert_compactors
from resrep_models import ResNetDigits, analysed


def setup(min_channels=1, round_to=1, model=None, group_score="sum"):
    gm, result = analysed(model or ResNetDigits())
    placement = find_sites(gm, result, [g.id for g in result.prunable()])
    compacted = insert_compactors(gm, placement.sites)
    compactors = {s.compactor: compacted.get_submodule(s.compactor) for s in placement.sites}
    masks = ChannelMasks(result, placement, compactors, min_channels, round_to, group_score)
    return gm, result, placement, compactors, masks, PlanMacs(gm, result)


def residual_group(result, masks):
    return max(masks.groups, key=lambda g: len(masks.rows[g]))


def test_a_residual_unit_masks_the_rows_of_every_producer():
    gm, result, placement, compactors, masks, _ = setup()
    gid = residual_group(result, masks)
    assert len(masks.rows[gid]) == 3   # stem, block 0 and block 1 outputs
    masks.masked[gid][5] = True
    rows = masks.row_masks()
    for name, pos, units in masks.rows[gid]:
        assert rows[name][pos[units == 5]].tolist() == [0.0]
    assert sum(int((r == 0).sum()) for r in rows.values()) == 3


def test_scores_sum_the_row_norms_of_a_groups_producers():
    gm, result, placement, compactors, masks, _ = setup()
    with torch.no_grad():
        for i, q in enumerate(compactors.values()):
            q.weight.mul_(i + 1)
    scores = masks.scores()
    gid = residual_group(result, masks)
    expected = sum(float(compactors[name].row_norms()[pos[units == 0]]) for name, pos, units in masks.rows[gid])
    assert scores[gid][0] == pytest.approx(expected)


def test_mean_scores_let_a_residual_group_compete_with_an_inner_conv():
    """Identity compactors: every row norm is 1. Summed, a residual unit (3 producers) scores 3 and is masked
    after every inner channel; averaged, it scores 1 like the others."""
    for group_score, residual in (("sum", 3.0), ("mean", 1.0)):
        gm, result, placement, compactors, masks, _ = setup(group_score=group_score)
        scores = masks.scores()
        gid = residual_group(result, masks)
        assert scores[gid] == pytest.approx(np.full(len(scores[gid]), residual))
        inner = [g for g in masks.groups if len(masks.rows[g]) == 1]
        assert scores[inner[0]] == pytest.approx(np.ones(len(scores[inner[0]])))


def test_masking_ranks_channels_globally_by_norm():
    gm, result, placement, compactors, masks, macs_of = setup()
    inner = [g for g in masks.groups if len(masks.rows[g]) == 1]
    name = masks.rows[inner[0]][0][0]
    with torch.no_grad():
        compactors[name].weight[[3, 7]] *= 0.01     # two weak channels in one inner group
    done = masks.mask_more(macs_of, target=0, limit=2)
    assert done["masked"] == 2 and np.nonzero(masks.masked[inner[0]])[0].tolist() == [3, 7]


@pytest.mark.parametrize("min_channels,round_to", [(1, 1), (4, 1), (1, 4), (6, 4)])
def test_masking_stops_at_the_target_and_respects_floors(min_channels, round_to):
    gm, result, placement, compactors, masks, macs_of = setup(min_channels, round_to)
    total = count_macs(gm).macs
    with torch.no_grad():   # distinct norms, so the ranking is not decided by ties
        for q in compactors.values():
            q.weight.mul_(torch.rand(q.weight.shape[0], 1, 1, 1) + 0.5)
    target = int(0.5 * total)
    steps = 0
    while masks.mask_more(macs_of, target, limit=4)["masked"]:
        steps += 1
        assert steps < 200
    macs = macs_of(masks.plan())
    assert macs <= target
    for gid, (size, kept) in masks.widths().items():
        assert kept >= min(size, min_channels)
        assert kept == size or kept % round_to == 0
    assert masks.mask_more(macs_of, target, limit=4)["masked"] == 0


def test_step_limit_masks_a_few_channels_at_a_time():
    gm, result, placement, compactors, masks, macs_of = setup()
    done = masks.mask_more(macs_of, target=0, limit=4)
    assert done["masked"] == 4 and masks.masked_count() == 4
    assert done["macs"] == macs_of(masks.plan())


def test_the_final_step_masks_everything_needed_at_once():
    gm, result, placement, compactors, masks, macs_of = setup()
    target = int(0.4 * count_macs(gm).macs)
    done = masks.mask_more(macs_of, target, limit=None)
    assert done["macs"] <= target
    assert done["masked"] == masks.masked_count() > 4
    # and no more than needed: the same ranking stopped one channel earlier is above the target
    _, _, _, _, fewer, _ = setup()
    assert fewer.mask_more(macs_of, 0, limit=done["masked"] - 1)["macs"] > target


def test_masks_round_trip_through_a_weights_only_checkpoint(tmp_path):
    gm, result, placement, compactors, masks, macs_of = setup()
    masks.mask_more(macs_of, target=0, limit=5)
    torch.save(masks.state_dict(), tmp_path / "m.pt")
    _, _, _, _, other, _ = setup()
    other.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert all((other.masked[g] == masks.masked[g]).all() for g in masks.groups)


@pytest.mark.parametrize("size,min_channels,round_to,expected", [(16, 1, 1, 1), (16, 6, 4, 8), (16, 1, 8, 8),
                                                                  (6, 8, 4, 6), (16, 17, 1, 16), (10, 3, 4, 4)])
def test_smallest_width_respects_min_channels_and_round_to(size, min_channels, round_to, expected):
    from fxcompress.prune.resrep.masking import smallest_width
    assert smallest_width(size, min_channels, round_to) == expected


def test_the_floor_plan_is_what_masking_reaches_at_a_zero_target():
    from fxcompress.prune.resrep.masking import floor_plan
    gm, result, placement, compactors, masks, macs_of = setup(min_channels=6, round_to=4)
    masks.mask_more(macs_of, target=0, limit=None)
    assert macs_of(masks.plan()) == macs_of(floor_plan(result, masks.groups, 6, 4))


def test_mask_toward_a_plan_masks_what_it_removes_lowest_scores_first():
    gm, result, placement, compactors, masks, _ = setup()
    gid = residual_group(result, masks)
    other = next(g for g in masks.groups if g != gid)
    size = len(masks.masked[gid])
    with torch.no_grad():   # residual unit u scores higher with u: the lowest units go first
        for name, pos, units in masks.rows[gid]:
            compactors[name].weight[torch.from_numpy(pos)] *= torch.from_numpy(1.0 + units).view(-1, *[1] * (compactors[name].weight.dim() - 1)).float()
    goal = {gid: np.arange(4, size)}   # removes units 0-3 of the residual group, nothing of the others
    assert masks.mask_toward(goal, limit=2) == {"masked": 2}
    assert np.nonzero(masks.masked[gid])[0].tolist() == [0, 1] and not masks.masked[other].any()
    assert masks.mask_toward(goal, limit=None) == {"masked": 2}
    assert np.nonzero(masks.masked[gid])[0].tolist() == [0, 1, 2, 3]
    assert masks.mask_toward(goal, limit=None) == {"masked": 0}   # nothing left to move toward
    first = masks.scores_masked_first()
    assert (first[gid][:4] == 0).all() and (first[gid][4:] > 0).all()
