"""Re-aggregation: per-subtask artifacts (local class ids, one decoder) -> one ``D3Model``.

A subtask artifact is a ``D3Model`` over its own classes whose ``config.source["subtask"]``
records where it belongs: its index, its global class ids and the whole partition.
"""

from __future__ import annotations

import glob
import os

import torch

from ..errors import D3HFError
from ..modeling.configuration_d3 import D3Config
from ..modeling.modeling_d3 import D3Model
from ..utils.ranges import range_problems

SUBTASK_KEY = "subtask"
# Fields every subtask of one artifact must agree on.
SHARED_FIELDS = ("image_shape", "z_dim", "priors_per_class", "normalization_mean", "normalization_std", "soft_labels")


class AggregationError(D3HFError, ValueError):
    """Subtask artifacts that cannot form one artifact."""


def subtask_config(config: D3Config, index: int) -> D3Config:
    """The config of subtask ``index`` of the whole-artifact ``config``: its classes, relabelled
    0..n-1 in the order of ``config.subtasks[index]``, and its decoder."""
    classes = config.subtasks[index]
    info = {"index": index, "classes": classes, "partition": config.subtasks, "class_names": config.class_names}
    return D3Config(
        class_names=[config.class_names[c] for c in classes],
        image_shape=config.image_shape,
        z_dim=config.z_dim,
        priors_per_class=config.priors_per_class,
        decoders=[config.decoders[index]],
        normalization_mean=config.normalization_mean,
        normalization_std=config.normalization_std,
        soft_labels=config.soft_labels,
        source={**config.source, SUBTASK_KEY: info},
        distillation=config.distillation,
    )


def _subtask_info(part: D3Model) -> dict:
    info = part.config.source.get(SUBTASK_KEY)
    if not info:
        raise AggregationError("This artifact is not a subtask artifact (its config.source has no 'subtask' entry).")
    return info


def aggregate(parts: list[D3Model]) -> D3Model:
    """One artifact from subtask artifacts that partition the classes exactly once."""
    if not parts:
        raise AggregationError("Nothing to aggregate: no subtask artifacts were given.")
    infos = [_subtask_info(p) for p in parts]
    partition = [list(map(int, s)) for s in infos[0]["partition"]]
    class_names = list(infos[0]["class_names"])
    first = parts[0].config
    for part, info in zip(parts, infos):
        if [list(map(int, s)) for s in info["partition"]] != partition or list(info["class_names"]) != class_names:
            raise AggregationError("The subtask artifacts come from different partitions or class lists.")
        for name in SHARED_FIELDS:
            if getattr(part.config, name) != getattr(first, name):
                raise AggregationError(f"Subtask {info['index']} has {name}={getattr(part.config, name)!r}, "
                                       f"subtask {infos[0]['index']} has {getattr(first, name)!r}; they must match.")
    problems = range_problems((int(i["index"]) for i in infos), len(partition))
    if problems:
        raise AggregationError(f"The subtasks must cover the partition of {len(partition)} subtasks exactly once; "
                               f"{problems}.")
    by_index = {int(i["index"]): p for i, p in zip(infos, parts)}
    source = {k: v for k, v in first.source.items() if k != SUBTASK_KEY}
    config = D3Config(
        class_names=class_names,
        image_shape=first.image_shape,
        z_dim=first.z_dim,
        priors_per_class=first.priors_per_class,
        decoders=[by_index[k].config.decoders[0] for k in range(len(partition))],
        subtasks=partition,
        normalization_mean=first.normalization_mean,
        normalization_std=first.normalization_std,
        soft_labels=first.soft_labels,
        source=source,
        distillation=first.distillation,
    )
    model = D3Model(config)
    lpc = config.priors_per_class
    with torch.no_grad():
        if model.soft_labels is not None:
            model.soft_labels.zero_()
        for k, classes in enumerate(partition):
            part = by_index[k]
            model.decoders[k].load_state_dict(part.decoders[0].state_dict())
            for local, c in enumerate(classes):
                rows, local_rows = slice(c * lpc, (c + 1) * lpc), slice(local * lpc, (local + 1) * lpc)
                model.prior_means[rows] = part.prior_means[local_rows]
                model.prior_logvars[rows] = part.prior_logvars[local_rows]
                if model.soft_labels is not None:
                    # A subtask's teacher only knows its own classes: its soft labels sit in their columns.
                    model.soft_labels[rows, classes] = part.soft_labels[local_rows]
    return model.eval()


def find_subtask_artifacts(directories: list[str]) -> list[str]:
    """Subtask artifact folders under each of ``directories`` (a run's output_dir, its
    ``subtasks/`` folder, or one subtask artifact itself)."""
    found = []
    for directory in directories:
        if not os.path.isdir(directory):
            raise AggregationError(f"{directory} is not a folder.")
        if os.path.exists(os.path.join(directory, "config.json")):
            found.append(directory)
            continue
        hits = sorted(glob.glob(os.path.join(directory, "subtasks", "*", "artifact", "config.json")))
        hits += sorted(glob.glob(os.path.join(directory, "*", "artifact", "config.json")))
        if not hits:
            raise AggregationError(f"{directory} holds no subtask artifacts (looked for subtasks/*/artifact/).")
        found.extend(os.path.dirname(h) for h in hits)
    return found


def aggregate_directories(directories: list[str]) -> D3Model:
    """``aggregate`` the subtask artifacts found under ``directories``."""
    return aggregate([D3Model.from_pretrained(path) for path in find_subtask_artifacts(directories)])
