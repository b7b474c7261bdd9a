"""``d3hf aggregate``: merge subtasks distilled separately into one artifact."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def cmd_aggregate(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="d3hf aggregate", description="Merge subtasks distilled separately "
                                "(d3hf distill --subtask_ids ...) into one artifact.")
    p.add_argument("dirs", nargs="+", help="run output folders, or subtask artifact folders")
    p.add_argument("--output_dir", "--output-dir", required=True,
                   help="new or empty folder for the merged artifact; an earlier d3hf artifact only with --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUTPUT_DIR when it holds an earlier d3hf artifact and nothing else")
    a = p.parse_args(list(argv))
    from ..utils.outputs import check_output, output_folder

    check_output(a.output_dir, "artifact", overwrite=a.overwrite, inputs=a.dirs)  # before any work
    from ..distill.aggregation import aggregate_directories
    from ..hub.cards import save_artifact

    model = aggregate_directories(a.dirs)
    with output_folder(a.output_dir, "artifact", overwrite=a.overwrite, inputs=a.dirs) as tmp:
        save_artifact(model, tmp)
    ledger = model.storage()
    sys.stdout.write(f"artifact: {a.output_dir} ({model.config.num_classes} classes, {len(model.decoders)} subtasks; "
                     f"{ledger.total_scalars:,} scalars = {ledger.ipc_equivalent:.3f} IPC-equivalent)\n")
    return 0
