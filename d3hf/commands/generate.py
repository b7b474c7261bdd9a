"""``d3hf generate``: write samples of an artifact to a new folder."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..errors import ConfigError


def cmd_generate(argv: Sequence[str]) -> int:
    from ..hub.generate import GENERATE_FORMATS, generate_dataset

    p = argparse.ArgumentParser(prog="d3hf generate", description="Write samples of an artifact to a new folder.")
    p.add_argument("model", help="artifact folder or Hub repo id")
    p.add_argument("--num_per_class", "--num-per-class", type=int, required=True, help="samples per class")
    p.add_argument("--seed", type=int, default=0, help="same seed, same samples")
    p.add_argument("--output", "--output_dir", "--output-dir", required=True,
                   help="new or empty folder to write; an earlier d3hf output only with --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUTPUT when it holds earlier d3hf samples and nothing else")
    p.add_argument("--format", choices=GENERATE_FORMATS, default="arrow", help="arrow (save_to_disk), parquet or "
                   "imagefolder")
    p.add_argument("--revision", default=None, help="Hub revision of MODEL")
    a = p.parse_args(list(argv))
    if a.num_per_class < 1:
        raise ConfigError(f"--num_per_class must be at least 1; got {a.num_per_class}.")
    dataset = generate_dataset(a.model, a.output, num_per_class=a.num_per_class, seed=a.seed, format=a.format,
                               revision=a.revision, overwrite=a.overwrite)
    sys.stdout.write(f"wrote {len(dataset)} samples ({a.num_per_class} per class, seed {a.seed}) "
                     f"to {a.output} as {a.format}\n")
    return 0
