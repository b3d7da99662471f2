"""scikit-learn's bundled digits (1,797 8x8 grayscale images, 10 classes): real data, no download."""
from __future__ import annotations

import numpy as np

from ..core.errors import DataError
from .loader import ArrayLoader


def digits(split: str = "train", batch_size: int = 64, test_fraction: float = 0.25, shuffle=None,
           seed: int = 0) -> ArrayLoader:
    """A fixed, seeded split of the digits set; pixels 0..16 scaled to [0, 1], shape N x 1 x 8 x 8."""
    if split not in ("train", "test"):
        raise DataError(f"digits split must be 'train' or 'test', got {split!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError("the digits set needs scikit-learn: pip install scikit-learn") from e
    data = load_digits()
    images = data.images.astype(np.uint8)[..., None]            # N, 8, 8, 1 with values 0..16
    order = np.random.default_rng(12345).permutation(len(images))  # fixed split, independent of `seed`
    n_test = int(round(len(images) * test_fraction))
    idx = order[n_test:] if split == "train" else order[:n_test]
    return ArrayLoader(images[idx], data.target[idx], batch_size, shuffle if shuffle is not None else split == "train",
                       None, mean=(0.5,), std=(0.5,), scale=16.0, seed=seed)
