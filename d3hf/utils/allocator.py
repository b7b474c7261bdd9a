"""CPU allocator tuning for the processes d3hf owns (its command line, the benchmarks).

glibc hands every allocation above a dynamic threshold (at most 32 MB) to ``mmap`` and gives it
back with ``munmap`` on free, so a training step whose activations are tens of MB asks the
kernel for fresh, zeroed pages every time: on a 2-core CPU a third to a half of a downstream
training's time went to page faults (benchmarks/cpu_allocator.md). Keeping freed memory in the
heap removes that; the process then holds its peak memory, as torch's CUDA allocator does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h) and the values set: large blocks from the heap, and no trimming.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_SETTINGS = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, (1 << 31) - 1), (_M_TOP_PAD, 1 << 28))
OPT_OUT = "D3HF_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel; True if it
    applied (glibc only; ``D3HF_KEEP_FREED_MEMORY=0`` turns it off)."""
    if os.environ.get(OPT_OUT, "1").lower() in ("0", "false", "no", "off"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 -- present on glibc only (musl and macOS differ)
    except (OSError, AttributeError, TypeError):
        return False
    applied = all(mallopt(option, value) == 1 for option, value in _SETTINGS)
    logger.debug("glibc malloc keeps freed memory: %s", applied)
    return applied


def release_memory() -> bool:
    """Give memory freed so far back to the system: Python's cycles collected, the CUDA cache
    emptied, and glibc's free pages returned (``malloc_trim``). Between two subtasks of one
    process, so the next one's peak is not stacked on the last one's leftovers; True if glibc
    trimmed."""
    gc.collect()
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    return bool(trim(0))
