"""``d3hf info``: an artifact's shape and storage ledger."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

from .parsing import command_parser, parse


@dataclass
class InfoOptions:
    revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of MODEL"})


def cmd_info(argv: Sequence[str]) -> int:
    p = command_parser("d3hf info", "Print an artifact's shape and storage ledger.", InfoOptions)
    p.add_argument("model", help="artifact folder or Hub repo id")
    a, positional = parse(p, argv)
    from ..hub.load import load_artifact

    model = load_artifact(positional.model, a.revision)
    sys.stdout.write(json.dumps({"classes": model.config.num_classes, "image_shape": model.config.image_shape,
                                 "priors_per_class": model.config.priors_per_class, "z_dim": model.config.z_dim,
                                 "decoders": len(model.decoders)}, indent=2) + "\n")
    sys.stdout.write(str(model.storage()) + "\n")
    return 0
