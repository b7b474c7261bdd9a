"""Which rows a distilled artifact came from, and the proof that a test split is disjoint from them."""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from ..errors import DataError
from .image_data import ImageClassificationData

logger = logging.getLogger(__name__)


class SplitOverlapError(DataError):
    """The test split shares rows with (or cannot be shown disjoint from) the distillation rows."""


def row_ids_digest(ids: np.ndarray) -> str:
    """An order-free digest of a set of row ids (or pixel hashes)."""
    return hashlib.sha256(np.sort(np.asarray(ids, dtype=np.int64)).tobytes()).hexdigest()[:32]


def _image_hashes(data: ImageClassificationData, split: str, batch_size: int = 1024) -> np.ndarray:
    """A 63-bit content hash of every decoded image of a split (identity by pixels)."""
    n = len(data.labels(split))
    out = np.empty(n, dtype=np.int64)
    for start in range(0, n, batch_size):
        batch = data.images_uint8(np.arange(start, min(start + batch_size, n)), split)
        for i, image in enumerate(batch):
            out[start + i] = int.from_bytes(hashlib.sha1(image.tobytes()).digest()[:8], "little") >> 1
    return out


def split_row_ids(data: ImageClassificationData, split: str, key: str) -> np.ndarray:
    """Identities of a split's rows: the ``source_row`` column, or (``key="image_sha1"``) hashes
    of the decoded pixels. Raises ``DataError`` if ``source_row`` is asked for but missing."""
    if key == "source_row":
        table = data.train if split == "train" else data.test
        if "source_row" not in table.column_names:
            raise DataError(f"The {split} split has no 'source_row' column.")
        return np.asarray(table["source_row"], dtype=np.int64)
    if key == "image_sha1":
        return _image_hashes(data, split)
    raise ValueError(f"unknown row key {key!r}; use 'source_row' or 'image_sha1'")


def _has_source_row(data: ImageClassificationData, split: str) -> bool:
    table = data.train if split == "train" else data.test
    return table is not None and "source_row" in table.column_names


def train_rows_record(data: ImageClassificationData) -> dict:
    """What an artifact should record about its train rows so that evaluation can prove a test
    split disjoint from them: the row key, a digest of the row ids and their count.

    Rows are identified by the ``source_row`` column where the dataset has one (the embedded
    datasets), else by a hash of their pixels.
    """
    key = "source_row" if _has_source_row(data, "train") else "image_sha1"
    ids = split_row_ids(data, "train", key)
    return {"source": data.source_info.get("source"), "split_rule": data.source_info.get("split_rule"),
            "num_train_rows": int(len(ids)), "train_rows_key": key, "train_rows_digest": row_ids_digest(ids)}


def check_test_split_disjoint(source: dict, data: ImageClassificationData, allow_unverified: bool = False) -> str:
    """Refuse (``SplitOverlapError``) to test on ``data``'s test split unless it is shown
    disjoint from the rows recorded in ``source`` (an artifact's ``config.source``, or
    ``baselines.image_set_source``). Returns a sentence saying how it was verified.

    The recorded train rows are first found in ``data``'s train split: by ``train_rows_digest``
    (see ``train_rows_record``) or, for records without one, by ``train_fingerprint``. Then no
    test row may be one of them (same ``source_row``, or identical pixels when the splits have
    no ``source_row`` column). If the train rows cannot be identified (another dataset or
    split), disjointness is unknown: refused, unless ``allow_unverified`` (logged, and said so
    in the returned sentence).
    """
    if data.test is None:
        raise DataError("This dataset has no test split to evaluate on.")
    recorded_source = source.get("source", "?")
    num_rows = source.get("num_train_rows", "?")
    key = source.get("train_rows_key")
    if key is not None:
        try:
            train_ids = split_row_ids(data, "train", key)
            identified = row_ids_digest(train_ids) == source.get("train_rows_digest")
        except DataError:
            identified = False
    else:  # records written before train_rows_digest existed
        identified = source.get("train_fingerprint") is not None and source["train_fingerprint"] == data.fingerprint()
        key = "source_row" if _has_source_row(data, "train") else "image_sha1"
        train_ids = split_row_ids(data, "train", key) if identified else None
    if not identified:
        message = (
            f"Cannot verify that the test split of {data.source_info.get('source')!r} is disjoint from the "
            f"{num_rows} rows the distilled data came from (recorded source {recorded_source!r}, split "
            f"{source.get('split_rule', 'not recorded')!r}): this dataset's train split is not those rows, so "
            "test rows may have been distilled from. Evaluate on the recorded dataset and split."
        )
        if allow_unverified:
            logger.warning(message)
            return "test split NOT verified disjoint from the distillation rows (" + message + ")"
        raise SplitOverlapError(message)
    if key == "source_row" and not _has_source_row(data, "test"):
        key, train_ids = "image_sha1", split_row_ids(data, "train", "image_sha1")
    test_ids = split_row_ids(data, "test", key)
    shared = np.intersect1d(train_ids, test_ids)
    if shared.size:
        what = "source_row ids" if key == "source_row" else "images identical to distillation rows"
        example = ", ".join(str(int(v)) for v in shared[:5]) if key == "source_row" else ""
        raise SplitOverlapError(
            f"Refusing to evaluate: {int(np.isin(test_ids, shared).sum())} of the {len(test_ids)} test rows of "
            f"{data.source_info.get('source')!r} are among the {len(train_ids)} rows the distilled data came from "
            f"({what}{': ' + example if example else ''}). Accuracy on them would count memorised training rows."
        )
    by = "source_row ids" if key == "source_row" else "pixel hashes"
    return (f"test split verified disjoint from the {len(train_ids)} distillation rows of {recorded_source!r} "
            f"({len(test_ids)} test rows, compared by {by})")
