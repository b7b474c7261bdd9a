"""``d3hf push``: upload an artifact, and optionally samples from it, to the Hub."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..errors import ConfigError
from .parsing import command_parser, parse


@dataclass
class PushOptions:
    repo_id: str = field(metadata={"help": "model repo, NAMESPACE/NAME"})
    private: bool = field(default=False, metadata={"help": "create new repos as private"})
    revision: Optional[str] = field(default=None, metadata={
        "help": "model repo branch (created if missing); default main"})
    dataset_repo: Optional[str] = field(default=None, metadata={"help": "also push samples to this dataset repo"})
    num_per_class: Optional[int] = field(default=None, metadata={"help": "samples per class pushed to --dataset_repo"})
    seed: int = field(default=0, metadata={"help": "seed of the pushed samples"})
    config_name: str = field(default="default", metadata={"help": "dataset config name"})


def cmd_push(argv: Sequence[str]) -> int:
    p = command_parser("d3hf push", "Upload an artifact folder to a Hub model repo, and optionally a synthetic "
                       "dataset sampled from it to a dataset repo. Only the artifact's own files are uploaded; the "
                       "folder is not changed.", PushOptions)
    p.add_argument("model_dir", help="artifact folder (OUTPUT_DIR/artifact of d3hf distill)")
    a, positional = parse(p, argv)
    if a.dataset_repo and (a.num_per_class is None or a.num_per_class < 1):
        raise ConfigError("--dataset_repo needs --num_per_class K (K >= 1).")
    from ..hub.load import load_artifact
    from ..hub.push import push_artifact, push_synthetic_dataset

    pushed = push_artifact(positional.model_dir, a.repo_id, private=a.private, revision=a.revision)
    lines = [f"model: {pushed.repo_id} at {pushed.revision} commit {pushed.commit}"]
    if a.dataset_repo:
        data = push_synthetic_dataset(load_artifact(positional.model_dir), a.dataset_repo,
                                      num_per_class=a.num_per_class, seed=a.seed, config_name=a.config_name,
                                      private=a.private, generator=a.repo_id, generator_revision=pushed.commit)
        lines.append(f"dataset: {data.repo_id} config {a.config_name!r} commit {data.commit} "
                     f"({a.num_per_class} per class, seed {a.seed})")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
