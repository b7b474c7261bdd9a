"""Seeds for independent random streams, derived from a run seed and integer keys.

Each stream has a key of its own (arbitrary distinct numbers, fixed forever: changing one changes
every result drawn from that stream).
"""

from __future__ import annotations

import numpy as np


def class_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one (seed, key...) cell, independent of every other cell."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(int(k) for k in keys)]).generate_state(2, np.uint64)[0] >> 1)


# The named streams: class_seed(seed, STREAM, ...) for each.
EXPERT_STREAM = 7919  # expert i's initialisation and batch order: class_seed(seed, EXPERT_STREAM, i)
AUGMENT_STREAM = 3571  # DSA parameters of a downstream training
EVAL_SAMPLES_STREAM = 104729  # an evaluation epoch's fresh samples: class_seed(seed, EVAL_SAMPLES_STREAM, epoch)
SUBTASK_STREAM = 31337  # the class partition, and subtask k's seed: class_seed(seed, SUBTASK_STREAM, k)
