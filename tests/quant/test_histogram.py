import numpy as np
import pytest
import torch

from fxcompress.quant.histogram import StreamingHistogram


def test_streaming_equals_one_shot_with_range_growth():
    rng = np.random.default_rng(0)
    # batches of growing spread force several re-binnings (x2, x4, ...)
    batches = [np.abs(rng.standard_normal(5000)) * s for s in (0.1, 0.3, 0.2, 2.0, 9.0, 1.0)]
    h = StreamingHistogram(2048)
    for b in batches:
        h.update(torch.from_numpy(b))          # float64 end to end, as numpy computes
    data = np.concatenate(batches)
    assert h.range >= data.max() and h.range / 2 < data.max() * 2
    # one-shot: every value into bin floor(x / width) of the final range (the last bin closed)
    one_shot = np.bincount(np.minimum(np.floor(data * (2048 / h.range)), 2047).astype(np.int64), minlength=2048)
    assert h.total == data.size
    np.testing.assert_array_equal(h.counts, one_shot)
    # numpy's histogram agrees up to its own float edge corrections (a handful of values on edges)
    assert np.abs(h.counts - np.histogram(data, bins=2048, range=(0.0, h.range))[0]).sum() <= 4


def test_streaming_equals_single_update():
    rng = np.random.default_rng(1)
    data = np.abs(rng.laplace(size=20000)).astype(np.float32)
    whole = StreamingHistogram(256)
    whole.update(torch.from_numpy(data[:100]))   # same first batch fixes the same starting range
    whole.update(torch.from_numpy(data[100:]))
    streamed = StreamingHistogram(256)
    for chunk in np.split(data, 200):
        streamed.update(torch.from_numpy(chunk))
    assert streamed.range == whole.range
    np.testing.assert_array_equal(streamed.counts, whole.counts)


def test_memory_is_independent_of_sample_count():
    h = StreamingHistogram(512)
    for _ in range(50):
        h.update(torch.rand(10000))
    assert h.counts.shape == (512,) and h.total == 500000


def test_zeros_before_range_is_known():
    h = StreamingHistogram(8)
    h.update(torch.zeros(5))
    h.update(torch.tensor([0.0, 1.0]))
    assert h.counts[0] == 6 and h.counts[-1] == 1 and h.total == 7


def test_num_bins_must_be_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        StreamingHistogram(1000)
