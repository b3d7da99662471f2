"""The ResRep update after backward equals its formula; compactors train with their own optimizer options;
masking follows the warm-up and the interval."""
import torch

from fxcompress.prune.plan import PlanMacs
from fxcompress.prune.resrep import ChannelMasks, ResRepHook, find_sites, insert_compactors
from fxcompress.train.loop import TrainConfig, _optimizer
from resrep_models import X, ResNetDigits, analysed


def setup(**kw):
    gm, result = analysed(ResNetDigits())
    placement = find_sites(gm, result, [g.id for g in result.prunable()])
    compacted = insert_compactors(gm, placement.sites)
    compactors = {s.compactor: compacted.get_submodule(s.compactor) for s in placement.sites}
    masks = ChannelMasks(result, placement, compactors)
    hook = ResRepHook(masks, PlanMacs(gm, result), target_macs=0, **kw)
    return compacted, compactors, masks, hook


def test_compactor_gradient_follows_the_resrep_formula():
    compacted, compactors, masks, hook = setup(lasso_strength=0.3)
    with torch.no_grad():
        for q in compactors.values():
            q.weight.add_(0.1 * torch.randn_like(q.weight))
    gid = masks.groups[0]
    masks.masked[gid][[1, 4]] = True
    hook._refresh_rows()
    compacted(X).square().sum().backward()
    task = {n: q.weight.grad.clone() for n, q in compactors.items()}
    hook.after_backward(compacted)
    row_masks = hook.row_masks
    for name, q in compactors.items():
        w = q.weight.detach().view(q.weight.shape[0], -1)
        m = row_masks[name].unsqueeze(1)
        expected = task[name].view_as(w) * m + 0.3 * w / w.norm(dim=1, keepdim=True)
        assert torch.allclose(q.weight.grad.view_as(w), expected, atol=1e-7)
    masked_rows = sum(int((m == 0).sum()) for m in row_masks.values())
    assert masked_rows == 2 * len(masks.rows[gid])   # two units, one row per producer of the group


def test_compactors_get_their_own_momentum_and_no_weight_decay():
    compacted, compactors, masks, hook = setup(compactor_momentum=0.95)
    opt = _optimizer(compacted, TrainConfig(lr=0.1, weight_decay=5e-4), [hook])
    groups = {id(p): g for g in opt.param_groups for p in g["params"]}
    for q in compactors.values():
        assert groups[id(q.weight)]["momentum"] == 0.95 and groups[id(q.weight)]["weight_decay"] == 0.0
    conv = compacted.get_submodule("blocks.0.c1").weight
    assert groups[id(conv)]["momentum"] == 0.9 and groups[id(conv)]["weight_decay"] == 5e-4
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(compacted.parameters()))


def test_masking_starts_after_warmup_and_repeats_every_interval():
    compacted, compactors, masks, hook = setup(warmup_epochs=1, mask_interval=3, step_channels=2)
    hook.on_train_begin(compacted, steps_per_epoch=5)
    counts = []
    for _ in range(12):
        compacted(X).sum().backward()
        hook.after_backward(compacted)
        counts.append(masks.masked_count())
    # steps 1-5 warm up; masks at steps 8 and 11
    assert counts == [0] * 7 + [2, 2, 2, 4, 4]


def test_hook_state_round_trips():
    compacted, compactors, masks, hook = setup(mask_interval=1, step_channels=3)
    compacted(X).sum().backward()
    hook.after_backward(compacted)
    hook.on_epoch_end(0, compacted)
    state = hook.state_dict()
    _, _, masks2, hook2 = setup()
    hook2.load_state_dict(state)
    assert hook2.step == 1 and masks2.masked_count() == 3 and hook2.history == hook.history
    assert all(torch.equal(hook2.row_masks[n], hook.row_masks[n]) for n in hook.row_masks)


def test_history_records_the_largest_masked_row_norm():
    compacted, compactors, masks, hook = setup()
    hook.on_epoch_end(0, compacted)
    assert hook.history[-1]["masked_row_norm_max"] == 0.0     # nothing masked yet
    gid = masks.groups[0]
    masks.masked[gid][[2]] = True
    hook._refresh_rows()
    name, pos, units = masks.rows[gid][0]
    with torch.no_grad():
        compactors[name].rows()[pos[units == 2]] *= 3.0     # identity row of norm 1 -> 3
    hook.on_epoch_end(1, compacted)
    assert abs(hook.history[-1]["masked_row_norm_max"] - 3.0) < 1e-6
