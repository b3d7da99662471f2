"""The latency-targeted plan: the target met as predicted, widths on the allowed steps, channels removed
where they buy time, and an unreachable target named with what is reachable."""
import numpy as np
import pytest

from fxcompress.latency import LatencyUnreachable, latency_plan
from fxcompress.latency.search import allowed_widths
from fxcompress.latency.table import LayerTable
from fxcompress.prune.plan import magnitude_scores


def test_allowed_widths():
    assert allowed_widths(64, 8, 1) == [64, 56, 48, 40, 32, 24, 16, 8]
    assert allowed_widths(20, 8, 1) == [20, 16, 8]
    assert allowed_widths(64, 8, 16) == [64, 56, 48, 40, 32, 24, 16]
    assert allowed_widths(64, 8, 20) == [64, 56, 48, 40, 32, 24, 20]
    assert allowed_widths(6, 8, 1) == [6]


def scored(tiny):
    _, gm, groups = tiny
    prunable = groups.prunable()
    return prunable, magnitude_scores(gm, groups, prunable)


def test_plan_meets_the_target_as_predicted(tiny_fp32, tiny):
    groups, scores = scored(tiny)
    plan, fraction = latency_plan(tiny_fp32, groups, scores, 0.6, round_to=8)
    assert fraction <= 0.6
    assert fraction == pytest.approx(tiny_fp32.fraction(tiny_fp32.masks(plan)), abs=1e-9)  # incremental == full
    sizes = {g.id: g.size for g in groups}
    for gid, kept in plan.items():
        assert len(kept) % 8 == 0 and 0 < len(kept) < sizes[gid]
        order = np.argsort(-scores[gid], kind="stable")
        assert set(kept) == set(order[:len(kept)])          # the best channels stay


def test_channels_go_where_they_buy_time(tiny_fp32, tiny):
    """Two groups of equal importance per channel: only the one whose cutting makes layers faster is cut."""
    groups, _ = scored(tiny)
    lm = tiny_fp32
    scores = {g.id: np.ones(g.size) for g in groups}
    stem_group = next(g.id for g in groups if g.size == 32)
    stream_group = next(g.id for g in groups if g.size == 64)
    saved_calibration, saved_tables = lm.calibration, dict(lm.tables)
    try:
        lm.calibration = type(lm.calibration)(1.0, {l.node: 1 / len(lm.layers) for l in lm.layers})
        for live, other in ((stem_group, stream_group), (stream_group, stem_group)):
            for l in lm.layers:   # a layer's time follows the widths `live` gives it; `other` changes nothing
                def factor(width, full, dim):
                    return width / full if live in lm.widths.groups_of(dim) else 1.0
                cins, couts = [1, l.spec.cin], [1, l.spec.cout]
                grid = np.array([[factor(a, l.spec.cin, l.in_dim) * factor(b, l.spec.cout, l.out_dim) for b in couts]
                                 for a in cins])
                lm.tables[l.node] = LayerTable(l.spec, cins, couts, grid)
            plan, fraction = latency_plan(lm, groups, scores, 0.8, round_to=8)
            assert live in plan and other not in plan and fraction <= 0.8
    finally:
        lm.calibration, lm.tables = saved_calibration, saved_tables


def test_unreachable_target_names_the_reachable_fraction(tiny_fp32, tiny):
    groups, scores = scored(tiny)
    with pytest.raises(LatencyUnreachable,
                       match=r"target_latency=0.01 cannot be reached .* Choose target_latency >= ") as e:
        latency_plan(tiny_fp32, groups, scores, 0.01, round_to=8)
    assert 0.01 < e.value.reachable < 1
    plan, fraction = latency_plan(tiny_fp32, groups, scores, e.value.reachable + 1e-9, round_to=8)
    assert fraction <= e.value.reachable + 1e-9
