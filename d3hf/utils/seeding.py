"""Seeds for independent random streams, derived from a run seed and integer keys."""

from __future__ import annotations

import numpy as np


def class_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one (seed, key...) cell, independent of every other cell."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(int(k) for k in keys)]).generate_state(2, np.uint64)[0] >> 1)
