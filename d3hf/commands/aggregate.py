"""``d3hf aggregate``: merge subtasks distilled separately into one artifact."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Sequence

from .parsing import command_parser, parse


@dataclass
class AggregateOptions:
    output_dir: str = field(metadata={"help": "new or empty folder for the merged artifact; an earlier d3hf "
                                      "artifact only with --overwrite"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace OUTPUT_DIR when it holds an earlier d3hf artifact and nothing else"})


def cmd_aggregate(argv: Sequence[str]) -> int:
    p = command_parser("d3hf aggregate", "Merge subtasks distilled separately (d3hf distill --subtask_ids ...) "
                       "into one artifact.", AggregateOptions)
    p.add_argument("dirs", nargs="+", help="run output folders, or subtask artifact folders")
    a, positional = parse(p, argv)
    from ..utils.outputs import check_output, output_folder

    check_output(a.output_dir, "artifact", overwrite=a.overwrite, inputs=positional.dirs)  # before any work
    from ..distill.aggregation import aggregate_directories
    from ..hub.cards import save_artifact

    model = aggregate_directories(positional.dirs)
    with output_folder(a.output_dir, "artifact", overwrite=a.overwrite, inputs=positional.dirs) as tmp:
        save_artifact(model, tmp)
    ledger = model.storage()
    sys.stdout.write(f"artifact: {a.output_dir} ({model.config.num_classes} classes, {len(model.decoders)} subtasks; "
                     f"{ledger.total_scalars:,} scalars = {ledger.ipc_equivalent:.3f} IPC-equivalent)\n")
    return 0
