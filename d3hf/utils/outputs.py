"""Output folders d3hf may write: never one that holds files d3hf did not create.

Every folder a command writes (an artifact, generated samples, a distillation run) carries a
marker file naming its kind and the entries d3hf wrote. A command writes to a missing or
empty folder; it replaces an existing folder only when asked to (``--overwrite``) and only
when the marker shows d3hf wrote everything in it. The folder a command reads from, the
current directory and their ancestors are never outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator

from ..errors import OutputError
from .io import atomic_directory, atomic_write_json

MARKER = ".d3hf.json"
KINDS = ("artifact", "samples", "run")


def read_marker(folder: str) -> dict | None:
    """The marker of a folder d3hf wrote, or None."""
    path = os.path.join(folder, MARKER)
    try:
        with open(path) as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("kind") in KINDS else None


def write_marker(folder: str, kind: str, entries: Iterable[str] | None = None) -> None:
    """Mark ``folder`` as written by d3hf; ``entries`` defaults to what it holds now."""
    from .._version import __version__

    names = sorted(set(os.listdir(folder) if entries is None else entries) - {MARKER})
    atomic_write_json(os.path.join(folder, MARKER), {"kind": kind, "entries": names, "d3hf_version": __version__})


def _same_or_nested(a: str, b: str) -> bool:
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep) or b.startswith(a.rstrip(os.sep) + os.sep)


def check_output(path: str, kind: str, *, overwrite: bool = False, inputs: Iterable[str] = (),
                 flag: str = "--overwrite") -> bool:
    """Refuse ``path`` as an output of ``kind`` unless writing it loses nothing d3hf did not write.

    Returns True when ``path`` holds an earlier d3hf output of this kind that may be replaced.
    """
    if not path:
        raise OutputError("The output location is empty; name a folder.")
    for source in inputs:
        if source and os.path.exists(source) and _same_or_nested(path, source):
            raise OutputError(f"{path} is, holds or lies inside the input {source}; write the output elsewhere.")
    here = os.getcwd()
    if os.path.realpath(here) == os.path.realpath(path) or here.startswith(os.path.realpath(path).rstrip(os.sep) + os.sep):
        raise OutputError(f"{path} is the current directory or holds it; name a new folder for the output.")
    if not os.path.lexists(path):
        return False
    if not os.path.isdir(path) or os.path.islink(path):
        raise OutputError(f"{path} exists and is not a folder; name a new folder for the output.")
    present = set(os.listdir(path))
    if not present:
        return False
    marker = read_marker(path)
    if marker is None:
        raise OutputError(f"{path} already holds files that d3hf did not write ({_names(present)}); "
                          "name a new or empty folder for the output.")
    if marker["kind"] != kind:
        raise OutputError(f"{path} holds a d3hf {marker['kind']}, not {kind}; name another folder.")
    if not overwrite:
        raise OutputError(f"{path} holds an earlier d3hf {kind}; pass {flag} to replace it, or name a new folder.")
    allowed = set(marker.get("entries", [])) | {MARKER}
    foreign = present - allowed
    if foreign:
        raise OutputError(f"{path} holds files d3hf did not write ({_names(foreign)}); move them away before "
                          f"replacing it with {flag}.")
    return True


def _names(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


@contextlib.contextmanager
def output_folder(path: str, kind: str, *, overwrite: bool = False, inputs: Iterable[str] = (),
                  flag: str = "--overwrite") -> Iterator[str]:
    """Yield a temporary folder that becomes ``path``, marked, when the block finishes;
    ``path`` is checked first (``check_output``) and again just before it is replaced."""
    check_output(path, kind, overwrite=overwrite, inputs=inputs, flag=flag)
    with atomic_directory(path) as tmp:
        yield tmp
        write_marker(tmp, kind)
        check_output(path, kind, overwrite=overwrite, inputs=inputs, flag=flag)  # nothing appeared meanwhile
