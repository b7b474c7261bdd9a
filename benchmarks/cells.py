"""The cached cell every long benchmark is made of: a JSON record that is measured once and read
back after, so a stopped benchmark resumes where it stopped and a report can be redrawn
without measuring again."""

from __future__ import annotations

import json
import os
from typing import Callable


def cached(path: str, measure: Callable[[], dict]) -> dict:
    """The record at ``path``; when there is none, ``measure()``'s, written there atomically (a
    killed measurement leaves no half-written record)."""
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    from d3hf.utils.io import atomic_write_json

    record = measure()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_json(path, record)
    return record


def parse_settings(text: str, option: str, reserved: tuple[str, ...] = ()) -> dict[str, str]:
    """``"syn_steps=20, expert_epoch_rows=0"`` -> {key: value as written}, for a benchmark's
    ``option`` that changes ``d3hf distill`` settings; '' -> {}. Unknown keys and the benchmark's
    ``reserved`` ones are refused (the values are checked by ``d3hf distill``'s own parser)."""
    from d3hf.distill.config import SECTION_OF_KEY

    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or key not in SECTION_OF_KEY:
            raise SystemExit(f"{option}: {item!r} is not KEY=VALUE with a distillation key (e.g. syn_steps=20)")
        if key in reserved:
            raise SystemExit(f"{option}: {key} is set by the benchmark itself")
        out[key] = value
    return out


def records(folder: str) -> list[dict]:
    """Every record in ``folder`` (its ``*.json`` files, by name)."""
    if not os.path.isdir(folder):
        return []
    out = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                out.append(json.load(f))
    return out
