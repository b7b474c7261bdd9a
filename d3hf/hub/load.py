"""Reading artifacts from a folder or the Hub, and sampling training data from them."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import ArtifactError, ConfigError
from ..modeling.modeling_d3 import D3Model
from ..utils.io import looks_like_local_path
from .access import hub_errors, looks_like_repo_id
from .cards import REQUIRED_ARTIFACT_FILES
from .datasets import epoch_sampled_iterable, sample_dataset

if TYPE_CHECKING:
    import datasets


def artifact_folder(repo_id_or_path: str, revision: str | None = None) -> str:
    """A local folder holding the artifact: the path itself, or the Hub repo's cached snapshot.

    Hub downloads go through the ``huggingface_hub`` cache, so a repo read once is available
    offline (``HF_HUB_OFFLINE=1``) afterwards.
    """
    path = os.path.expanduser(os.fspath(repo_id_or_path))
    if os.path.isdir(path):
        if revision is not None:
            raise ConfigError(f"revision={revision!r} only applies to Hub repos; {path} is a local folder.")
        missing = [f for f in REQUIRED_ARTIFACT_FILES if not os.path.isfile(os.path.join(path, f))]
        if missing:
            raise ArtifactError(f"{path} has no {' and no '.join(missing)}; it is not a complete d3hf artifact.")
        return path
    if os.path.exists(path):
        raise ArtifactError(f"{path} is a file; expected an artifact folder or a Hub repo id.")
    if looks_like_local_path(repo_id_or_path) or not looks_like_repo_id(str(repo_id_or_path)):
        # never send a local path to the Hub client
        raise ArtifactError(f"There is no folder {path!r}, and it is not a Hub repo id (NAMESPACE/NAME).")
    from huggingface_hub import snapshot_download

    with hub_errors(repo_id_or_path, "load", revision):
        return snapshot_download(repo_id_or_path, revision=revision, allow_patterns=["*.json", "*.safetensors"])


def load_artifact(repo_id_or_path: str, revision: str | None = None) -> D3Model:
    """The ``D3Model`` in a folder or Hub repo, in eval mode on the CPU."""
    folder = artifact_folder(repo_id_or_path, revision)
    if not os.path.exists(os.path.join(folder, "config.json")):
        raise ArtifactError(f"{repo_id_or_path} holds no config.json; it is not a d3hf artifact.")
    return D3Model.from_pretrained(folder).eval()


def load_distilled(
    model_or_path: D3Model | str,
    num_per_class: int,
    seed: int = 0,
    streaming: bool = False,
    revision: str | None = None,
    num_shards: int = 8,
    soft_labels: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """Training data sampled from a distilled artifact (a ``D3Model``, folder or Hub repo id).

    Returns a ``datasets.Dataset`` with ``num_per_class`` samples per class (``image: Image``,
    ``label: ClassLabel``, and ``soft_label`` with ``soft_labels=True``), or with
    ``streaming=True`` an ``IterableDataset`` that draws ``num_per_class`` fresh samples per
    class for each epoch (call ``set_epoch``; the ``transformers.Trainer`` does). The same
    arguments always give the same data. ``num_shards`` only matters when streaming: at most
    that many dataloader workers split an epoch between them.
    """
    if num_per_class < 1:
        raise ConfigError(f"num_per_class must be at least 1; got {num_per_class}.")
    if streaming and soft_labels:
        raise ConfigError("soft_labels=True needs streaming=False: a stream carries images and labels only.")
    if isinstance(model_or_path, D3Model):
        if revision is not None:
            raise ConfigError("revision only applies to Hub repos; a D3Model was given.")
        model = model_or_path
    else:
        model = load_artifact(model_or_path, revision)
    if streaming:
        return epoch_sampled_iterable(model, num_per_class, seed, num_shards)
    return sample_dataset(model, num_per_class, seed=seed, soft_labels=soft_labels)
