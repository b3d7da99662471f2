import numpy as np
import pytest
import torch

from fxcompress import DataError
from fxcompress.data import ArrayLoader, random_crop_flip, unpack_batch


def images(n=10, h=6, w=6):
    return np.arange(n * h * w * 3, dtype=np.int64).reshape(n, h, w, 3).astype(np.uint8), np.arange(n)


def test_batches_are_normalised_and_complete():
    x, y = images()
    loader = ArrayLoader(x, y, batch_size=4, mean=(0.5,) * 3, std=(0.25,) * 3)
    batches = list(loader)
    assert len(loader) == 3 == len(batches) and [len(b[1]) for b in batches] == [4, 4, 2]
    first = batches[0][0]
    assert first.shape == (4, 3, 6, 6)
    assert torch.allclose(first[0, :, 0, 0], (torch.tensor(x[0, 0, 0], dtype=torch.float32) / 255 - 0.5) / 0.25)


def test_shuffle_depends_only_on_seed_and_epoch():
    x, y = images(50)
    a, b = ArrayLoader(x, y, 10, shuffle=True, seed=1), ArrayLoader(x, y, 10, shuffle=True, seed=1)
    order = lambda loader: torch.cat([t for _, t in loader]).tolist()
    assert order(a) == order(b) and sorted(order(a)) == list(range(50))
    a.set_epoch(1)
    assert order(a) != order(b)


def test_shards_partition_the_epoch():
    x, y = images(11)
    seen = []
    for rank in range(2):
        loader = ArrayLoader(x, y, 3, shuffle=True).shard(rank, 2)
        seen += torch.cat([t for _, t in loader]).tolist()
        assert len(loader) == 2
    assert set(seen) == set(range(11)) and len(seen) == 12  # one sample repeated to keep ranks in step


def test_random_crop_flip_is_a_shifted_window():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) + 1
    out = random_crop_flip(2)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for i in range(2):  # every non-padding value comes from the image, in order along rows (or reversed)
        row = out[i, 0, 2][out[i, 0, 2] > 0]
        diffs = row[1:] - row[:-1]
        assert (diffs.abs() == 1).all() and len(set(diffs.sign().tolist())) <= 1


def test_errors():
    with pytest.raises(DataError, match="empty"):
        ArrayLoader(np.zeros((0, 2, 2, 3), np.uint8), np.zeros(0))
    with pytest.raises(DataError, match="labels"):
        ArrayLoader(np.zeros((2, 2, 2, 3), np.uint8), np.zeros(3))
    with pytest.raises(DataError, match="tensor or"):
        unpack_batch("x")
