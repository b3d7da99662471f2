"""Image folders (root/<class>/<image>), as a directory or a .tar(.gz) archive, decoded into uint8 arrays.

Decoding tens of thousands of JPEGs takes a while, so archives are decoded once and cached as .npz in
$FXCOMPRESS_CACHE (default ~/.cache/fxcompress), keyed by the archive's name, size and mtime.
"""
from __future__ import annotations

import io
import os
import tarfile
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..core.errors import DataError
from ..core.files import atomic_output
from .loader import ArrayLoader

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def cache_dir() -> str:
    path = os.environ.get("FXCOMPRESS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fxcompress")
    os.makedirs(path, exist_ok=True)
    return path


def _decode(data: bytes, name: str, size: Optional[Tuple[int, int]]) -> np.ndarray:
    try:
        img = Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as e:
        raise DataError(f"cannot decode image {name}: {e}") from e
    if size is not None and img.size != size:
        img = img.resize(size, Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _stack(items, name: str):
    if not items:
        raise DataError(f"no images found in {name} (expected <class>/<image> files)")
    classes = sorted({c for c, _ in items})
    index = {c: i for i, c in enumerate(classes)}
    shapes = {a.shape for _, a in items}
    if len(shapes) > 1:
        raise DataError(f"images in {name} have different sizes {sorted(shapes)[:3]}; pass image_size=(w, h)")
    images = np.stack([a for _, a in items])
    labels = np.array([index[c] for c, _ in items], dtype=np.int64)
    return images, labels, classes


def decode_archive(path: str, split: str = "", size=None):
    """(images uint8 NHWC, labels, classes) from the members <split>/<class>/<image> of a tar archive."""
    prefix = f"{split}/" if split else ""
    items = []
    try:
        with tarfile.open(path) as tar:
            for member in tqdm(tar, desc=f"decoding {os.path.basename(path)} {split}", unit="img", leave=False):
                parts = member.name.lstrip("./").split("/")
                if not member.isfile() or not member.name.lstrip("./").startswith(prefix) \
                        or not member.name.lower().endswith(IMAGE_EXTENSIONS) or len(parts) < 2:
                    continue
                items.append((parts[-2], _decode(tar.extractfile(member).read(), member.name, size)))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot read archive {path}: {e}") from e
    items.sort(key=lambda x: x[0])  # stable: keeps archive order within a class
    return _stack(items, f"{path}:{prefix or '/'}")


def decode_archive_cached(path: str, split: str = "", size=None):
    st = os.stat(path)
    key = f"{os.path.basename(path)}-{st.st_size}-{int(st.st_mtime)}-{split or 'all'}-{size or 'native'}.npz"
    cached = os.path.join(cache_dir(), key)
    if os.path.isfile(cached):
        with np.load(cached, allow_pickle=False) as z:
            return z["images"], z["labels"], [str(c) for c in z["classes"]]
    images, labels, classes = decode_archive(path, split, size)
    with atomic_output(cached, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=images, labels=labels, classes=np.array(classes))
    return images, labels, classes


def decode_folder(root: str, size=None):
    if not os.path.isdir(root):
        raise DataError(f"image folder {root} does not exist")
    items = []
    for cls in sorted(os.listdir(root)):
        folder = os.path.join(root, cls)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                with open(os.path.join(folder, name), "rb") as f:
                    items.append((cls, _decode(f.read(), os.path.join(folder, name), size)))
    return _stack(items, root)


def image_folder(path: str, batch_size: int = 64, image_size: Optional[Tuple[int, int]] = None,
                 shuffle: bool = False, augment=None, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225), split: str = "", seed: int = 0) -> ArrayLoader:
    """A loader over <path>/<class>/<image> (a directory, or a tar archive with an optional split prefix)."""
    if os.path.isdir(path):
        images, labels, _ = decode_folder(os.path.join(path, split) if split else path, image_size)
    elif os.path.isfile(path):
        images, labels, _ = decode_archive_cached(path, split, image_size)
    else:
        raise DataError(f"image folder or archive {path} does not exist")
    return ArrayLoader(images, labels, batch_size, shuffle, augment, mean, std, seed=seed)
