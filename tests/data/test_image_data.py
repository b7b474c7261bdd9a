"""d3hf.data.image_data: errors in the user's data, the data object and its views."""

import dataclasses

import datasets
import numpy as np
import pytest
import torch

from d3hf import DataError, load_image_classification
from tests.helpers import image_dataset, labelled_images

# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, missing", [({"image_column": "img"}, "img"), ({"label_column": "target"}, "target")])
def test_missing_column_is_a_data_error_naming_it(tmp_path, rng, kwargs, missing):
    images, labels = labelled_images(rng)
    image_dataset(images, labels).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match=repr(missing)):
        load_image_classification(str(tmp_path / "ds"), **kwargs)


def test_string_label_column_is_a_data_error(tmp_path, rng):
    images, labels = labelled_images(rng)
    ds = datasets.Dataset.from_dict(
        {"image": list(images), "label": [f"class{v}" for v in labels]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")}),
    )
    ds.save_to_disk(str(tmp_path / "s"))
    with pytest.raises(DataError, match="label"):
        load_image_classification(str(tmp_path / "s"))


def test_missing_path_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_classification(str(tmp_path / "nowhere" / "data"))


def test_impossible_stratified_split_is_a_data_error(tmp_path):
    ds = datasets.Dataset.from_dict({"image": [np.zeros((4, 4), np.uint8)] * 400, "label": np.repeat(np.arange(200), 2)})
    ds.save_to_disk(str(tmp_path / "many"))
    with pytest.raises(DataError):
        load_image_classification(str(tmp_path / "many"))


# ----------------------------------------------------------------------------- the data object


def test_class_rows_cover_every_row_once(digits):
    rows = digits.class_rows
    assert len(rows) == 10
    all_rows = np.concatenate(rows)
    np.testing.assert_array_equal(np.sort(all_rows), np.arange(1437))
    for c, r in enumerate(rows):
        assert (digits.labels()[r] == c).all()


def test_images_are_float_in_unit_range(digits):
    x = digits.images([0, 5, 9])
    assert x.dtype == torch.float32
    assert tuple(x.shape) == (3, 1, 8, 8)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(x.max()) == 1.0  # digits reach full white
    np.testing.assert_allclose(x.numpy(), digits.images_uint8([0, 5, 9]) / 255.0, atol=1e-7)


def test_normalization_matches_numpy(digits):
    pixels = digits.images_uint8(np.arange(1437)).astype(np.float64) / 255.0
    mean, std = digits.normalization()
    assert mean == pytest.approx([pixels.mean()], abs=1e-9)
    assert std == pytest.approx([pixels.std()], abs=1e-9)


def test_subset_relabels_and_keeps_only_its_rows(digits):
    view = digits.subset([3, 7])
    assert view.class_names == ["3", "7"]
    assert view.num_classes == 2
    assert sorted(set(view.labels().tolist())) == [0, 1]
    for new, old in enumerate([3, 7]):
        np.testing.assert_array_equal(
            np.sort(np.asarray(view.train["source_row"])[view.class_rows[new]]),
            np.sort(np.asarray(digits.train["source_row"])[digits.class_rows[old]]),
        )
        np.testing.assert_array_equal(
            view.images_uint8(view.class_rows[new]), digits.images_uint8(np.sort(digits.class_rows[old]))
        )
    assert len(view.labels("test")) == int(np.isin(digits.labels("test"), [3, 7]).sum())
    assert (np.asarray(view.test["label"]) == np.where(view.labels("test") == 0, 3, 7)).all()
    # the order of the classes decides the new ids
    flipped = digits.subset([7, 3])
    assert (np.asarray(flipped.train["label"])[flipped.class_rows[0]] == 7).all()


def test_subset_normalization_does_not_depend_on_call_order(digits):
    fresh = dataclasses.replace(digits, _stats=None, _class_rows=None, _train_labels=None, _test_labels=None)
    before = fresh.subset([3, 7]).normalization()
    fresh.normalization()
    after = fresh.subset([3, 7]).normalization()
    assert np.allclose(np.ravel(before), np.ravel(after)), (before, after)


def test_large_rgb_many_class_dataset_smoke(tmp_path, rng):
    """64x64x3, 200 classes, 2 train rows + 1 test row per class."""
    classes = 200
    base = rng.integers(0, 256, (classes, 64, 64, 3), dtype=np.uint8)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=classes)})

    def split(rows_per_class):
        labels = np.repeat(np.arange(classes), rows_per_class)
        return datasets.Dataset.from_dict({"image": list(base[labels]), "label": labels}, features=feats)

    datasets.DatasetDict({"train": split(2), "test": split(1)}).save_to_disk(str(tmp_path / "big"))
    data = load_image_classification(str(tmp_path / "big"))
    assert data.num_classes == classes
    assert data.image_shape == (3, 64, 64)
    assert [len(r) for r in data.class_rows] == [2] * classes
    gen = np.random.default_rng(0)
    for c in (0, 117, 199):
        batch = data.sample_class(c, 2, gen)
        assert tuple(batch.shape) == (2, 3, 64, 64)
        expected = base[c].transpose(2, 0, 1) / 255.0
        np.testing.assert_allclose(batch.numpy(), np.broadcast_to(expected, batch.shape), atol=1e-6)


