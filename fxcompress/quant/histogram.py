"""A streaming histogram of |x| with a fixed number of bins over [0, range].

Batches are added one at a time; memory is the bins alone, whatever the number of samples. When a
batch exceeds the current range, the range grows by a power of two and old bins merge in groups of
that size: bin edges stay nested, so the result equals a one-shot histogram of all the data over
the final range (scaling by a power of two is exact in floating point).
"""
from __future__ import annotations

import math

import numpy as np
import torch


class StreamingHistogram:
    def __init__(self, num_bins: int = 2048):
        if num_bins < 2 or num_bins & (num_bins - 1):
            raise ValueError(f"num_bins must be a power of two >= 2 (re-binning merges bins pairwise), got {num_bins}")
        self.num_bins = num_bins
        self.counts = np.zeros(num_bins, dtype=np.int64)
        self.range = 0.0          # upper edge of the last bin; 0 until a non-zero value is seen
        self.pending_zeros = 0    # zeros seen before the range is known

    @property
    def bin_width(self) -> float:
        return self.range / self.num_bins

    @property
    def total(self) -> int:
        return int(self.counts.sum()) + self.pending_zeros

    def update(self, magnitudes: torch.Tensor) -> None:
        """Add a tensor of non-negative values (|x|, or x for non-negative tensors)."""
        a = magnitudes.detach().reshape(-1)
        if a.numel() == 0:
            return
        amax = float(a.max())
        if amax == 0.0:
            if self.range == 0.0:
                self.pending_zeros += a.numel()
            else:
                self.counts[0] += a.numel()
            return
        if self.range == 0.0:
            # strictly above the max: no value sits on the closing edge, so later merges stay exact
            self.range = amax * (1.0 + 2.0 ** -20)
            self.counts[0] += self.pending_zeros
            self.pending_zeros = 0
        elif amax >= self.range:
            self._grow(amax)
        norm = self.num_bins / self.range
        idx = (a * norm).floor_().clamp_(max=self.num_bins - 1).long()
        self.counts += torch.bincount(idx, minlength=self.num_bins).cpu().numpy()

    def _grow(self, amax: float) -> None:
        factor = 2 ** max(1, math.ceil(math.log2(amax / self.range)))
        while self.range * factor <= amax:  # guard against log2 rounding; keep the range above the max
            factor *= 2
        self.range *= factor
        if factor >= self.num_bins:
            merged = np.zeros(self.num_bins, dtype=np.int64)
            merged[0] = self.counts.sum()
        else:
            merged = np.zeros(self.num_bins, dtype=np.int64)
            merged[: self.num_bins // factor] = self.counts.reshape(-1, factor).sum(axis=1)
        self.counts = merged
