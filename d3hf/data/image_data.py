"""Image-classification data: fixed splits, per-class row index, batch decoding.

Rows stay in Arrow; images are decoded to uint8 a batch at a time, and only the batch the
caller asks for becomes a float tensor.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import DataError
from .sources import EMBEDDED_DATASETS, load_source

logger = logging.getLogger(__name__)

# Decoded train images kept in memory per task at most (``keep_train_in_memory``).
DEFAULT_MEMORY_BYTES = 2 * 2**30

# ----------------------------------------------------------------------------- images


def _to_uint8_array(image: Any, scale: float) -> np.ndarray:
    """One image (PIL, uint8 or float array, HW / HWC / CHW) as a uint8 HWC array."""
    if hasattr(image, "mode"):  # PIL
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB" if image.mode in ("RGBA", "P", "CMYK", "YCbCr", "LA") else "L")
        arr = np.asarray(image)
    else:
        arr = np.asarray(image)
        if arr.dtype.kind == "f" or scale != 1.0:
            if not np.isfinite(arr).all():
                raise DataError("An image holds NaN or infinite pixel values; clean the dataset first.")
            arr = np.clip(np.rint(arr.astype(np.float64) * scale), 0, 255)
        arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.ndim != 3:
        raise DataError(f"An image has shape {arr.shape}; expected HxW, HxWxC or CxHxW.")
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    return arr


def _whole_column(table, column: str) -> np.ndarray:
    """One column of every row, read in one piece (``table[column]`` iterates row by row: 12 s
    for Fashion-MNIST's 70,000 labels against 0.02 s)."""
    return np.asarray(table.select_columns([column])[:][column])


def _decode_row(table, index: int, column: str, split: str):
    try:
        return table[index][column]
    except (TypeError, ValueError, OSError) as err:
        raise DataError(f"Row {index} of the {split} split is not a readable image ({err}); fix or drop that row.") \
            from err


def _fit(arr: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Convert channels and resize (bilinear) to ``shape`` = (C, H, W)."""
    c, h, w = shape
    if arr.shape[-1] != c:
        if c == 1:  # ITU-R 601 luma, as PIL's "L" conversion
            arr = np.rint(arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
            arr = arr.astype(np.uint8)[..., None]
        else:
            arr = np.repeat(arr[..., :1], c, axis=-1)
    if arr.shape[:2] != (h, w):
        from PIL import Image as PILImage

        if c == 1:
            arr = np.asarray(PILImage.fromarray(arr[..., 0]).resize((w, h), PILImage.BILINEAR))[..., None]
        else:
            arr = np.asarray(PILImage.fromarray(arr).resize((w, h), PILImage.BILINEAR))
    return arr


# ----------------------------------------------------------------------------- the data object


@dataclass(frozen=True)
class PixelMoments:
    """Pixel count and per-channel sums of values and squares, as exact integers, so sums
    over shards give the same statistics in any order and on any number of processes."""

    count: int
    sums: tuple[int, ...]
    squares: tuple[int, ...]

    @classmethod
    def zero(cls, channels: int) -> "PixelMoments":
        return cls(0, (0,) * channels, (0,) * channels)

    @classmethod
    def of(cls, batch: np.ndarray) -> "PixelMoments":
        """Moments of a uint8 batch (N, C, H, W)."""
        wide = batch.astype(np.int64)
        return cls(int(batch.shape[0] * batch.shape[2] * batch.shape[3]),
                   tuple(int(v) for v in wide.sum(axis=(0, 2, 3))), tuple(int(v) for v in (wide * wide).sum(axis=(0, 2, 3))))

    def __add__(self, other: "PixelMoments") -> "PixelMoments":
        return PixelMoments(self.count + other.count, tuple(a + b for a, b in zip(self.sums, other.sums)),
                            tuple(a + b for a, b in zip(self.squares, other.squares)))

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std in [0, 1] pixel units."""
        if self.count == 0:
            raise DataError("No training images to compute normalisation statistics from.")
        mean = [s / self.count / 255.0 for s in self.sums]
        var = [q / self.count / 255.0**2 - m * m for q, m in zip(self.squares, mean)]
        return mean, [math.sqrt(max(v, 1e-12)) for v in var]


@dataclass
class ImageClassificationData:
    """A train split (and optional test split) of an image-classification dataset.

    Labels are contiguous class ids ``0..num_classes-1``; ``class_names[i]`` names class i.
    Images of other sizes or channel counts than the first training image are resized
    (bilinear) and converted to its shape.
    """

    train: Any
    test: Any | None
    image_column: str
    label_column: str
    class_names: list[str]
    image_shape: tuple[int, int, int]
    source_info: dict = field(default_factory=dict)
    pixel_scale: float = 1.0
    _label_map: dict | None = None
    _train_labels: np.ndarray | None = None
    _test_labels: np.ndarray | None = None
    _class_rows: list | None = None
    _stats: tuple | None = None
    _parent: "ImageClassificationData | None" = None
    _train_pixels: np.ndarray | None = None  # the train split decoded once (``keep_train_in_memory``)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _map_labels(self, raw: Sequence) -> np.ndarray:
        raw = np.asarray(raw)
        if self._label_map is None:
            return raw.astype(np.int64)
        values = raw.tolist()
        unknown = sorted({v for v in values if v not in self._label_map}, key=str)
        if unknown:
            raise DataError(f"Label value(s) {unknown[:10]} in column {self.label_column!r} never occur in the train "
                            f"split, whose classes are {sorted(self._label_map, key=str)[:20]}; every split must "
                            "use the train split's labels.")
        return np.array([self._label_map[v] for v in values], dtype=np.int64)

    def labels(self, split: str = "train") -> np.ndarray:
        """Class ids of every row of a split (read from the label column only)."""
        if split == "train":
            if self._train_labels is None:
                self._train_labels = self._map_labels(_whole_column(self.train, self.label_column))
            return self._train_labels
        if self.test is None:
            raise DataError("This dataset has no test split.")
        if self._test_labels is None:
            self._test_labels = self._map_labels(_whole_column(self.test, self.label_column))
        return self._test_labels

    @property
    def class_rows(self) -> list[np.ndarray]:
        """For each class, the indices of its rows in the train split."""
        if self._class_rows is None:
            labels = self.labels("train")
            self._class_rows = [np.flatnonzero(labels == c) for c in range(self.num_classes)]
        return self._class_rows

    @property
    def train_in_memory(self) -> bool:
        """Whether the train split was decoded into memory (``keep_train_in_memory``)."""
        return self._train_pixels is not None

    def keep_train_in_memory(self, max_bytes: int = DEFAULT_MEMORY_BYTES, spill_dir: str | None = None) -> bool:
        """Decode the whole train split once into a uint8 array that every later read indexes
        (experts, warm start and the MMD term read the same rows many times over), so no image is
        decoded in a training loop. Over ``max_bytes`` the array goes to a memory-mapped file in
        ``spill_dir`` instead (reused by a resumed run), or, without one, is skipped and False
        returned (every read then decodes its rows)."""
        if self._train_pixels is not None:
            return True
        n = len(self.labels("train"))
        size = n * int(np.prod(self.image_shape))
        if size > max_bytes and spill_dir is None:
            logger.info("Train split kept on disk: its %d images take %.0f MB decoded, over the %.0f MB allowed",
                        n, size / 1e6, max_bytes / 1e6)
            return False
        if size > max_bytes:
            self._train_pixels = self._decoded_file(spill_dir, n)
            return True
        pixels = np.empty((n, *self.image_shape), dtype=np.uint8)
        self._decode_train_into(pixels)
        self._train_pixels = pixels
        return True

    def remove_decoded_file(self) -> None:
        """Delete the file ``keep_train_in_memory`` decoded the split into, if it made one (large
        and re-creatable: a finished subtask keeps no copy). Reads keep working while mapped."""
        filename = getattr(self._train_pixels, "filename", None)
        if filename and os.path.exists(filename):
            os.remove(filename)

    def _decode_train_into(self, pixels: np.ndarray) -> None:
        for start in range(0, len(pixels), 1024):
            rows = np.arange(start, min(start + 1024, len(pixels)))
            pixels[rows] = self.images_uint8(rows)

    def _decoded_file(self, folder: str, n: int) -> np.ndarray:
        """The train split decoded into ``folder/train-<fingerprint>.npy`` (written once, renamed
        into place when whole), memory-mapped read-only."""
        path = os.path.join(folder, f"train-{self.fingerprint()}.npy")
        shape = (n, *self.image_shape)
        if not os.path.exists(path):
            os.makedirs(folder, exist_ok=True)
            logger.info("Decoding the train split once into %s (%.0f MB)", path, np.prod(shape) / 1e6)
            tmp = os.path.join(folder, f".tmp-train-{os.getpid()}.npy")  # swept by remove_stale_temporaries
            pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            self._decode_train_into(pixels)
            pixels.flush()
            del pixels
            os.replace(tmp, path)
        pixels = np.load(path, mmap_mode="r")
        if pixels.shape != shape:
            raise DataError(f"{path} holds {pixels.shape} pixels, not the train split's {shape}; delete it.")
        return pixels

    def images_uint8(self, indices: Sequence[int] | np.ndarray, split: str = "train") -> np.ndarray:
        """Decode the rows ``indices`` of a split to a uint8 array (N, C, H, W)."""
        indices = np.asarray(indices, dtype=np.int64)
        if split == "train" and self._train_pixels is not None:
            return self._train_pixels[indices]
        table = self.train if split == "train" else self.test
        if len(indices) == 0:
            return np.zeros((0, *self.image_shape), dtype=np.uint8)
        contiguous = bool(indices[-1] - indices[0] == len(indices) - 1 and (np.diff(indices) == 1).all())
        try:  # a slice is read straight from Arrow; a list of rows goes through a gather (10x slower)
            rows = table[int(indices[0]): int(indices[-1]) + 1] if contiguous else table[indices.tolist()]
            column = rows[self.image_column]
        except (TypeError, ValueError, OSError):
            # One undecodable image fails the whole batch: decode row by row to name it.
            column = [_decode_row(table, int(i), self.image_column, split) for i in indices]
        if isinstance(column, np.ndarray) and column.dtype == np.uint8 and self.pixel_scale == 1.0:
            # Arrays in the numpy format (idx sources): the batch is already pixels.
            c, h, w = self.image_shape
            if column.shape == (len(indices), h, w) and c == 1:
                return column[:, None].copy()
            if column.shape == (len(indices), h, w, c):
                return np.ascontiguousarray(column.transpose(0, 3, 1, 2))
        out = np.empty((len(indices), *self.image_shape), dtype=np.uint8)
        for i, image in enumerate(column):
            try:
                arr = _to_uint8_array(image, self.pixel_scale)
            except (TypeError, ValueError, OSError) as err:
                if isinstance(err, DataError):
                    raise
                raise DataError(f"Row {int(indices[i])} of the {split} split is not a readable image: {err}") from err
            out[i] = _fit(arr, self.image_shape).transpose(2, 0, 1)
        return out


    def images(self, indices, split: str = "train", device: torch.device | str | None = None) -> torch.Tensor:
        """Rows ``indices`` as float images in [0, 1], shape (N, C, H, W)."""
        return torch.from_numpy(self.images_uint8(indices, split)).to(device).float().div_(255.0)

    def iter_batches(self, split: str = "train", batch_size: int = 512):
        """Yield ``(images, labels)`` batches over a whole split, in order."""
        labels = self.labels(split)
        for start in range(0, len(labels), batch_size):
            idx = np.arange(start, min(start + batch_size, len(labels)))
            yield self.images(idx, split), torch.from_numpy(labels[idx])

    def sample_class_rows(self, class_id: int, n: int, generator: np.random.Generator) -> np.ndarray:
        """``n`` random train rows of one class (without replacement when possible), sorted."""
        rows = self.class_rows[class_id]
        return np.sort(generator.choice(rows, size=n, replace=n > len(rows)))

    def sample_class(self, class_id: int, n: int, generator: np.random.Generator, device=None) -> torch.Tensor:
        """``n`` random train images of one class (without replacement when possible)."""
        return self.images(self.sample_class_rows(class_id, n, generator), device=device)

    def pixel_moments(self, rows: Sequence[int] | np.ndarray | None = None) -> PixelMoments:
        """Exact per-channel pixel sums over train ``rows`` (default: all), in uint8 units."""
        rows = np.arange(len(self.labels("train"))) if rows is None else np.asarray(rows, dtype=np.int64)
        moments = PixelMoments.zero(self.image_shape[0])
        for start in range(0, len(rows), 1024):
            moments = moments + PixelMoments.of(self.images_uint8(rows[start : start + 1024]))
        return moments

    def set_normalization(self, moments: PixelMoments) -> None:
        """Use the statistics of ``moments`` (e.g. summed over the processes of a distributed run)."""
        self._stats = moments.mean_std()

    def normalization(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the train split in [0, 1] pixel units."""
        if self._stats is None:
            self._stats = self._parent.normalization() if self._parent is not None else self.pixel_moments().mean_std()
        return self._stats

    def normalization_tensors(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``normalization()`` as (1, C, 1, 1) tensors, ready to normalise a batch."""
        mean, std = self.normalization()
        return (torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1))

    def subset(self, classes: Sequence[int]) -> "ImageClassificationData":
        """A view with only the rows of ``classes``, relabelled 0..len(classes)-1 in that order.

        The view keeps the whole dataset's normalisation statistics.
        """
        classes = [int(c) for c in classes]
        keep_train = np.concatenate([self.class_rows[c] for c in classes]) if classes else np.zeros(0, np.int64)
        keep_train.sort()
        remap = {old: new for new, old in enumerate(classes)}
        view = ImageClassificationData(
            train=self.train.select(keep_train.tolist()),
            test=None,
            image_column=self.image_column,
            label_column=self.label_column,
            class_names=[self.class_names[c] for c in classes],
            image_shape=self.image_shape,
            source_info={**self.source_info, "classes": classes},
            pixel_scale=self.pixel_scale,
        )
        view._train_labels = np.array([remap[int(v)] for v in self.labels("train")[keep_train]], dtype=np.int64)
        if self._train_pixels is not None:
            view._train_pixels = self._train_pixels[keep_train]
        view._parent = self  # a view is normalised like the whole dataset (computed there, lazily)
        view._stats = self._stats
        if self.test is not None:
            test_labels = self.labels("test")
            keep_test = np.flatnonzero(np.isin(test_labels, classes))
            view.test = self.test.select(keep_test.tolist())
            view._test_labels = np.array([remap[int(v)] for v in test_labels[keep_test]], dtype=np.int64)
        return view

    def with_validation_split(self, size: float, seed: int = 0) -> "ImageClassificationData":
        """The same dataset with a stratified, seeded share ``size`` of the train split held out
        as the evaluation split, and the real test split dropped, so that choices made while
        tuning can never see test rows."""
        from sklearn.model_selection import train_test_split

        labels = self.labels("train")
        try:
            keep, held = train_test_split(np.arange(len(labels)), test_size=size, stratify=labels, random_state=seed)
        except ValueError as err:
            raise DataError(f"Cannot hold out a stratified validation share of {size} ({err}).") from err
        keep, held = np.sort(keep), np.sort(held)
        rule = f"validation: stratified share {size} of the train split, seed {seed}; the test split is not used"
        view = ImageClassificationData(
            train=self.train.select(keep.tolist()), test=self.train.select(held.tolist()),
            image_column=self.image_column, label_column=self.label_column, class_names=list(self.class_names),
            image_shape=self.image_shape, source_info={**self.source_info, "test_split": "validation",
                                                       "evaluation_split": rule},
            pixel_scale=self.pixel_scale, _label_map=self._label_map,
        )
        view._train_labels, view._test_labels = labels[keep], labels[held]
        return view

    def fingerprint(self) -> str:
        """A short hash that identifies the train split's rows, labels and shape."""
        h = hashlib.sha256()
        h.update(str((self.source_info.get("source"), self.image_shape, len(self.labels()))).encode())
        h.update(self.labels().tobytes())
        fp = getattr(self.train, "_fingerprint", None)
        if fp and self.source_info.get("source") not in EMBEDDED_DATASETS:
            h.update(fp.encode())
        return h.hexdigest()[:16]


# Names of a held-out split, in the order they are looked for when the source has no "test" split.
HELD_OUT_NAMES = ("test", "validation", "valid")
CHANNELS = ("auto", "L", "RGB")


def _held_out_split(raw, source: str, train_split: str, test_split: str | None) -> str | None:
    """The split ``test_split`` resolves to in ``raw``, or None (carve one off train)."""
    if not test_split:
        return None
    if test_split in raw:
        return test_split
    if test_split != HELD_OUT_NAMES[0]:  # named by the user: it must exist
        raise DataError(f"Dataset {source!r} has no split {test_split!r}; its splits are {sorted(raw)}. Set "
                        "test_split to one of them, or to 'test' to hold out a share of train (test_size).")
    return next((name for name in HELD_OUT_NAMES if name in raw and name != train_split), None)


def load_image_classification(
    source: str,
    *,
    image_column: str = "image",
    label_column: str = "label",
    train_split: str = "train",
    test_split: str | None = "test",
    test_size: float = 0.2,
    split_seed: int = 0,
    config_name: str | None = None,
    revision: str | None = None,
    data_dir: str | None = None,
    image_size: tuple[int, int] | None = None,
    channels: str = "auto",
) -> ImageClassificationData:
    """Open an image-classification dataset with a train and a test split.

    The held-out split is ``test_split``; when that is the default ``"test"`` and the source has
    none, its ``validation`` or ``valid`` split is taken, and only a source with none of them gets
    a seeded stratified share of train (``test_size``, ``split_seed``); the choice is logged and
    recorded in ``source_info``. A ``test_split`` named otherwise must exist.

    Every image is converted to ``channels`` (``L``, ``RGB``, or ``auto``: the first training
    image's) and resized (bilinear, Pillow) to ``image_size`` (H, W; None: the first training
    image's size).
    """
    import datasets

    raw, split_rule = load_source(source, config_name=config_name, revision=revision, data_dir=data_dir)
    if isinstance(raw, datasets.Dataset):
        raw = datasets.DatasetDict({train_split: raw})
    if train_split not in raw:
        raise DataError(f"Dataset {source!r} has no split {train_split!r}; its splits are {sorted(raw)}.")
    train = raw[train_split]
    for column in (image_column, label_column):
        if column not in train.column_names:
            raise DataError(
                f"Dataset {source!r} has no column {column!r}; its columns are {train.column_names}. "
                "Set image_column / label_column to the right names."
            )
    image_feature = train.features[image_column]
    if isinstance(image_feature, datasets.Value):  # a string or a number per row is no image
        raise DataError(
            f"Column {image_column!r} of {source!r} holds {image_feature.dtype} values, not images; set image_column "
            f"to the column of images (columns: {train.column_names})."
        )
    label_feature = train.features[label_column]
    label_map = None
    if isinstance(label_feature, datasets.ClassLabel):
        class_names = list(label_feature.names)
    elif isinstance(label_feature, datasets.Value) and label_feature.dtype.startswith(("int", "uint")):
        values = sorted(set(_whole_column(train, label_column).tolist()))
        class_names = [str(v) for v in values]
        if values != list(range(len(values))):
            label_map = {v: i for i, v in enumerate(values)}
    else:
        raise DataError(
            f"Label column {label_column!r} has type {label_feature}; it must hold integers or a ClassLabel."
        )

    test = None
    info: dict[str, Any] = {"source": source, "train_split": train_split, "config_name": config_name,
                            "revision": revision}
    held_out = _held_out_split(raw, source, train_split, test_split) if split_rule is None else None
    if split_rule is not None:
        test = raw["test"]
        info.update(test_split="test", split_rule=split_rule)
    elif held_out is not None:
        test = raw[held_out]
        info.update(test_split=held_out, split_rule=f"the dataset's own {train_split!r}/{held_out!r} splits")
        if held_out != test_split:
            logger.info("%s has no %r split: its %r split is the held-out split", source, test_split, held_out)
    elif test_size > 0:
        logger.info("%s has no held-out split (none of %s): %.0f%% of %r is held out, stratified, seed %d", source,
                    ", ".join(HELD_OUT_NAMES), 100 * test_size, train_split, split_seed)
        from sklearn.model_selection import train_test_split

        labels = _whole_column(train, label_column)
        counts = np.bincount(np.unique(labels, return_inverse=True)[1])
        stratify = labels if counts.min() >= 2 else None
        try:
            train_idx, test_idx = train_test_split(
                np.arange(len(labels)), test_size=test_size, stratify=stratify, random_state=split_seed
            )
        except ValueError as err:
            raise DataError(
                f"Cannot hold out a stratified test split of {test_size} from {source!r} ({err}). "
                "Provide a test split (test_split) or change test_size."
            ) from err
        full = train
        train = full.select(np.sort(train_idx).tolist())
        test = full.select(np.sort(test_idx).tolist())
        info.update(
            test_split=f"{train_split}[stratified {test_size}]",
            split_rule=f"sklearn train_test_split(test_size={test_size}, stratify=labels, "
            f"random_state={split_seed}) on split {train_split!r}",
        )
    if test is not None and image_column not in test.column_names:
        raise DataError(f"The test split has no column {image_column!r}.")

    probe = [_decode_row(train, i, image_column, "train") for i in range(min(len(train), 64))]
    first = probe[0]
    scale = 1.0
    if not hasattr(first, "mode"):
        arrs = [np.asarray(p) for p in probe]
        if arrs[0].dtype.kind == "f":
            # Float images are read as [0, 1] unless the first rows visibly use 0..255.
            scale = 1.0 if max(float(np.nanmax(a)) for a in arrs) > 1.0 + 1e-6 else 255.0
    hwc = _to_uint8_array(first, scale)
    shape = (int(hwc.shape[2]), int(hwc.shape[0]), int(hwc.shape[1]))
    if channels not in CHANNELS:
        raise DataError(f"channels must be one of {', '.join(CHANNELS)}; got {channels!r}.")
    if channels != "auto" or image_size is not None:
        first_shape = shape
        h, w = (int(v) for v in image_size) if image_size is not None else shape[1:]
        shape = ({"L": 1, "RGB": 3}.get(channels, shape[0]), h, w)
        if shape != first_shape:
            info["image_transform"] = (f"converted to {channels if channels != 'auto' else 'its own channels'} and "
                                       f"resized (bilinear) to {h}x{w} from the first image's "
                                       f"{first_shape[1]}x{first_shape[2]}x{first_shape[0]}")
    data = ImageClassificationData(
        train=train,
        test=test,
        image_column=image_column,
        label_column=label_column,
        class_names=class_names,
        image_shape=shape,
        source_info=info,
        pixel_scale=scale,
        _label_map=label_map,
    )
    empty = [data.class_names[c] for c, rows in enumerate(data.class_rows) if len(rows) == 0]
    if empty:
        raise DataError(f"Classes {empty} have no training rows in {source!r}; drop them or add data.")
    if test is not None:  # read now, so a test label train never had is refused before any work
        test_labels = data.labels("test")
        outside = sorted(set(test_labels[(test_labels < 0) | (test_labels >= data.num_classes)].tolist()))
        if outside:
            raise DataError(f"The test split has label id(s) {outside[:10]} outside the train split's "
                            f"{data.num_classes} classes (0..{data.num_classes - 1}).")
    return data