def test_validation_split_is_carved_from_train_and_hides_the_test_split(digits):
    tuned = digits.with_validation_split(0.2, seed=0)
    assert len(tuned.labels("train")) + len(tuned.labels("test")) == len(digits.labels("train"))
    assert tuned.test.num_rows == len(tuned.labels("test")) and tuned.source_info["test_split"] == "validation"
    train_rows = set(tuned.train["source_row"]) | set(tuned.test["source_row"])
    assert train_rows == set(digits.train["source_row"])
    assert not set(tuned.test["source_row"]) & set(tuned.train["source_row"])
    assert not train_rows & set(digits.test["source_row"])
    assert np.bincount(tuned.labels("test")).min() >= 1
    assert tuned.images_uint8([0], "test").shape == (1, 1, 8, 8)


def test_train_split_in_memory_reads_the_same_pixels_and_views_share_them():
    from d3hf import load_image_classification

    on_disk, in_memory = load_image_classification("digits"), load_image_classification("digits")
    assert in_memory.keep_train_in_memory()
    rows = np.array([5, 0, 1436, 7])
    np.testing.assert_array_equal(in_memory.images_uint8(rows), on_disk.images_uint8(rows))
    view, disk_view = in_memory.subset([3, 7]), on_disk.subset([3, 7])
    assert view._train_pixels is not None  # sliced from the whole split's copy, not decoded again
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    assert torch.equal(view.sample_class(1, 9, rng_a), disk_view.sample_class(1, 9, rng_b))
    np.testing.assert_array_equal(in_memory.images_uint8([2], "test"), on_disk.images_uint8([2], "test"))
    assert not load_image_classification("digits").keep_train_in_memory(max_bytes=1000)  # over the bound: on disk


def _dataset_dict(tmp_path, rng, splits: dict[str, int], shape=(8, 8)) -> str:
    parts = {}
    for name, per_class in splits.items():
        images, labels = labelled_images(rng, per_class, shape)
        parts[name] = image_dataset(images, labels)
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "data"))
    return str(tmp_path / "data")


@pytest.mark.parametrize("held_out", ["validation", "valid"])
def test_a_validation_or_valid_split_is_the_held_out_split_before_any_is_carved(tmp_path, rng, caplog, held_out):
    path = _dataset_dict(tmp_path, rng, {"train": 6, held_out: 2})
    with caplog.at_level("INFO", logger="d3hf.data.image_data"):
        data = load_image_classification(path)
    assert data.source_info["test_split"] == held_out and len(data.labels("test")) == 6
    assert len(data.labels()) == 18  # nothing carved off train
    assert f"its {held_out!r} split is the held-out split" in caplog.text


