"""Whether a collection of ids holds each of 0..n-1 exactly once (classes in subtasks, subtask indices)."""

from __future__ import annotations

from collections.abc import Iterable


def range_problems(ids: Iterable[int], n: int) -> str:
    """``""`` when ``ids`` hold each of ``0..n-1`` exactly once, else what is wrong: the ids
    missing, repeated or out of range, e.g. ``"missing [3]; repeated [1]"``."""
    ids = list(ids)
    missing = sorted(set(range(n)) - set(ids))
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    unknown = sorted({i for i in ids if not 0 <= i < n})
    parts = [f"missing {missing}" if missing else "", f"repeated {repeated}" if repeated else "",
             f"out of range {unknown}" if unknown else ""]
    return "; ".join(p for p in parts if p)
