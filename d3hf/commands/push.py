"""``d3hf push``: upload an artifact, and optionally samples from it, to the Hub."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..errors import ConfigError


def cmd_push(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="d3hf push", description="Upload an artifact folder to a Hub model repo, "
                                "and optionally a synthetic dataset sampled from it to a dataset repo. Only the "
                                "artifact's own files are uploaded; the folder is not changed.")
    p.add_argument("model_dir", help="artifact folder (OUTPUT_DIR/artifact of d3hf distill)")
    p.add_argument("--repo_id", "--repo-id", required=True, help="model repo, NAMESPACE/NAME")
    p.add_argument("--private", action="store_true", help="create new repos as private")
    p.add_argument("--revision", default=None, help="model repo branch (created if missing); default main")
    p.add_argument("--dataset_repo", "--dataset-repo", default=None, help="also push samples to this dataset repo")
    p.add_argument("--num_per_class", "--num-per-class", type=int, default=None,
                   help="samples per class pushed to --dataset_repo")
    p.add_argument("--seed", type=int, default=0, help="seed of the pushed samples")
    p.add_argument("--config_name", "--config-name", default="default", help="dataset config name")
    a = p.parse_args(list(argv))
    if a.dataset_repo and (a.num_per_class is None or a.num_per_class < 1):
        raise ConfigError("--dataset_repo needs --num_per_class K (K >= 1).")
    from ..hub.load import load_artifact
    from ..hub.push import push_artifact, push_synthetic_dataset

    pushed = push_artifact(a.model_dir, a.repo_id, private=a.private, revision=a.revision)
    lines = [f"model: {pushed.repo_id} at {pushed.revision} commit {pushed.commit}"]
    if a.dataset_repo:
        data = push_synthetic_dataset(load_artifact(a.model_dir), a.dataset_repo, num_per_class=a.num_per_class,
                                      seed=a.seed, config_name=a.config_name, private=a.private,
                                      generator=a.repo_id, generator_revision=pushed.commit)
        lines.append(f"dataset: {data.repo_id} config {a.config_name!r} commit {data.commit} "
                     f"({a.num_per_class} per class, seed {a.seed})")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
