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
