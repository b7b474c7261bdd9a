"""Subtask decomposition: which classes each subtask distils, and its seed.

A subtask is distilled on its own (its rows, its experts, its priors and decoder), so it may
run on any process; everything random in it derives from ``(seed, subtask index)``, never
from the process that happens to run it.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..utils.ranges import range_problems
from ..utils.seeding import SUBTASK_STREAM, class_seed


def partition_classes(num_classes: int, num_subtasks: int, seed: int = 0) -> list[list[int]]:
    """A balanced, seeded partition of ``0..num_classes-1`` into ``num_subtasks`` groups.

    Classes are shuffled with ``seed`` (so a subtask is not just a contiguous id range) and
    dealt into groups whose sizes differ by at most one; each group is sorted.
    """
    if num_subtasks < 1:
        raise ConfigError(f"num_subtasks must be at least 1; got {num_subtasks}")
    if num_subtasks > num_classes:
        raise ConfigError(f"num_subtasks ({num_subtasks}) is larger than the number of classes ({num_classes}); "
                         "every subtask needs at least one class.")
    if num_subtasks == 1:
        return [list(range(num_classes))]
    order = np.random.default_rng(class_seed(seed, SUBTASK_STREAM)).permutation(num_classes)
    return [sorted(int(c) for c in chunk) for chunk in np.array_split(order, num_subtasks)]


def check_partition(subtasks: list[list[int]], num_classes: int) -> list[list[int]]:
    """``subtasks`` as lists of ints, if they cover ``0..num_classes-1`` exactly once."""
    try:
        groups = [[int(c) for c in group] for group in subtasks]
    except (TypeError, ValueError):
        raise ConfigError(f"subtasks must be a list of lists of class ids; got {subtasks!r}") from None
    if any(not group for group in groups):
        raise ConfigError(f"every subtask needs at least one class; got {groups}")
    problems = range_problems((c for group in groups for c in group), num_classes)
    if problems:
        raise ConfigError(f"subtasks must cover class ids 0..{num_classes - 1} exactly once: {problems}.")
    return groups


def subtask_seed(seed: int, index: int) -> int:
    """The seed of subtask ``index`` (its experts, initialisation and distillation draws)."""
    return class_seed(seed, SUBTASK_STREAM, index) % (2**31)


def assigned_subtasks(num_subtasks: int, process_index: int, num_processes: int) -> list[int]:
    """Subtasks run by one process: round robin, so each process gets a near-equal number."""
    return list(range(process_index, num_subtasks, num_processes))
