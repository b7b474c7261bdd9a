"""Generated image-classification data for the benchmarks: any shape and number of classes, the
same pixels for a seed on every machine, written as d3hf reads any image dataset (a
``datasets.DatasetDict`` saved with ``save_to_disk``, PNG images). No download."""

from __future__ import annotations

import os

import numpy as np


def generate_images(shape, n: int, num_classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images (N, C, H, W) of ``num_classes`` classes and their labels: each class is a
    smooth random pattern (4x4 Gaussian noise, upsampled), drawn with a random contrast and pixel
    noise, so experts learn something; classes come in a shuffled order with equal counts (to
    within one)."""
    c, h, w = shape
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(num_classes, c, 4, 4))
    rows = np.minimum(np.arange(h) * 4 // h, 3)
    cols = np.minimum(np.arange(w) * 4 // w, 3)
    templates = coarse[:, :, rows][:, :, :, cols]  # nearest upsampling to (C, H, W)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    contrast = rng.uniform(0.6, 1.4, size=(n, 1, 1, 1))
    pixels = 128 + 40 * templates[labels] * contrast + rng.normal(0, 24, size=(n, c, h, w))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), labels


def save_image_dataset(folder: str, images: np.ndarray, labels: np.ndarray, splits: dict[str, slice],
                       num_classes: int) -> None:
    """``images`` (N, C, H, W uint8) cut into ``splits`` (name -> rows) and saved to ``folder``."""
    import datasets

    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"class{i}" for i in range(num_classes)])})

    def as_image(chw: np.ndarray) -> np.ndarray:
        return chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)  # PIL's L or RGB

    dd = datasets.DatasetDict({name: datasets.Dataset.from_dict(
        {"image": [as_image(x) for x in images[rows]], "label": labels[rows]}, features=features)
        for name, rows in splits.items()})
    os.makedirs(os.path.dirname(os.path.abspath(folder)), exist_ok=True)
    dd.save_to_disk(folder)


def write_synthetic(folder: str, shape, num_classes: int, train_per_class: int, test_per_class: int,
                    seed: int = 0) -> str:
    """A train and a test split of generated images in ``folder`` (made once: kept when there);
    returns the folder, for ``d3hf distill --dataset``."""
    if not os.path.exists(os.path.join(folder, "dataset_dict.json")):
        train, test = num_classes * train_per_class, num_classes * test_per_class
        images, labels = generate_images(shape, train + test, num_classes, seed)
        save_image_dataset(folder, images, labels, {"train": slice(0, train), "test": slice(train, None)},
                           num_classes)
    return folder
