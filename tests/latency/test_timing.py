"""onnxruntime's profiler as a clock: layout ops left out of a layer's time, whole models node by node."""
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fxcompress.latency import timing
from fxcompress.latency.graphs import layer_graph
from fxcompress.latency.layers import LayerSpec
from fxcompress.latency.timing import interleaved_kernel_ms, interleaved_runs

CONV = LayerSpec("conv", 32, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1, (16, 16), False)


def transpose_only():
    node = helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1])
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 4, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, {"x": np.ones((2, 8, 4, 4), np.float32)}


def test_layer_time_leaves_layout_ops_out():
    conv, half, layout = interleaved_kernel_ms([layer_graph(CONV, "int8", 2), layer_graph(CONV.at(32, 16), "int8", 2),
                                                transpose_only()], threads=1, runs=3, warmup=1)
    assert conv > 0 and half > 0
    assert layout == 0.0   # a graph of layout changes alone costs the layer nothing


def test_interleaved_runs_give_wall_times_and_a_node_profile(tmp_path):
    paths = {}
    for name, spec in (("a", CONV), ("b", CONV.at(32, 8))):
        proto, feeds = layer_graph(spec, "fp32", 2)
        paths[name] = str(tmp_path / f"{name}.onnx")
        onnx.save(proto, paths[name])
    runs = interleaved_runs({k: (p, feeds) for k, p in paths.items()}, threads=1, runs=4, warmup=1, budget_s=0)
    for walls, profile in runs.values():
        assert len(walls) == 4 and min(walls) > 0
        assert any(n.op == "Conv" for n in profile.nodes)
        conv = next(n for n in profile.nodes if n.op == "Conv")
        assert conv.in_shape == (2, 32, 16, 16)
        assert profile.quiet_ms >= conv.ms > 0
    # onnxruntime's NCHWc layout pads 8 output channels to its block (8 or 16 wide, by CPU): what
    # attribute.py allows for when it matches nodes to layers
    (shape,) = [n.out_shape for n in runs["b"][1].nodes if n.op == "Conv"]
    assert shape[0] == 2 and shape[1] in (8, 16) and shape[2:] == (16, 16)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two CPUs")
def test_sessions_made_while_pinned_still_get_a_cpu_per_thread():
    # the caller is pinned to one CPU while timing; a session made then must still see every CPU for its
    # workers (reading the caller's affinity there put both threads of a "2-thread" session on one CPU)
    before = timing._cpus()
    with timing.pinned(2):
        assert os.sched_getaffinity(0) == {before[0]}
        assert timing._cpus() == before
        with timing.pinned(2):          # nested: no further narrowing
            assert timing._cpus() == before
    assert timing._cpus() == before and sorted(os.sched_getaffinity(0)) == before
