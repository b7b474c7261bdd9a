"""MNIST-format ``idx`` files: the original MNIST, Fashion-MNIST, KMNIST or EMNIST files.

A folder is an idx source when it holds ``train-images-idx3-ubyte`` and
``train-labels-idx1-ubyte`` (each optionally ``.gz``), and usually the ``t10k-`` pair for the
test split. Every file is read and checked whole (magic number, sizes, images and labels of
the same length) before anything is built, so a bad file is refused with its name and nothing
is written. The built splits are saved once in the ``datasets`` cache (keyed by the files' paths, sizes
and modification times) and memory-mapped from there, so a later load costs no parsing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil

import numpy as np

from ..errors import DataError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
SPLIT_PREFIXES = {"train": "train", "test": "t10k"}


def _find(folder: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def idx_files(folder: str) -> dict[str, tuple[str, str]]:
    """``{split: (images file, labels file)}`` for the splits whose two files are in ``folder``."""
    found = {}
    for split, prefix in SPLIT_PREFIXES.items():
        images, labels = _find(folder, f"{prefix}-images-idx3-ubyte"), _find(folder, f"{prefix}-labels-idx1-ubyte")
        if images and labels:
            found[split] = (images, labels)
        elif images or labels:
            missing = f"{prefix}-{'labels-idx1' if images else 'images-idx3'}-ubyte[.gz]"
            raise DataError(f"{folder} holds {os.path.basename(images or labels)} but not {missing}.")
    return found


def is_idx_folder(path: str) -> bool:
    return os.path.isdir(path) and any(_find(path, f"train-{kind}-ubyte") for kind in ("images-idx3", "labels-idx1"))


def read_idx(path: str, magic: int) -> np.ndarray:
    """The uint8 array of one idx file; ``DataError`` naming the file if it is not one."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:  # a truncated .gz raises EOFError
        raise DataError(f"{path} cannot be read as an idx file: {err}") from None
    ndim = magic & 0xFF
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path} is too short ({len(data)} bytes) to be an idx file.")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path} has magic number 0x{found:08x}; an idx file of unsigned bytes with {ndim} "
                        f"dimension(s) starts with 0x{magic:08x}.")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = len(data) - 4 - 4 * ndim
    if body != int(np.prod(shape)):
        raise DataError(f"{path} declares {'x'.join(map(str, shape))} values but holds {body} bytes: truncated or "
                        "not an idx file.")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_split(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path, IMAGES_MAGIC), read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels.")
    return images, labels


def load_idx_folder(folder: str, class_names: list[str] | None = None):
    """The idx files in ``folder`` as a ``datasets.DatasetDict`` with ``image`` (uint8 H x W
    arrays) and ``label`` (ClassLabel: ``class_names``, default the label values) columns, in the
    numpy format; built once into the ``datasets`` cache and memory-mapped from there."""
    import datasets

    files = idx_files(folder)
    if "train" not in files:
        raise DataError(f"{folder} holds no train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz].")
    stamp = json.dumps([[os.path.abspath(p), os.path.getsize(p), os.path.getmtime(p)]
                        for split in sorted(files) for p in files[split]] + [class_names])
    cache = os.path.join(datasets.config.HF_DATASETS_CACHE, "d3hf_idx", hashlib.sha256(stamp.encode()).hexdigest()[:16])
    if not os.path.isfile(os.path.join(cache, "dataset_dict.json")):
        _build(files, class_names, cache)
    return datasets.load_from_disk(cache).with_format("numpy")


def _build(files: dict[str, tuple[str, str]], class_names: list[str] | None, cache: str) -> None:
    import datasets

    arrays = {split: read_split(*paths) for split, paths in files.items()}  # all checked before any is built
    num_classes = int(max(int(labels.max()) for _, labels in arrays.values() if len(labels)) + 1)
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    if len(names) < num_classes:
        raise DataError(f"{files['train'][1]} has labels up to {num_classes - 1}, but {len(names)} class names "
                        "were given.")
    built = datasets.DatasetDict({
        split: datasets.Dataset.from_dict(
            {"image": images, "label": labels.astype(np.int64)},
            features=datasets.Features({"image": datasets.Array2D(images.shape[1:], "uint8"),
                                        "label": datasets.ClassLabel(names=names)}))
        for split, (images, labels) in arrays.items()})
    tmp = f"{cache}.tmp-{os.getpid()}"
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a run shows one progress line of its own
    try:
        built.save_to_disk(tmp)
    except BaseException:  # a full disk or Ctrl-C: no half-written copy is left in the cache
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bars:
            datasets.enable_progress_bars()
    try:
        os.replace(tmp, cache)
    except OSError:  # another process built it first: theirs is the same
        shutil.rmtree(tmp, ignore_errors=True)
