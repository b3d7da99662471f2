"""CIFAR-10 from the JPEG archive (train/<class>/<n>.jpg, test/<class>/<n>.jpg), decoded once and cached."""
from __future__ import annotations

import os
from typing import Optional

from .image_folder import decode_archive_cached
from .loader import ArrayLoader, random_crop_flip

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
ARCHIVE = "cifar10-jpeg.tar.gz"


def find_archive(root: Optional[str] = None) -> str:
    """The archive path: `root` (file or folder), else $FXCOMPRESS_DATA, else ../shared/data beside the
    working directory or the source tree."""
    from ..core.errors import DataError
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [root] if root else [os.environ.get("FXCOMPRESS_DATA"),
                                      os.path.join(os.getcwd(), "..", "shared", "data"),
                                      os.path.join(here, "..", "..", "..", "shared", "data")]
    for c in filter(None, candidates):
        path = os.path.join(c, ARCHIVE) if os.path.isdir(c) else c
        if os.path.isfile(path):
            return os.path.abspath(path)
    raise DataError(f"CIFAR-10 archive {ARCHIVE} not found (looked in {[c for c in candidates if c]}); "
                    f"pass root=... or set FXCOMPRESS_DATA to the folder holding it")


def cifar10(root: Optional[str] = None, split: str = "train", batch_size: int = 128, augment: bool = False,
            shuffle: Optional[bool] = None, limit: Optional[int] = None, seed: int = 0,
            mean=CIFAR10_MEAN, std=CIFAR10_STD) -> ArrayLoader:
    """A loader of normalised float NCHW batches and int64 labels (classes in alphabetical order)."""
    from ..core.errors import DataError
    if split not in ("train", "test"):
        raise DataError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    images, labels, classes = decode_archive_cached(find_archive(root), split)
    if tuple(classes) != CIFAR10_CLASSES:
        raise DataError(f"archive classes {classes} are not CIFAR-10's {CIFAR10_CLASSES}")
    loader = ArrayLoader(images, labels, batch_size, shuffle if shuffle is not None else split == "train",
                         random_crop_flip(4) if augment else None, mean, std, seed=seed)
    return loader.subset(limit, seed) if limit else loader
