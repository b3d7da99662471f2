"""Matching profiled onnxruntime nodes to the traced model's layers, whatever layout onnxruntime chose."""
import pytest

from fxcompress.graph.keys import ValueKey
from fxcompress.latency.attribute import attribute, layer_signature
from fxcompress.latency.layers import Layer, LayerSpec
from fxcompress.latency.timing import NodeTime


def layer(name, spec):
    key = ValueKey.of_param(f"{name}.weight")
    return Layer(name, name, spec, (key, 1), (key, 0))


STEM = layer("stem", LayerSpec("conv", 3, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, (8, 8), False))
C1X1 = layer("c1x1", LayerSpec("conv", 16, 16, (1, 1), (1, 1), (0, 0), (1, 1), 1, (8, 8), False))
C3X3 = layer("c3x3", LayerSpec("conv", 16, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, (8, 8), False))
DOWN = layer("down", LayerSpec("conv", 16, 20, (3, 3), (2, 2), (1, 1), (1, 1), 1, (8, 8), False))
FC = layer("fc", LayerSpec("linear", 20, 10))
LAYERS = [STEM, C1X1, C3X3, DOWN, FC]


def test_layer_signature_has_the_output_size():
    assert layer_signature(DOWN, 4) == ("conv", 4, 16, 20, (8, 8), (4, 4))
    assert layer_signature(FC, 4) == ("linear", 4, 20, 10, (), ())


def test_nodes_in_nchw_nhwc_and_padded_layouts_are_matched():
    nodes = [
        NodeTime("a", "QLinearConv", 1.0, (2, 8, 8, 4), (2, 8, 8, 16)),      # INT8 NHWC, RGB padded to 4
        NodeTime("b", "Conv", 2.0, (2, 16, 8, 8), (2, 16, 8, 8)),            # NCHWc, one of the look-alikes
        NodeTime("c", "Conv", 4.0, (2, 16, 8, 8), (2, 16, 8, 8)),            # the other
        NodeTime("d", "FusedConv", 3.0, (2, 16, 8, 8), (2, 24, 4, 4)),       # 20 outputs padded to a block of 8
        NodeTime("e", "QGemm", 0.5, (2, 20), (2, 10)),
        NodeTime("f", "QLinearAdd", 9.0, (2, 4, 4, 20), (2, 4, 4, 20)),      # not a layer kernel
        NodeTime("g", "Conv", 7.0, (2, 5, 3, 3), (2, 5, 3, 3)),              # a conv no layer explains
    ]
    macs = {"stem": 1, "c1x1": 16 * 16 * 64, "c3x3": 9 * 16 * 16 * 64, "down": 1, "fc": 1}
    ctx, unmatched = attribute(LAYERS, nodes, 2, macs)
    assert ctx["stem"] == 1.0 and ctx["down"] == 3.0 and ctx["fc"] == 0.5
    # the two look-alikes share their class's 6 ms by MACs: the 3x3 conv does 9 times the 1x1's work
    assert ctx["c1x1"] == pytest.approx(0.6) and ctx["c3x3"] == pytest.approx(5.4)
    assert unmatched == 7.0


def test_exact_channels_win_over_padded_ones():
    narrow = layer("narrow", LayerSpec("conv", 16, 12, (3, 3), (1, 1), (1, 1), (1, 1), 1, (8, 8), False))
    wide = layer("wide", LayerSpec("conv", 16, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, (8, 8), False))
    ctx, _ = attribute([narrow, wide], [NodeTime("n", "Conv", 1.0, (1, 16, 8, 8), (1, 16, 8, 8))], 1, {})
    assert ctx == {"narrow": 0.0, "wide": 1.0}


def test_batch_must_match():
    ctx, unmatched = attribute([FC], [NodeTime("e", "Gemm", 0.5, (8, 20), (8, 10))], 1, {})
    assert ctx == {"fc": 0.0} and unmatched == 0.5
