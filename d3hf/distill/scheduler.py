"""Dealing subtasks to processes as they become free, and handing finished ones to the main
process without a collective that can time out.

Each process claims the next unclaimed subtask whenever it is free (an atomic compare-and-set in
the process group's key-value store, the one every launcher sets up for its rendezvous), so
uneven subtasks or more processes than subtasks leave no process idle while work is left. A
finished subtask is published in the store (its tensors and timings, serialised); the main
process polls for the ones it did not run, with no deadline: nothing waits in a collective
while another process is still distilling, so no process-group timeout applies however long
the slowest subtask takes. Other processes leave when nothing is left to claim. A process that
dies is the launcher's to handle: torchrun stops the whole group when one worker fails.

The store lives as long as the launch, so claims never outlive it: a relaunch (with any number
of processes) deals every unfinished subtask again, and each resumes from its checkpoint in
the output folder.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence

import torch

logger = logging.getLogger(__name__)

PREFIX = "d3hf/subtasks"


def default_store():
    """The key-value store of the default process group (None without one)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    from torch.distributed import distributed_c10d

    # Private in name, stable in fact (torch >= 1.8): the store init_process_group made for the
    # rendezvous; a store of d3hf's own would need a port of its own on every launcher.
    return distributed_c10d._get_default_store()


class SubtaskScheduler:
    """Claims for one process over ``order`` (the subtasks of the run, first to be dealt first).

    ``preferred`` subtasks (those whose checkpoint this process can see when the others cannot)
    are tried before the rest. Without a ``store`` (one process) every subtask is this one's.
    """

    def __init__(self, order: Sequence[int], rank: int, store=None, preferred: Sequence[int] = ()):
        ahead = [k for k in order if k in set(preferred)]
        self.order = ahead + [k for k in order if k not in set(ahead)]
        self.rank = rank
        self.store = store
        self.claimed: list[int] = []
        self._next = 0

    def claim(self) -> int | None:
        """The next subtask this process runs, or None when every subtask is claimed."""
        while self._next < len(self.order):
            k = self.order[self._next]
            self._next += 1
            me = str(self.rank).encode()
            if self.store is None or self.store.compare_set(f"{PREFIX}/claim/{k}", "", me) == me:
                self.claimed.append(k)
                return k
        return None

    def publish(self, index: int, result: dict) -> None:
        """Hand ``result`` (tensors, numbers, strings) of subtask ``index`` to the main process."""
        buffer = io.BytesIO()
        torch.save(result, buffer)
        self.store.set(f"{PREFIX}/result/{index}", buffer.getvalue())

    def collect(self, indices: Sequence[int], poll_seconds: float = 2.0, report_seconds: float = 300.0) -> list[dict]:
        """The published results of ``indices``, waiting for them as long as it takes."""
        keys = {k: f"{PREFIX}/result/{k}" for k in indices}
        results: dict[int, dict] = {}
        started = last_report = time.monotonic()
        while len(results) < len(keys):
            for k, key in keys.items():
                if k not in results and self.store.check([key]):
                    payload = self.store.get(key)
                    results[k] = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
                    self.store.delete_key(key)  # the store keeps no copy of what it handed over
            if len(results) < len(keys):
                if time.monotonic() - last_report >= report_seconds:
                    last_report = time.monotonic()
                    pending = [k for k in keys if k not in results]
                    logger.info("Waiting %.0f min for subtask(s) %s (%s)", (last_report - started) / 60, pending,
                                ", ".join(f"{k}: {self.claimed_by(k)}" for k in pending))
                time.sleep(poll_seconds)
        return [results[k] for k in indices]

    def claimed_by(self, index: int) -> str:
        key = f"{PREFIX}/claim/{index}"
        return f"process {self.store.get(key).decode()}" if self.store.check([key]) else "not claimed yet"
