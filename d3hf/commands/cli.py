"""The ``d3hf`` command line: one module per subcommand, dispatched here.

User errors (``D3HFError``) end with one line on stderr and exit code 2; ``--debug`` shows the
traceback. Heavy libraries load inside the commands, so ``d3hf --help`` answers at once.
"""

from __future__ import annotations

import difflib
import logging
import sys
from typing import Sequence

from .._version import __version__
from ..errors import D3HFError
from .aggregate import cmd_aggregate
from .distill import RECIPE_HINT, cmd_distill
from .evaluate import cmd_evaluate
from .generate import cmd_generate
from .info import cmd_info
from .plot import cmd_plot
from .push import cmd_push


def _setup_logging(debug: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("d3hf")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False



COMMANDS = {
    "distill": (cmd_distill, "distil a dataset into priors and decoders, evaluate and save the artifact"),
    "evaluate": (cmd_evaluate, "train fresh networks on an artifact's samples and test them on real data"),
    "info": (cmd_info, "print an artifact's shape and storage ledger"),
    "plot": (cmd_plot, "draw a run's curves (loss terms, step size, accuracies) into curves.png"),
    "aggregate": (cmd_aggregate, "merge subtasks distilled separately into one artifact"),
    "push": (cmd_push, "upload an artifact (and optionally samples from it) to the Hugging Face Hub"),
    "generate": (cmd_generate, "write samples of an artifact to a folder (arrow, parquet or imagefolder)"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: d3hf COMMAND [ARGS ...] [--debug]    (d3hf COMMAND --help for a command's arguments)", "",
             "Distributional Dataset Distillation (D3) for the Hugging Face ecosystem.", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "options:", "  -h, --help     show this message", "  --version      print d3hf's version",
              "  --debug        show the traceback of an error", "",
              f"A first run (about a minute on a 2-core CPU): d3hf distill {RECIPE_HINT}"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        return 0
    if argv and argv[0] in ("-V", "--version"):
        sys.stdout.write(f"d3hf {__version__}\n")
        return 0
    if not argv or argv[0] not in COMMANDS:
        close = difflib.get_close_matches(argv[0], COMMANDS, n=1) if argv else []
        hint = f"d3hf: unknown command {argv[0]!r}" + (f"; did you mean {close[0]!r}?" if close else "") + "\n\n" \
            if argv else ""
        sys.stderr.write(hint + _usage())
        return 2
    _setup_logging(debug)
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..utils.allocator import keep_freed_memory

    keep_freed_memory()  # this process is ours: no page faults for every large tensor (d3hf.allocator)
    command = argv[0]
    try:
        with logging_redirect_tqdm(loggers=[logging.getLogger("d3hf")]):  # log lines above the bars, not on them
            return COMMANDS[command][0](argv[1:])
    except SystemExit as err:  # argparse's --help (0) and usage errors (2), as a return code
        return err.code if isinstance(err.code, int) else 2
    except KeyboardInterrupt:
        if debug:
            raise
        again = (" Run the same command again to resume from the last checkpoint." if command == "distill" else "")
        sys.stderr.write(f"\nd3hf {command}: interrupted.{again}\n")
        return 130
    except (D3HFError, OSError) as err:  # anything else is a bug: its traceback shows
        if debug:
            raise
        sys.stderr.write(f"d3hf {command}: error: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
