"""The Hugging Face Hub side of d3hf: push artifacts and synthetic datasets, load and generate.

``push_artifact`` uploads an artifact folder exactly as ``save_pretrained`` wrote it (its own
model card included); ``push_synthetic_dataset`` materialises samples as Parquet with
``Image`` + ``ClassLabel`` features so plain ``datasets.load_dataset`` reads them;
``load_distilled`` samples a ``datasets`` object from a folder or a Hub repo;
``generate_dataset`` writes samples to disk. Hub failures become one ``HubAccessError``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ArtifactError, ConfigError, D3HFError
from ..utils.io import looks_like_local_path
from ..utils.outputs import check_output, output_folder

if TYPE_CHECKING:
    import datasets

    from ..modeling.modeling_d3 import D3Model

logger = logging.getLogger(__name__)

GENERATE_FORMATS = ("arrow", "parquet", "imagefolder")
# What an artifact folder must hold to be pushed: the config and the card save_pretrained wrote.
REQUIRED_ARTIFACT_FILES = ("config.json", "README.md")
# The files of an artifact: only these are uploaded, whatever else the folder holds.
ARTIFACT_FILES = ["config.json", "model.safetensors", "README.md", "samples.png", "eval.json"]
CARD_METADATA_KEY = "d3hf"


class HubAccessError(D3HFError, ValueError):
    """A Hub request failed for a reason the user can fix: missing repo, no access, offline."""


@dataclass
class PushResult:
    """Where a push landed: the repo, its URL and the commit it created."""

    repo_id: str
    repo_type: str
    url: str
    commit: str
    revision: str


# ----------------------------------------------------------------------------- errors


def _hub_error_message(err: Exception, repo_id: str, action: str, revision: str | None) -> str:
    """One line saying what went wrong and what to do, for any error the Hub client raises."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    login = "log in with `hf auth login` or set HF_TOKEN"
    if isinstance(err, GatedRepoError):
        return f"Cannot {action} {repo_id}: the repo is gated; accept its conditions on the Hub and {login}."
    if isinstance(err, RepositoryNotFoundError):
        return (f"Cannot {action} {repo_id}: the repo does not exist, or it is private and you are not "
                f"authorised ({login}).")
    if isinstance(err, RevisionNotFoundError):
        return f"Cannot {action} {repo_id}: revision {revision or 'main'!r} does not exist."
    if isinstance(err, RemoteEntryNotFoundError):
        return f"Cannot {action} {repo_id}: a file is missing on the Hub ({_first_line(err)})."
    if isinstance(err, OfflineModeIsEnabled):
        return f"Cannot {action} {repo_id}: offline mode is on (HF_HUB_OFFLINE=1); unset it to reach the Hub."
    if isinstance(err, LocalEntryNotFoundError):
        return (f"Cannot {action} {repo_id}: it is not in the local cache and the Hub cannot be reached "
                "(offline mode or no connection).")
    if isinstance(err, HFValidationError):
        return (f"Cannot {action} {repo_id!r}: it is neither an existing folder nor a valid Hub repo id "
                f"({_first_line(err)}).")
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code if err.response is not None else None
        if status == 401:
            return f"Cannot {action} {repo_id}: the Hub refused the request as unauthenticated; {login}."
        if status == 403:
            return f"Cannot {action} {repo_id}: your token has no write access to this repo or namespace."
        return f"Cannot {action} {repo_id}: the Hub answered HTTP {status} ({_first_line(err)})."
    return f"Cannot {action} {repo_id}: the Hub cannot be reached ({type(err).__name__}: {_first_line(err)})."


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


@contextlib.contextmanager
def hub_errors(repo_id: str, action: str, revision: str | None = None) -> Iterator[None]:
    """Turn the Hub client's exceptions into one ``HubAccessError`` (a ``ValueError``)."""
    import httpx2
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
    )

    try:
        yield
    except (HfHubHTTPError, EntryNotFoundError, OfflineModeIsEnabled, HFValidationError, httpx2.TransportError) as err:
        raise HubAccessError(_hub_error_message(err, repo_id, action, revision)) from err


# ----------------------------------------------------------------------------- loading


def artifact_folder(repo_id_or_path: str, revision: str | None = None) -> str:
    """A local folder holding the artifact: the path itself, or the Hub repo's cached snapshot.

    Hub downloads go through the ``huggingface_hub`` cache, so a repo read once is available
    offline (``HF_HUB_OFFLINE=1``) afterwards.
    """
    path = os.path.expanduser(os.fspath(repo_id_or_path))
    if os.path.isdir(path):
        if revision is not None:
            raise ConfigError(f"revision={revision!r} only applies to Hub repos; {path} is a local folder.")
        missing = [f for f in ("config.json", "model.safetensors") if not os.path.isfile(os.path.join(path, f))]
        if missing:
            raise ArtifactError(f"{path} has no {' and no '.join(missing)}; it is not a complete d3hf artifact.")
        return path
    if os.path.exists(path):
        raise ArtifactError(f"{path} is a file; expected an artifact folder or a Hub repo id.")
    if looks_like_local_path(repo_id_or_path) or not _looks_like_repo_id(str(repo_id_or_path)):
        # never send a local path to the Hub client
        raise ArtifactError(f"There is no folder {path!r}, and it is not a Hub repo id (NAMESPACE/NAME).")
    from huggingface_hub import snapshot_download

    with hub_errors(repo_id_or_path, "load", revision):
        return snapshot_download(repo_id_or_path, revision=revision, allow_patterns=["*.json", "*.safetensors"])


