"""Latency tables: sampled widths, interpolation, the on-disk cache (hit, miss, corrupt file, per runtime)."""
import json
import os

import numpy as np
import pytest

from fxcompress.latency import Runtime
from fxcompress.latency.layers import LayerSpec
from fxcompress.latency.table import BLOCK, LatencyTables, LayerTable, lowest_width, period, sample_widths

CONV = LayerSpec("conv", 16, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, (8, 8), False)


@pytest.mark.parametrize("size, lowest, round_to, points",
                         [(512, 8, 8, 7), (64, 8, 8, 6), (100, 4, 4, 5), (16, 1, 1, 6)])
def test_sample_widths_are_rounded_geometric_and_span_the_range(size, lowest, round_to, points):
    widths = sample_widths(size, lowest, round_to, points, classes=False)
    assert widths[0] == lowest and widths[-1] == size and widths == sorted(set(widths))
    assert len(widths) <= points + 2
    assert all(w % round_to == 0 for w in widths[:-1])
    assert round(size / 2 / round_to) * round_to in widths     # uniform halving is sampled, not interpolated
    # geometric: the gaps grow (dense where narrow kernels change behaviour)
    gaps = np.diff(widths)
    assert gaps[0] <= gaps[-1]


def test_sample_widths_edge_cases():
    assert sample_widths(512, 8, 8, 7, classes=False) == [8, 16, 32, 64, 128, 256, 512]
    assert sample_widths(512, 8, 8, 6, classes=False) == [8, 16, 40, 96, 128, 224, 256, 512]
    assert sample_widths(16, 8, 8, 6) == [8, 16]
    assert sample_widths(64, 8, 8, 1) == [64]
    assert sample_widths(6, 8, 8, 6) == [6]          # a group narrower than round_to stays whole
    assert lowest_width(64, 8, 1) == 8 and lowest_width(64, 8, 16) == 16 and lowest_width(6, 8, 1) == 6


def test_every_sample_has_a_neighbour_in_the_other_block_class():
    assert period(8) == BLOCK and period(4) == 0 and period(16) == 0
    widths = sample_widths(512, 8, 8, 6)
    assert widths[:3] == [8, 16, 24] and widths[-2:] == [504, 512]
    for w in widths:
        assert any(abs(v - w) == 8 for v in widths), w
    assert sample_widths(100, 4, 4, 5) == sample_widths(100, 4, 4, 5, classes=False)   # no classes for round_to 4


def test_interpolation_is_exact_for_a_bilinear_cost_and_clamps_outside():
    cins, couts = [8, 16, 32], [8, 24, 64]
    grid = np.array([[a * b for b in couts] for a in cins], dtype=float)
    table = LayerTable(CONV, cins, couts, grid)
    for a, b in [(8, 8), (12, 40), (20, 64), (31, 9)]:
        assert table(a, b) == pytest.approx(a * b)
    assert table(4, 8) == table(8, 8) and table(64, 100) == table(32, 64)


def test_interpolation_within_the_block_class():
    """Output widths padded to blocks of 16 (a staircase): 40 is predicted from 24 and 56, not from 32 and 48."""
    couts = [16, 24, 32, 48, 56, 64]
    staircase = np.array([[float(-(-c // 16))] for c in couts]).T     # 1 cin x 6 couts
    table = LayerTable(CONV, [16], couts, staircase, period=BLOCK)
    assert table(16, 40) == pytest.approx(3.0)                        # = ceil(40 / 16), as measured would be
    assert table(16, 32) == 2.0 and table(16, 64) == 4.0
    plain = LayerTable(CONV, [16], couts, staircase)
    assert plain(16, 40) == pytest.approx(2.5)                        # across the classes: half a block off
    # an input axis is sampled without classes: its odd samples do not capture a query of their class
    cins = [8, 16, 40, 64]
    linear = LayerTable(CONV, cins, [16], np.array([[c / 64] for c in cins]), period=BLOCK)
    assert linear(56, 16) == pytest.approx(56 / 64)
    # nor does a class whose samples do not hold the query between them
    dw = LayerSpec("conv", 64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 64, (8, 8), False)
    depthwise = LayerTable(dw, cins, [64], np.array([[c / 64] for c in cins]), period=BLOCK)
    assert depthwise(56, 56) == pytest.approx(56 / 64)


def test_depthwise_tables_have_one_axis():
    dw = LayerSpec("conv", 32, 32, (3, 3), (1, 1), (1, 1), (1, 1), 32, (8, 8), False)
    assert dw.depthwise and dw.at(16, 16).groups == 16
    table = LayerTable(dw, [8, 16, 32], [32], np.array([[0.25], [0.5], [1.0]]))
    assert table(24, 24) == pytest.approx(0.75)


def test_cache_miss_then_hit_with_the_same_values(tmp_path):
    rt = Runtime("onnxruntime-fp32", threads=1, batch=2)
    first = LatencyTables(rt, runs=2, folder=str(tmp_path))
    table = first.table(CONV, [8, 16], [8, 16])
    assert (first.misses, first.hits) == (3, 0)              # the full width is 1 by definition
    assert table(16, 16) == 1.0 and all(v > 0 for v in table.ms.ravel())
    files = os.listdir(tmp_path)
    assert files == [CONV.geometry_key() + ".json"]        # one file per layer shape, nothing left half-written
    second = LatencyTables(rt, runs=2, folder=str(tmp_path))
    again = second.table(CONV, [8, 16], [8, 16])
    assert (second.misses, second.hits) == (0, 3)
    np.testing.assert_array_equal(again.ms, table.ms)
    # a new width is measured and added beside the cached ones
    third = LatencyTables(rt, runs=2, folder=str(tmp_path))
    third.table(CONV, [8, 12, 16], [16])
    assert (third.misses, third.hits) == (1, 1)
    with open(tmp_path / files[0]) as f:
        assert set(json.load(f)["relative"]) == {"8x8", "8x16", "16x8", "12x16"}


def test_corrupt_cache_file_is_measured_again(tmp_path):
    rt = Runtime("onnxruntime-fp32", threads=1, batch=2)
    (tmp_path / (CONV.geometry_key() + ".json")).write_text("{not json")
    tables = LatencyTables(rt, runs=2, folder=str(tmp_path))
    tables.table(CONV, [8, 16], [16])
    assert tables.misses == 1
    with open(tmp_path / (CONV.geometry_key() + ".json")) as f:
        assert "8x16" in json.load(f)["relative"]


def test_cache_folder_is_per_runtime_threads_and_batch(latency_cache):
    tags = {Runtime(name, threads, batch).tag() for name in ("onnxruntime-fp32", "onnxruntime-int8")
            for threads in (1, 2) for batch in (1, 32)}
    assert len(tags) == 8
    default = LatencyTables(Runtime("onnxruntime-int8", 2, 32))
    assert default.folder.startswith(os.path.join(latency_cache, "latency"))


def test_cache_folder_changes_with_the_cpus_kernel_features(monkeypatch):
    """A table measured on an AVX-512 VNNI CPU is not reused on an AVX2-only one of the same model name."""
    from fxcompress.latency import runtime as runtime_module
    runtime = Runtime("onnxruntime-int8", 2, 1)
    monkeypatch.setattr(runtime_module, "cpu_features", lambda: "avx2 fma | 25/1/1")
    avx2 = runtime.tag()
    monkeypatch.setattr(runtime_module, "cpu_features", lambda: "avx2 fma avx512f avx512_vnni | 25/17/1")
    assert runtime.tag() != avx2
