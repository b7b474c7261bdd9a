"""MNIST-format idx folders and the built-in fashion_mnist (its three sources, its real files)."""

import gzip
import os

import datasets
import numpy as np
import pytest

from d3hf import DataError, load_image_classification
from d3hf.data import sources
from d3hf.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_folder(folder, rng, train=60, test=20, shape=(7, 5), classes=3, gz=True):
    """A tiny MNIST-format folder: train and t10k images and labels."""
    os.makedirs(folder, exist_ok=True)
    content = {}
    for prefix, n in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        labels = np.arange(n) % classes
        content[prefix] = (images, labels)
        for kind, array, magic in (("images-idx3", images, IMAGES_MAGIC), ("labels-idx1", labels, LABELS_MAGIC)):
            name = os.path.join(folder, f"{prefix}-{kind}-ubyte")
            data = idx_bytes(array, magic)
            if gz:
                with gzip.open(name + ".gz", "wb") as f:
                    f.write(data)
            else:
                with open(name, "wb") as f:
                    f.write(data)
    return content


def idx_cache_entries() -> list[str]:
    root = os.path.join(datasets.config.HF_DATASETS_CACHE, "d3hf_idx")
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


@pytest.mark.parametrize("gz", [True, False])
def test_an_idx_folder_loads_its_official_splits_pixel_for_pixel(tmp_path, rng, gz):
    content = write_idx_folder(tmp_path / "idx", rng, gz=gz)
    data = load_image_classification(str(tmp_path / "idx"))
    assert data.image_shape == (1, 7, 5) and data.class_names == ["0", "1", "2"]
    np.testing.assert_array_equal(data.labels("train"), content["train"][1])
    np.testing.assert_array_equal(data.labels("test"), content["t10k"][1])
    np.testing.assert_array_equal(data.images_uint8([4, 0, 9], "train")[:, 0], content["train"][0][[4, 0, 9]])
    np.testing.assert_array_equal(data.images_uint8(np.arange(3, 8), "test")[:, 0], content["t10k"][0][3:8])
    assert data.keep_train_in_memory()
    np.testing.assert_array_equal(data.images_uint8([5, 2])[:, 0], content["train"][0][[5, 2]])
    again = load_image_classification(str(tmp_path / "idx"))  # from the cache, the same rows
    assert data.fingerprint() == again.fingerprint()


@pytest.mark.parametrize("damage, message", [
    ("magic", "has magic number 0x00000801"),
    ("truncate", "declares 60x7x5 values but holds"),
    ("labels", "holds 60 images but"),
    ("gzip", "cannot be read as an idx file"),
])
def test_a_damaged_idx_file_is_refused_by_name_and_nothing_is_written(tmp_path, rng, damage, message):
    write_idx_folder(tmp_path / "idx", rng, gz=damage == "gzip")
    images = tmp_path / "idx" / "train-images-idx3-ubyte"
    labels = tmp_path / "idx" / "train-labels-idx1-ubyte"
    if damage == "magic":
        images.write_bytes(LABELS_MAGIC.to_bytes(4, "big") + images.read_bytes()[4:])
    elif damage == "truncate":
        images.write_bytes(images.read_bytes()[:-7])
    elif damage == "labels":
        labels.write_bytes(idx_bytes(np.zeros(59, np.uint8), LABELS_MAGIC))
    else:
        path = tmp_path / "idx" / "train-images-idx3-ubyte.gz"
        path.write_bytes(path.read_bytes()[:40])
    before = idx_cache_entries()
    with pytest.raises(DataError, match=message) as err:
        load_image_classification(str(tmp_path / "idx"))
    assert "train-" in str(err.value)  # the file is named
    assert idx_cache_entries() == before


def test_read_idx_refuses_a_file_too_short_for_its_header(tmp_path):
    (tmp_path / "x").write_bytes(b"\x00\x00\x08")
    with pytest.raises(DataError, match="too short"):
        read_idx(str(tmp_path / "x"), IMAGES_MAGIC)


def test_an_images_file_without_its_labels_is_named(tmp_path, rng):
    write_idx_folder(tmp_path / "idx", rng)
    os.remove(tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="but not t10k-labels-idx1-ubyte"):
        load_image_classification(str(tmp_path / "idx"))


def test_fashion_mnist_from_a_named_folder_has_the_product_names(tmp_path, rng):
    write_idx_folder(tmp_path / "fm", rng, classes=10, shape=(28, 28))
    data = load_image_classification("fashion_mnist", data_dir=str(tmp_path / "fm"))
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert "official Fashion-MNIST split" in data.source_info["split_rule"]
    with pytest.raises(DataError, match="holds no Fashion-MNIST idx files"):
        load_image_classification("fashion_mnist", data_dir=str(tmp_path))


def test_fashion_mnist_with_no_source_names_all_three_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_MNIST_DEBIAN_DIR", str(tmp_path / "absent"))

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as err:
        load_image_classification("fashion_mnist")
    text = str(err.value)
    assert "data_dir" in text and "apt-get install -y dataset-fashion-mnist" in text
    assert "zalando-datasets/fashion_mnist" in text and "no network" in text


def test_the_debian_packages_fashion_mnist_files(capsys):
    if not os.path.isdir(sources.FASHION_MNIST_DEBIAN_DIR):
        with capsys.disabled():
            print(f"\nskipped: {sources.FASHION_MNIST_DEBIAN_DIR} is absent (apt-get install -y dataset-fashion-mnist)")
        pytest.skip(f"{sources.FASHION_MNIST_DEBIAN_DIR} is absent: apt-get install -y dataset-fashion-mnist")
    data = load_image_classification("fashion_mnist")
    assert data.image_shape == (1, 28, 28) and data.num_classes == 10
    assert len(data.labels("train")) == 60_000 and len(data.labels("test")) == 10_000
    assert np.bincount(data.labels("train")).tolist() == [6000] * 10
    assert np.bincount(data.labels("test")).tolist() == [1000] * 10
    mean, std = data.normalization()
    assert mean[0] == pytest.approx(0.2860, abs=1e-3) and std[0] == pytest.approx(0.3530, abs=1e-3)