def _looks_like_repo_id(name: str) -> bool:
    """NAMESPACE/NAME with the Hub's characters: what a Hub request can resolve."""
    import re

    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", name) is not None and ".." not in name


def load_artifact(repo_id_or_path: str, revision: str | None = None) -> D3Model:
    """The ``D3Model`` in a folder or Hub repo, in eval mode on the CPU."""
    from ..modeling.modeling_d3 import D3Model

    folder = artifact_folder(repo_id_or_path, revision)
    if not os.path.exists(os.path.join(folder, "config.json")):
        raise ArtifactError(f"{repo_id_or_path} holds no config.json; it is not a d3hf artifact.")
    return D3Model.from_pretrained(folder).eval()


def load_distilled(
    repo_id_or_path: str,
    num_per_class: int,
    seed: int = 0,
    streaming: bool = False,
    revision: str | None = None,
    num_shards: int = 8,
) -> datasets.Dataset | datasets.IterableDataset:
    """Training data sampled from a distilled artifact (folder or Hub repo id).

    Returns a ``datasets.Dataset`` with ``num_per_class`` samples per class (``image: Image``,
    ``label: ClassLabel``), or with ``streaming=True`` an ``IterableDataset`` that draws
    ``num_per_class`` fresh samples per class for each epoch (call ``set_epoch``; the
    ``transformers.Trainer`` does). The same arguments always give the same data.
    ``num_shards`` only matters when streaming: at most that many dataloader workers split
    an epoch between them.
    """
    if num_per_class < 1:
        raise ConfigError(f"num_per_class must be at least 1; got {num_per_class}.")
    model = load_artifact(repo_id_or_path, revision)
    if streaming:
        return model.to_iterable_dataset(num_per_class, seed=seed, num_shards=num_shards)
    return model.to_dataset(num_per_class, seed=seed)


# ----------------------------------------------------------------------------- pushing


def _check_artifact_folder(model_dir: str) -> None:
    if not os.path.isdir(model_dir):
        raise ArtifactError(f"{model_dir} is not a folder; pass the artifact folder written by `d3hf distill`.")
    missing = [f for f in REQUIRED_ARTIFACT_FILES if not os.path.exists(os.path.join(model_dir, f))]
    if missing:
        raise ArtifactError(f"{model_dir} has no {', '.join(missing)}; save the artifact with D3Model.save_pretrained.")
    with open(os.path.join(model_dir, "config.json")) as f:
        model_type = json.load(f).get("model_type")
    if model_type != "d3":
        raise ArtifactError(f"{model_dir} holds a {model_type!r} model, not a d3hf artifact.")


def _ensure_repo(api, repo_id: str, repo_type: str, private: bool, revision: str | None) -> None:
    """Create the repo (``private`` only applies to a new repo) and the target branch if needed."""
    url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    logger.info("Repo %s ready (%s)", repo_id, url)
    if revision and revision != "main":
        api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)


def push_artifact(
    model_dir: str,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Upload an artifact folder as it is (config, weights, README.md card, samples.png,
    eval.json) to a model repo, creating the repo and branch if needed.

    The folder's own model card is uploaded, so no generic card ever replaces it.
    """
    from huggingface_hub import HfApi

    _check_artifact_folder(model_dir)
    api = HfApi()
    with hub_errors(repo_id, "push to", revision):
        _ensure_repo(api, repo_id, "model", private, revision)
        info = api.upload_folder(
            folder_path=model_dir,
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            commit_message=commit_message or "Upload d3hf artifact",
            allow_patterns=ARTIFACT_FILES,  # a user's own files beside the artifact stay private
        )
    logger.info("Pushed %s to %s at commit %s", model_dir, repo_id, info.oid)
    return PushResult(repo_id, "model", info.commit_url, info.oid, revision or "main")


def _generation_record(model: D3Model, generator: str | None, generator_revision: str | None,
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


def synthetic_card_body(model: D3Model, repo_id: str | None, records: dict) -> str:
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


def _updated_card(card, model: D3Model, repo_id: str | None, config_name: str, record: dict):
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
    dataset = model.to_dataset(num_per_class, seed=seed)
    record = _generation_record(model, generator, generator_revision, num_per_class, seed)
    api = HfApi()
    with hub_errors(repo_id, "push to", revision):
        _ensure_repo(api, repo_id, "dataset", private, revision)
        pushed = dataset.push_to_hub(repo_id, config_name=config_name, private=private, revision=revision,
                                     commit_message=f"Upload d3hf samples ({config_name})")
        # Edit the card datasets just wrote, at that very commit, so a concurrent push is refused
        # (parent_commit) instead of silently dropped.
        card = DatasetCard.load(hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=pushed.oid))
        card = _updated_card(card, model, repo_id, config_name, record)
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


# ----------------------------------------------------------------------------- generating to disk


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
) -> datasets.Dataset:
    """Sample ``num_per_class`` images per class and write them to ``output_dir``.

    Formats: ``arrow`` (``Dataset.save_to_disk``; ``datasets.load_from_disk``), ``parquet``
    (``data/train-00000-of-00001.parquet``; ``load_dataset("parquet", data_dir=...)``) or
    ``imagefolder`` (``train/<class>/<n>.png``). A README.md dataset card records the
    generator and seed. ``output_dir`` must be new or empty, or hold earlier d3hf samples and
    nothing else with ``overwrite=True`` (``d3hf.outputs``); it appears only once everything is
    written. Returns the generated ``Dataset``.
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
    dataset = model.to_dataset(num_per_class, seed=seed)
    record = _generation_record(model, generator, revision, num_per_class, seed)
    card = _updated_card(DatasetCard("---\n---\n"), model, None, "default", record)
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
