import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from fxcompress import DataError
from fxcompress.data import cifar10, digits, image_folder


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FXCOMPRESS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_cifar10_from_the_shared_archive(shared_dir, monkeypatch):
    monkeypatch.setenv("FXCOMPRESS_DATA", os.path.join(shared_dir, "data"))
    test = cifar10(split="test", batch_size=500)
    assert test.num_samples == 10_000 and np.bincount(test.labels.numpy()).tolist() == [1000] * 10
    cached = os.listdir(os.environ["FXCOMPRESS_CACHE"])
    assert any(name.endswith("-test-native.npz") for name in cached)
    again = cifar10(split="test", batch_size=500)  # from the cache: same arrays
    assert (again.images == test.images).all()
    x = next(iter(test))[0]
    assert x.shape == (500, 3, 32, 32)
    everything = torch.cat([b for b, _ in test])  # normalised with CIFAR-10's own statistics
    assert everything.mean((0, 2, 3)).abs().max() < 0.1 and (everything.std((0, 2, 3)) - 1).abs().max() < 0.1
    train = cifar10(split="train", augment=True, limit=1000)
    assert train.num_samples == 1000 and train.shuffle and train.augment is not None


def test_missing_archive_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        cifar10(root=str(tmp_path))
    with pytest.raises(DataError, match="split"):
        cifar10(split="val")


def write_images(root, classes=("cat", "dog"), per_class=3, size=(5, 4)):
    for c in classes:
        os.makedirs(root / c, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((size[1], size[0], 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")


def test_image_folder_directory_and_tar(tmp_path):
    write_images(tmp_path / "imgs" / "train")
    loader = image_folder(str(tmp_path / "imgs"), batch_size=4, split="train", mean=(0,) * 3, std=(1,) * 3)
    assert loader.num_samples == 6 and sorted(set(loader.labels.tolist())) == [0, 1]
    with tarfile.open(tmp_path / "imgs.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "imgs" / "train", arcname="train")
    from_tar = image_folder(str(tmp_path / "imgs.tar.gz"), split="train", mean=(0,) * 3, std=(1,) * 3)
    assert (from_tar.images == loader.images).all() and (from_tar.labels == loader.labels).all()
    resized = image_folder(str(tmp_path / "imgs" / "train"), image_size=(8, 8))
    assert resized.images.shape[-2:] == (8, 8)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        image_folder(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        image_folder(str(tmp_path / "empty"))
    write_images(tmp_path / "mixed", ("a",), 1, (4, 4))
    write_images(tmp_path / "mixed", ("b",), 1, (6, 6))
    with pytest.raises(DataError, match="different sizes"):
        image_folder(str(tmp_path / "mixed"))
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "a" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot decode image"):
        image_folder(str(tmp_path / "broken"))


def test_digits_split_is_fixed_and_disjoint():
    train, test = digits("train"), digits("test")
    assert train.num_samples + test.num_samples == 1797 and test.num_samples == 449
    x, _ = next(iter(test))
    assert x.shape[1:] == (1, 8, 8) and x.min() >= -1 and x.max() <= 1
