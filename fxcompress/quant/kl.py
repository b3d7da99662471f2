"""Choosing a clipping threshold from a histogram of |x|: KL divergence (TensorRT), percentile.

The KL search follows TensorRT's entropy calibration (Migacz, GTC 2017): for every candidate
clip bin i in [num_quantized_bins, num_bins], P = the first i bins with the outliers folded into
the last one, Q = those i bins merged into num_quantized_bins levels and expanded back over the
non-empty bins; choose the i minimising KL(P || Q); threshold = (i + 0.5) * bin width.
All candidates are evaluated at once with cumulative sums (no Python loop over bins).
"""
from __future__ import annotations

import numpy as np

SMOOTHING_EPS = 1e-4   # counts moved onto empty bins so KL stays finite (as in MXNet / onnxruntime)


def _smooth(dist: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Row-wise on counts: give each empty (valid) bin eps, taken evenly from the non-empty ones
    (non-empty bins hold >= 1 count, so they stay positive)."""
    zeros = (dist == 0) & valid
    nonzeros = (dist != 0) & valid
    n_zero = zeros.sum(axis=1, keepdims=True)
    n_nonzero = np.maximum(nonzeros.sum(axis=1, keepdims=True), 1)
    return dist + SMOOTHING_EPS * zeros - SMOOTHING_EPS * (n_zero / n_nonzero) * nonzeros


def kl_divergences(counts: np.ndarray, num_quantized_bins: int = 128, chunk: int = 256) -> np.ndarray:
    """KL(P_i || Q_i) for every candidate i = num_quantized_bins .. len(counts) (index 0 is i = nq)."""
    hist = np.asarray(counts, dtype=np.float64)
    n, nq = hist.size, num_quantized_bins
    if n < nq:
        raise ValueError(f"histogram has {n} bins, fewer than num_quantized_bins={nq}")
    csum = np.concatenate([[0.0], np.cumsum(hist)])
    cnz = np.concatenate([[0], np.cumsum(hist != 0)])
    total = csum[-1]
    cols = np.arange(n)
    out = np.empty(n - nq + 1)
    for lo in range(nq, n + 1, chunk):
        cand = np.arange(lo, min(lo + chunk, n + 1))                     # candidate clip bins i
        valid = cols[None, :] < cand[:, None]                             # bins 0..i-1
        # P: first i bins, outliers (bins >= i) added to bin i-1
        p = np.where(valid, hist[None, :], 0.0)
        p[np.arange(cand.size), cand - 1] += total - csum[cand]
        # Q: bins 0..i-1 merged into nq groups of i // nq bins (the last group takes the remainder)
        width = cand // nq
        group = np.minimum(cols[None, :] // width[:, None], nq - 1)
        start = group * width[:, None]
        stop = np.where(group == nq - 1, cand[:, None], start + width[:, None])
        stop = np.minimum(stop, cand[:, None])
        start = np.minimum(start, cand[:, None])
        group_sum = csum[stop] - csum[start]
        group_nonzero = cnz[stop] - cnz[start]
        q = np.where(valid & (hist[None, :] != 0), group_sum / np.maximum(group_nonzero, 1), 0.0)
        p, q = _smooth(p, valid), _smooth(q, valid)
        p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
        q /= np.maximum(q.sum(axis=1, keepdims=True), 1e-300)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(valid & (p > 0), p * np.log(p / q), 0.0)
        out[cand - nq] = terms.sum(axis=1)
    return out


def kl_threshold_bin(counts: np.ndarray, num_quantized_bins: int = 128) -> int:
    """The clip bin i (number of bins kept) minimising KL divergence."""
    div = kl_divergences(counts, num_quantized_bins)
    return int(np.argmin(div)) + num_quantized_bins


def kl_threshold(counts: np.ndarray, bin_width: float, num_quantized_bins: int = 128) -> float:
    """TensorRT's threshold (m + 0.5) * width, m being the number of bins kept by the best candidate."""
    i = kl_threshold_bin(counts, num_quantized_bins)
    return (i + 0.5) * bin_width


def percentile_threshold(counts: np.ndarray, bin_width: float, percentile: float) -> float:
    """Upper edge of the first bin at which the cumulative count reaches `percentile`% of the total."""
    csum = np.cumsum(np.asarray(counts, dtype=np.float64))
    if csum[-1] == 0:
        return 0.0
    idx = int(np.searchsorted(csum, csum[-1] * percentile / 100.0, side="left"))
    return (min(idx, counts.size - 1) + 1) * bin_width
