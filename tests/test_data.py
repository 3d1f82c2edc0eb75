import gzip

import numpy as np
import pytest
from conftest import write_fake_fashion_mnist
from PIL import Image

from dacd.data import (
    FASHION_MNIST_CLASSES,
    DatasetError,
    load_dataset,
    load_fashion_mnist,
    load_image_folder,
    read_idx,
    resolve_class,
    slugify,
    write_idx,
)


def test_idx_round_trip_plain_and_gz(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("x-idx3-ubyte", "x-idx3-ubyte.gz"):
        write_idx(tmp_path / name, a)
        np.testing.assert_array_equal(read_idx(tmp_path / name, expected_ndim=3), a)


def test_fashion_mnist_reader_pads_and_ids(fake_fmnist):
    tr, te = load_fashion_mnist("train", fake_fmnist), load_fashion_mnist("test", fake_fmnist)
    assert tr.images.shape == (300, 1, 32, 32) and te.images.shape == (100, 1, 32, 32)
    assert tr.images.dtype == np.uint8
    # padded, not resized: a 2-pixel border of background around the original 28x28
    assert tr.images[:, :, :2].max() == 0 and tr.images[:, :, :, -2:].max() == 0
    assert len(set(tr.ids) | set(te.ids)) == 400  # unique across splits
    assert tr.ids[5] == "train:5" and load_fashion_mnist("train", fake_fmnist).ids[5] == "train:5"  # stable
    assert tr.class_names == FASHION_MNIST_CLASSES and tr.class_names[0] == "T-shirt/top"


def test_env_var_overrides_default(fake_fmnist, monkeypatch):
    monkeypatch.setenv("DACD_FASHION_MNIST_DIR", str(fake_fmnist))
    assert len(load_dataset("fashion-mnist", "test")) == 100


def test_uncompressed_files(tmp_path):
    folder = write_fake_fashion_mnist(tmp_path / "raw", 20, 10, gz=False)
    assert len(load_fashion_mnist("train", folder)) == 20


def test_missing_dataset_names_the_fix(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte"):
        load_fashion_mnist("train", tmp_path / "empty")


def test_wrong_magic_number(tmp_path):
    folder = write_fake_fashion_mnist(tmp_path / "d", 20, 10)
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 0x0D, 1]) + (20).to_bytes(4, "big") + bytes(20))
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte.gz has magic number 0x00000d01"):
        load_fashion_mnist("train", folder)


def test_truncated_file(tmp_path):
    folder = write_fake_fashion_mnist(tmp_path / "d", 20, 10)
    data = gzip.open(folder / "train-images-idx3-ubyte.gz").read()
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(data[:-100])
    with pytest.raises(DatasetError, match="truncated or corrupted"):
        load_fashion_mnist("train", folder)


def test_not_gzip(tmp_path):
    folder = write_fake_fashion_mnist(tmp_path / "d", 20, 10)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"not a gzip file at all")
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz"):
        load_fashion_mnist("test", folder)


def test_mismatched_counts(tmp_path):
    folder = write_fake_fashion_mnist(tmp_path / "d", 20, 10)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(19, np.uint8))
    with pytest.raises(DatasetError, match="20 images but .* 19 labels"):
        load_fashion_mnist("train", folder)


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "train" / cls / f"{i}.png")
    ds = load_image_folder(tmp_path, "train", image_size=32)
    assert ds.class_names == ("cat", "dog")
    assert ds.images.shape == (6, 3, 32, 32) and list(ds.labels) == [0, 0, 0, 1, 1, 1]
    assert ds.ids[0] == "train:cat/0.png"
    with pytest.raises(DatasetError, match="no class subfolders"):
        load_image_folder(tmp_path / "train" / "cat")


def test_class_names_and_slugs():
    assert slugify("T-shirt/top") == "t-shirt-top" and slugify("Ankle boot") == "ankle-boot"
    assert resolve_class("shirt", FASHION_MNIST_CLASSES) == 6
    assert resolve_class("ankle-boot", FASHION_MNIST_CLASSES) == 9
    assert resolve_class(3, FASHION_MNIST_CLASSES) == 3
    for bad in ("jacket", 10, -1, True):
        with pytest.raises(ValueError, match="Unknown class"):
            resolve_class(bad, FASHION_MNIST_CLASSES)
