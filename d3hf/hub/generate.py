"""Writing sampled datasets to disk (Arrow, Parquet or an image folder)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..utils.outputs import check_output, output_folder
from .cards import generation_record, updated_dataset_card
from .datasets import sample_dataset
from .load import load_artifact

if TYPE_CHECKING:
    import datasets
    import torch

    from ..modeling.modeling_d3 import D3Model

logger = logging.getLogger(__name__)

GENERATE_FORMATS = ("arrow", "parquet", "imagefolder")


def imagefolder_names(class_names: list[str]) -> list[str]:
    """One folder name per class id. ``imagefolder`` numbers classes by their folders' sorted
    names, so when the names do not sort in id order (``"10"`` before ``"2"``) or collide once
    made path-safe, each is prefixed with its zero-padded id (``"02_2"``)."""
    names = [str(n).replace(os.sep, "_").replace("/", "_") or "_" for n in class_names]
    if len(set(names)) == len(names) and sorted(names) == names:
        return names
    width = len(str(len(names) - 1))
    return [f"{i:0{width}d}_{name}" for i, name in enumerate(names)]


def _write_imagefolder(dataset: datasets.Dataset, folder: str, class_names: list[str]) -> None:
    """``train/<class folder>/<row>.png``: ``load_dataset("imagefolder", data_dir=folder)`` reads it
    back with the same label ids."""
    from tqdm.auto import tqdm

    names = imagefolder_names(class_names)
    for name in names:
        os.makedirs(os.path.join(folder, "train", name), exist_ok=True)
    # Rows decode to PIL images; iterate without the features' label decoding.
    for i, row in enumerate(tqdm(dataset, desc="write images", total=len(dataset), leave=False)):
        row["image"].save(os.path.join(folder, "train", names[row["label"]], f"{i:06d}.png"))


def generate_dataset(
    repo_id_or_path: str | D3Model,
    output_dir: str,
    *,
    num_per_class: int,
    seed: int = 0,
    format: str = "arrow",
    revision: str | None = None,
    overwrite: bool = False,
    device: torch.device | str | None = None,
) -> datasets.Dataset:
    """Sample ``num_per_class`` images per class and write them to ``output_dir``.

    Formats: ``arrow`` (``Dataset.save_to_disk``; ``datasets.load_from_disk``), ``parquet``
    (``data/train-00000-of-00001.parquet``; ``load_dataset("parquet", data_dir=...)``) or
    ``imagefolder`` (``train/<class>/<n>.png``). A README.md dataset card records the
    generator and seed. ``output_dir`` must be new or empty, or hold earlier d3hf samples and
    nothing else with ``overwrite=True`` (``d3hf.outputs``); it appears only once everything is
    written. ``device``: where the samples are decoded (default: where the model is; the same
    samples on every device, whose noise is drawn on the CPU). Returns the generated ``Dataset``.
    """
    from huggingface_hub import DatasetCard

    if format not in GENERATE_FORMATS:
        raise ConfigError(f"format must be one of {', '.join(GENERATE_FORMATS)}; got {format!r}.")
    if num_per_class < 1:
        raise ConfigError(f"num_per_class must be at least 1; got {num_per_class}.")
    inputs = [repo_id_or_path] if isinstance(repo_id_or_path, str) and os.path.exists(repo_id_or_path) else []
    check_output(output_dir, "samples", overwrite=overwrite, inputs=inputs)  # before any work
    if isinstance(repo_id_or_path, str):
        model, generator = load_artifact(repo_id_or_path, revision), repo_id_or_path
    else:
        model, generator = repo_id_or_path, None
    home = model.prior_means.device
    try:
        dataset = sample_dataset(model.to(device or home), num_per_class, seed=seed)
    finally:
        model.to(home)  # the caller's model stays where it was
    record = generation_record(model, generator, revision, num_per_class, seed)
    card = updated_dataset_card(DatasetCard("---\n---\n"), model, None, "default", record)
    with output_folder(output_dir, "samples", overwrite=overwrite, inputs=inputs) as tmp:
        if format == "arrow":
            dataset.save_to_disk(tmp)
        elif format == "parquet":
            os.makedirs(os.path.join(tmp, "data"))
            dataset.to_parquet(os.path.join(tmp, "data", "train-00000-of-00001.parquet"))
        else:
            _write_imagefolder(dataset, tmp, model.config.class_names)
        card.save(os.path.join(tmp, "README.md"))
    logger.debug("Wrote %d samples (%d per class) to %s as %s", len(dataset), num_per_class, output_dir, format)
    return dataset
