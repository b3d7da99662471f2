"""Taps expose named nodes without changing outputs, name unknown nodes with close matches, and follow
pruning."""
import pytest
import torch

import fxcompress
from fxcompress.core.errors import PassError
from fxcompress.distill import install_taps, remove_taps, with_features
from fxcompress.graph.tracing import trace
from fxcompress.models import get_model
from fxcompress.passes import MagnitudePrune

X = torch.randn(2, 1, 8, 8)


def test_taps_record_values_and_leave_outputs_alone():
    gm = trace(get_model("small_cnn", width=8).eval())
    expected = gm(X)
    taps = install_taps(gm, ["features.2", "features_5"])   # a module name and a node name
    assert torch.equal(gm(X), expected)
    assert taps[0].value.shape == (2, 8, 8, 8) and taps[1].value.shape == (2, 8, 8, 8)
    remove_taps(gm)
    assert torch.equal(gm(X), expected) and not any("tap" in n.name for n in gm.graph.nodes)


def test_with_features_returns_the_named_values_in_the_order_given():
    gm = trace(get_model("small_cnn", width=8).eval())
    out, feats = with_features(gm, ["features_9", "features_2"])(X)
    assert torch.equal(out, gm(X)) and feats[0].shape[1] == 16 and feats[1].shape[1] == 8


def test_an_unknown_name_lists_close_matches():
    gm = trace(get_model("small_cnn", width=8).eval())
    with pytest.raises(PassError, match=r"'features_22'.*close matches: \['features_2"):
        install_taps(gm, ["features_22"])


def test_a_tapped_student_prunes_and_its_tap_follows_the_new_width():
    gm = trace(get_model("small_cnn", width=8).eval())
    install_taps(gm, ["features_5"])
    pruned = fxcompress.compile(gm, [MagnitudePrune(ratio=0.5)], X, progress=False).model
    tap = next(m for n, m in pruned.named_modules() if n.startswith("fxcompress_tap"))
    pruned(X)
    assert tap.value.shape[1] == 4
