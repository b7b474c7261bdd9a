"""``d3hf info``: an artifact's shape and storage ledger."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


def cmd_info(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="d3hf info", description="Print an artifact's shape and storage ledger.")
    p.add_argument("model", help="artifact folder or Hub repo id")
    p.add_argument("--revision", default=None, help="Hub revision of MODEL")
    a = p.parse_args(list(argv))
    from ..hub.load import load_artifact

    model = load_artifact(a.model, a.revision)
    sys.stdout.write(json.dumps({"classes": model.config.num_classes, "image_shape": model.config.image_shape,
                                 "priors_per_class": model.config.priors_per_class, "z_dim": model.config.z_dim,
                                 "decoders": len(model.decoders)}, indent=2) + "\n")
    sys.stdout.write(str(model.storage()) + "\n")
    return 0
