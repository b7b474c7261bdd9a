"""``d3hf info``: an artifact's shape and storage ledger, and its run's last figures."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

from .parsing import command_parser, parse


@dataclass
class InfoOptions:
    revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of MODEL"})


def cmd_info(argv: Sequence[str]) -> int:
    p = command_parser("d3hf info", "Print an artifact's shape and storage ledger; for a run folder (or the "
                       "artifact inside one) also the run's last recorded figures.", InfoOptions)
    p.add_argument("model", help="artifact folder, d3hf distill output_dir, or Hub repo id")
    a, positional = parse(p, argv)
    from ..distill.layout import ARTIFACT_DIR, RUN_FILE
    from ..distill.tracking import last_values, read_metrics
    from ..hub.load import load_artifact

    path, run_dir = positional.model, None
    if os.path.isfile(os.path.join(path, RUN_FILE)):  # a run folder: its artifact, and its metrics
        path, run_dir = os.path.join(path, ARTIFACT_DIR), path
    elif os.path.isdir(path) and os.path.isfile(os.path.join(path, "..", RUN_FILE)):
        run_dir = os.path.join(path, "..")
    model = load_artifact(path, a.revision)
    sys.stdout.write(json.dumps({"classes": model.config.num_classes, "image_shape": model.config.image_shape,
                                 "priors_per_class": model.config.priors_per_class, "z_dim": model.config.z_dim,
                                 "decoders": len(model.decoders)}, indent=2) + "\n")
    sys.stdout.write(str(model.storage()) + "\n")
    last = last_values(read_metrics(run_dir)) if run_dir else {}
    if last:
        sys.stdout.write("last recorded values:\n" + json.dumps(last, indent=2) + "\n")
    return 0
