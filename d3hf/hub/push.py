"""Uploading artifacts and sampled datasets to the Hub."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ArtifactError, ConfigError
from .access import hub_errors
from .cards import (
    ARTIFACT_FILES,
    REQUIRED_ARTIFACT_FILES,
    card_text,
    generation_record,
    sample_grid,
    training_record,
    updated_dataset_card,
)
from .datasets import sample_dataset

if TYPE_CHECKING:
    from ..modeling.modeling_d3 import D3Model

logger = logging.getLogger(__name__)


@dataclass
class PushResult:
    """Where a push landed: the repo, its URL and the commit it created."""

    repo_id: str
    repo_type: str
    url: str
    commit: str
    revision: str


def _check_artifact_folder(model_dir: str) -> None:
    if not os.path.isdir(model_dir):
        raise ArtifactError(f"{model_dir} is not a folder; pass the artifact folder written by `d3hf distill`.")
    config = os.path.join(model_dir, "config.json")
    if os.path.exists(config):
        with open(config) as f:
            model_type = json.load(f).get("model_type")
        if model_type != "d3":
            raise ArtifactError(f"{model_dir} holds a {model_type!r} model, not a d3hf artifact.")
    missing = [f for f in REQUIRED_ARTIFACT_FILES if not os.path.exists(os.path.join(model_dir, f))]
    if missing:
        raise ArtifactError(f"{model_dir} has no {' and no '.join(missing)}; save the model with "
                            "d3hf.save_artifact (or D3Model.save_pretrained).")


def _ensure_repo(api, repo_id: str, repo_type: str, private: bool, revision: str | None) -> None:
    """Create the repo (``private`` only applies to a new repo) and the target branch if needed."""
    url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    logger.info("Repo %s ready (%s)", repo_id, url)
    if revision and revision != "main":
        api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)


def _artifact_operations(model_dir: str) -> list:
    """One upload per artifact file in the folder; a card and sample grid are rendered when the
    folder has none (a bare ``save_pretrained``), so the repo never gets a generic card."""
    import io

    from huggingface_hub import CommitOperationAdd

    present = [f for f in ARTIFACT_FILES if os.path.isfile(os.path.join(model_dir, f))]
    ops = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=os.path.join(model_dir, f)) for f in present]
    if "README.md" not in present:
        from .load import load_artifact

        model = load_artifact(model_dir)
        evaluation = None
        if "eval.json" in present:
            with open(os.path.join(model_dir, "eval.json")) as f:
                evaluation = json.load(f)
        ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card_text(
            model, evaluation, training_record(model_dir), "curves.png" in present).encode()))
        if "samples.png" not in present:
            png = io.BytesIO()
            sample_grid(model).save(png, format="PNG")
            ops.append(CommitOperationAdd(path_in_repo="samples.png", path_or_fileobj=png.getvalue()))
    return ops


def push_artifact(
    model_dir: str,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Upload an artifact folder's files (config, weights, README.md card, samples.png,
    eval.json) to a model repo in one commit, creating the repo and branch if needed.

    Only those files go up: a user's own files beside the artifact stay private. The folder's
    own model card is uploaded; a folder without one gets d3hf's card rendered from the model.
    """
    from huggingface_hub import HfApi

    _check_artifact_folder(model_dir)
    operations = _artifact_operations(model_dir)
    api = HfApi()
    with hub_errors(repo_id, "push to", revision):
        _ensure_repo(api, repo_id, "model", private, revision)
        info = api.create_commit(repo_id, operations, repo_type="model", revision=revision,
                                 commit_message=commit_message or "Upload d3hf artifact")
    logger.info("Pushed %s to %s at commit %s", model_dir, repo_id, info.oid)
    return PushResult(repo_id, "model", info.commit_url, info.oid, revision or "main")


def push_synthetic_dataset(
    model: D3Model,
    repo_id: str,
    *,
    num_per_class: int,
    seed: int = 0,
    config_name: str = "default",
    private: bool = False,
    revision: str | None = None,
    generator: str | None = None,
    generator_revision: str | None = None,
) -> PushResult:
    """Sample ``num_per_class`` images per class and push them as config ``config_name`` of a
    dataset repo (Parquet, ``Image`` + ``ClassLabel``), then add a dataset card naming the
    source dataset, the generator repo and revision, the seed, the samples per class and the
    generator's storage ledger. ``datasets.load_dataset(repo_id, config_name)`` reads it
    without d3hf.
    """
    from huggingface_hub import DatasetCard, HfApi, hf_hub_download

    if num_per_class < 1:
        raise ConfigError(f"num_per_class must be at least 1; got {num_per_class}.")
    dataset = sample_dataset(model, num_per_class, seed=seed)
    record = generation_record(model, generator, generator_revision, num_per_class, seed)
    api = HfApi()
    with hub_errors(repo_id, "push to", revision):
        _ensure_repo(api, repo_id, "dataset", private, revision)
        pushed = dataset.push_to_hub(repo_id, config_name=config_name, private=private, revision=revision,
                                     commit_message=f"Upload d3hf samples ({config_name})")
        # Edit the card datasets just wrote, at that very commit, so a concurrent push is refused
        # (parent_commit) instead of silently dropped.
        card = DatasetCard.load(hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=pushed.oid))
        card = updated_dataset_card(card, model, repo_id, config_name, record)
        info = api.upload_file(
            path_or_fileobj=str(card).encode(),
            path_in_repo="README.md",
            repo_id=repo_id,
            repo_type="dataset",
            revision=revision,
            commit_message=f"Dataset card for {config_name}",
            parent_commit=pushed.oid,
        )
    logger.info("Pushed %d samples to %s (config %s) at commit %s", len(dataset), repo_id, config_name, info.oid)
    return PushResult(repo_id, "dataset", info.commit_url, info.oid, revision or "main")
