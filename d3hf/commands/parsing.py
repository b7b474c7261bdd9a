"""How every subcommand reads its command line: one ``HfArgumentParser`` over the command's
options dataclasses (flags, their types, choices and help come from the fields), plus the
command's positional arguments."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError


def command_parser(prog: str, description: str, *options: type, epilog: str | None = None):
    """An ``HfArgumentParser`` for ``d3hf PROG``; add positionals with ``add_argument``."""
    from transformers import HfArgumentParser

    return HfArgumentParser(options, prog=prog, description=description, epilog=epilog)


def parse(parser, argv: Sequence[str]) -> tuple[Any, ...]:
    """The options dataclasses, then a namespace with the positionals. A flag the command does not
    have ends like any argparse error: usage, one line (with a close spelling), exit code 2."""
    *options, rest, unknown = parser.parse_args_into_dataclasses(
        args=list(argv), look_for_args_file=False, return_remaining_strings=True)
    if unknown:
        flags = [s for action in parser._actions for s in action.option_strings]
        hints = [f"{u} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(u.split("=")[0], flags, n=1)) else u
                 for u in unknown]
        parser.error(f"unrecognized arguments: {' '.join(hints)}")
    return (*options, rest)


def resolve_device(name: str | None):
    """A torch device from a --device flag (None: cuda when available, else cpu), refused when absent."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1): {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asks for CUDA, but torch sees no GPU here; use --device cpu.")
    return device
