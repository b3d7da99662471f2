import numpy as np
import pytest

from fxcompress.quant.kl import kl_divergences, kl_threshold, kl_threshold_bin, percentile_threshold


def reference_kl_bin(hist, nq, eps=1e-4):
    """Straightforward loop over candidates, written from TensorRT's published pseudocode
    (Migacz, "8-bit inference with TensorRT", GTC 2017), with MXNet-style smoothing of empty bins
    (on counts, before normalising)."""
    hist = [float(v) for v in hist]
    n = len(hist)

    def smooth(d):
        zeros = [i for i, v in enumerate(d) if v == 0]
        nonzeros = len(d) - len(zeros)
        if nonzeros == 0:
            return d
        take = eps * len(zeros) / nonzeros
        return [eps if v == 0 else v - take for v in d]

    best, best_i = None, None
    for i in range(nq, n + 1):
        p = hist[:i]
        p[i - 1] += sum(hist[i:])
        sliced = hist[:i]
        merged = i // nq
        q = [0.0] * i
        for j in range(nq):
            start = j * merged
            stop = i if j == nq - 1 else start + merged
            chunk = sliced[start:stop]
            nonzero = sum(1 for v in chunk if v != 0)
            total = sum(chunk)
            for k in range(start, stop):
                q[k] = total / nonzero if sliced[k] != 0 else 0.0
        p, q = smooth(p), smooth(q)           # on counts, then normalised
        sp, sq = sum(p), sum(q)
        p, q = [v / sp for v in p], [v / sq for v in q]
        kl = sum(a * np.log(a / b) for a, b in zip(p, q) if a > 0)
        if best is None or kl < best:
            best, best_i = kl, i
    return best_i, best


def _hist(samples, bins):
    return np.histogram(np.abs(samples), bins=bins, range=(0, np.abs(samples).max()))[0]


@pytest.mark.parametrize("name", ["gaussian", "laplace", "bimodal", "sparse"])
def test_kl_matches_reference_loop(name):
    rng = np.random.default_rng(3)
    samples = {
        "gaussian": rng.standard_normal(200000),
        "laplace": rng.laplace(size=200000),
        "bimodal": np.concatenate([rng.normal(0, 0.2, 100000), rng.normal(3, 0.3, 2000)]),
        "sparse": np.concatenate([np.zeros(5000), rng.exponential(1.0, 20000)]),   # many empty bins
    }[name]
    hist = _hist(samples, 256)
    ref_bin, ref_kl = reference_kl_bin(hist, 32)
    got = kl_divergences(hist, 32)
    assert kl_threshold_bin(hist, 32) == ref_bin
    assert got[ref_bin - 32] == pytest.approx(ref_kl, rel=1e-9, abs=1e-12)


def test_kl_clips_heavy_tails_but_not_uniform():
    rng = np.random.default_rng(0)
    gauss = rng.standard_normal(1_000_000)
    hist = _hist(gauss, 2048)
    width = np.abs(gauss).max() / 2048
    t = kl_threshold(hist, width, 128)
    # light tails: little to clip, the threshold stays beyond 3.5 sigma (up to the range)
    assert 3.5 < t <= np.abs(gauss).max() + 1.5 * width
    laplace = rng.laplace(size=1_000_000)
    t_laplace = kl_threshold(_hist(laplace, 2048), np.abs(laplace).max() / 2048, 128)
    assert t_laplace < 0.9 * np.abs(laplace).max()     # heavy tails: clipped
    uniform = rng.uniform(-1, 1, 1_000_000)
    t_uniform = kl_threshold(_hist(uniform, 2048), 1 / 2048, 128)
    assert t_uniform > 0.97      # nothing to clip: the threshold stays at the range


def test_percentile_threshold():
    counts = np.zeros(100, dtype=np.int64)
    counts[:90] = 1
    counts[99] = 10     # 10% outliers in the last bin
    assert percentile_threshold(counts, 0.01, 90.0) == pytest.approx(0.90)
    assert percentile_threshold(counts, 0.01, 100.0) == pytest.approx(1.0)


def test_kl_rejects_too_few_bins():
    with pytest.raises(ValueError):
        kl_divergences(np.ones(64), 128)
