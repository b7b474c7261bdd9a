"""``d3hf generate``: write samples of an artifact to a new folder."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..errors import ConfigError
from .parsing import command_parser, parse, resolve_device

# hub.generate.GENERATE_FORMATS, spelled here so that `d3hf --help` loads no torch (a test checks they agree).
FORMATS = ("arrow", "parquet", "imagefolder")


@dataclass
class GenerateOptions:
    num_per_class: int = field(metadata={"help": "samples per class"})
    output: str = field(metadata={"aliases": ["--output_dir", "--output-dir"], "help": "new or empty folder to "
                                  "write; an earlier d3hf output only with --overwrite"})
    seed: int = field(default=0, metadata={"help": "same seed, same samples"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace OUTPUT when it holds earlier d3hf samples and nothing else"})
    format: str = field(default="arrow", metadata={"choices": list(FORMATS),
                                                   "help": "arrow (save_to_disk), parquet or imagefolder"})
    revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of MODEL"})
    device: Optional[str] = field(default=None, metadata={
        "help": "where the samples are decoded, e.g. cpu or cuda:0; default: cuda when available"})


def cmd_generate(argv: Sequence[str]) -> int:
    p = command_parser("d3hf generate", "Write samples of an artifact to a new folder.", GenerateOptions)
    p.add_argument("model", help="artifact folder or Hub repo id")
    a, positional = parse(p, argv)
    if a.num_per_class < 1:
        raise ConfigError(f"--num_per_class must be at least 1; got {a.num_per_class}.")
    device = resolve_device(a.device)
    from ..hub.generate import generate_dataset

    dataset = generate_dataset(positional.model, a.output, num_per_class=a.num_per_class, seed=a.seed,
                               format=a.format, revision=a.revision, overwrite=a.overwrite, device=device)
    sys.stdout.write(f"wrote {len(dataset)} samples ({a.num_per_class} per class, seed {a.seed}) "
                     f"to {a.output} as {a.format}\n")
    return 0
