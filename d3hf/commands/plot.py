"""``d3hf plot RUN_DIR``: draw a run's curves (``curves.png``), also while it runs."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..errors import OutputError
from .parsing import command_parser, parse


@dataclass
class PlotOptions:
    output: Optional[str] = field(default=None, metadata={"help": "PNG to write instead of RUN_DIR/curves.png"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --output file (RUN_DIR/curves.png, "
                                                              "the run's own, is always redrawn)"})


def cmd_plot(argv: Sequence[str]) -> int:
    p = command_parser("d3hf plot", "Draw a run's loss terms, step size and accuracies into curves.png, one "
                       "panel each, subtasks overlaid; works on a running run too.", PlotOptions)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a d3hf distill output_dir")
    a, positional = parse(p, argv)
    from ..distill.curves import write_curves
    from ..distill.tracking import read_metrics

    run_dir = positional.run_dir
    if not os.path.isdir(run_dir):
        raise OutputError(f"{run_dir} is not a folder; give the output_dir of a d3hf distill run.")
    if a.output and os.path.isdir(a.output):
        raise OutputError(f"--output {a.output} is a folder; name the PNG file to write.")
    if a.output and os.path.lexists(a.output) and not a.overwrite:
        raise OutputError(f"--output {a.output} exists and d3hf did not write it; pass --overwrite to replace it.")
    records = read_metrics(run_dir)
    if not records:
        raise OutputError(f"{run_dir} holds no metrics.jsonl yet: is it a d3hf distill output_dir, and has its "
                          "first log step been reached?")
    path = write_curves(run_dir, a.output, records)
    if path is None:
        raise OutputError('Drawing needs matplotlib: pip install "d3hf[tracking]"')
    sys.stdout.write(f"{path}\n")
    return 0