def test_a_test_split_wins_and_a_source_without_one_is_carved_with_a_log(tmp_path, rng, caplog):
    both = load_image_classification(_dataset_dict(tmp_path / "a", rng, {"train": 6, "validation": 2, "test": 3}))
    assert both.source_info["test_split"] == "test" and len(both.labels("test")) == 9
    with caplog.at_level("INFO", logger="d3hf.data.image_data"):
        carved = load_image_classification(_dataset_dict(tmp_path / "b", rng, {"train": 10}), test_size=0.2)
    assert carved.source_info["test_split"] == "train[stratified 0.2]" and len(carved.labels("test")) == 6
    assert "no held-out split (none of test, validation, valid)" in caplog.text


def test_a_test_split_named_by_the_user_must_exist(tmp_path, rng):
    path = _dataset_dict(tmp_path, rng, {"train": 6, "validation": 2})
    with pytest.raises(DataError, match=r"no split 'heldout'; its splits are \['train', 'validation'\]"):
        load_image_classification(path, test_split="heldout")


def test_image_size_and_channels_convert_every_image(tmp_path, rng):
    path = _dataset_dict(tmp_path, rng, {"train": 4, "test": 1})
    plain = load_image_classification(path)
    small = load_image_classification(path, image_size=(4, 6), channels="RGB")
    assert plain.image_shape == (1, 8, 8) and small.image_shape == (3, 4, 6)
    batch = small.images_uint8(np.arange(3))
    assert batch.shape == (3, 3, 4, 6) and small.images_uint8([0], "test").shape == (1, 3, 4, 6)
    assert np.array_equal(batch[:, 0], batch[:, 2])  # grey made RGB: equal channels
    from PIL import Image

    expected = np.asarray(Image.fromarray(plain.images_uint8([0])[0, 0]).resize((6, 4), Image.BILINEAR))
    assert np.array_equal(batch[0, 0], expected)
    assert "resized (bilinear) to 4x6" in small.source_info["image_transform"]
    assert small.fingerprint() != plain.fingerprint()
    assert "image_transform" not in load_image_classification(path, image_size=(8, 8)).source_info
    with pytest.raises(DataError, match="channels must be one of"):
        load_image_classification(path, channels="CMYK")


def test_image_size_and_channels_are_distill_settings(tmp_path):
    from d3hf.commands.distill import parse_distill_args
    from d3hf.distill.runner import load_data

    cfg = tmp_path / "r.yaml"
    cfg.write_text("dataset: digits\nimage_size: 4\nchannels: RGB\n")
    args = parse_distill_args([str(cfg)])
    assert args.data.image_hw() == (4, 4)
    assert load_data(args.data, 0).image_shape == (3, 4, 4)


def test_a_train_split_over_the_memory_allowed_is_decoded_once_into_a_mapped_file(tmp_path):
    in_memory = load_image_classification("digits")
    assert in_memory.keep_train_in_memory()
    spilled = load_image_classification("digits")
    assert not spilled.keep_train_in_memory(max_bytes=0)  # no folder given: every read decodes
    assert spilled.keep_train_in_memory(max_bytes=0, spill_dir=str(tmp_path))
    (path,) = tmp_path.iterdir()
    assert path.name == f"train-{spilled.fingerprint()}.npy" and isinstance(spilled._train_pixels, np.memmap)
    rows = np.array([5, 0, 77, 3])
    assert np.array_equal(spilled.images_uint8(rows), in_memory.images_uint8(rows))
    mtime = path.stat().st_mtime_ns
    again = load_image_classification("digits")
    assert again.keep_train_in_memory(max_bytes=0, spill_dir=str(tmp_path))  # a resumed run maps the same file
    assert path.stat().st_mtime_ns == mtime and np.array_equal(again.images_uint8(rows), in_memory.images_uint8(rows))
    again.remove_decoded_file()  # a finished subtask keeps no copy; reads still work while mapped
    assert not path.exists() and np.array_equal(again.images_uint8(rows), in_memory.images_uint8(rows))
