"""Dealing subtasks to processes as they become free, and handing finished ones to the main
process without a collective that can time out.

Each process claims the next unclaimed subtask whenever it is free (an atomic compare-and-set in
the process group's key-value store, the one every launcher sets up for its rendezvous), so
uneven subtasks or more processes than subtasks leave no process idle while work is left. A
finished subtask is published in the store (its tensors and timings, serialised, in parts small
enough for any store); the main process polls for the ones it did not run, with no deadline:
nothing waits in a collective while another process is still distilling, so no process-group
timeout applies however long the slowest subtask takes. Other processes leave when nothing is
left to claim. A process whose subtask fails publishes the error, and the main process raises
it; a process that dies outright is the launcher's to handle (torchrun stops the whole group).

Keys are new for every scheduler (all processes create theirs in the same order), and the store
lives as long as the launch, so claims never outlive it: a relaunch (with any number of
processes) deals every unfinished subtask again, and each resumes from its checkpoint.
"""

from __future__ import annotations

import io
import itertools
import logging
import time
from collections.abc import Sequence

import torch

from ..errors import D3HFError

logger = logging.getLogger(__name__)

PREFIX = "d3hf/subtasks"
PART_BYTES = 4 * 2**20  # store values stay under libuv TCPStore's 8 MiB limit on one message
_GENERATION = itertools.count()  # one key space per scheduler a process creates


class SubtaskFailed(D3HFError, RuntimeError):
    """Another process failed on a subtask; its error is in the message."""


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

    ``reserve`` claims ``preferred`` subtasks (those whose checkpoint this process holds and the
    others may not see) before any dealing starts; the caller waits for every process to have
    reserved. Without a ``store`` (one process) every subtask is this one's.
    """

    def __init__(self, order: Sequence[int], rank: int, store=None, preferred: Sequence[int] = ()):
        self.order = list(order)
        self.preferred = [k for k in self.order if k in set(preferred)]
        self.rank = rank
        self.store = store
        self.claimed: list[int] = []
        self._ready: list[int] = []  # reserved, not yet handed out by claim()
        self._next = 0
        self._prefix = f"{PREFIX}/{next(_GENERATION)}"

    def _take(self, index: int) -> bool:
        me = str(self.rank).encode()
        if self.store is None or self.store.compare_set(f"{self._prefix}/claim/{index}", "", me) == me:
            self.claimed.append(index)
            return True
        return False

    def reserve(self) -> None:
        """Claim every preferred subtask now (before dealing starts elsewhere)."""
        self._ready += [k for k in self.preferred if self._take(k)]

    def claim(self) -> int | None:
        """The next subtask this process runs, or None when every subtask is claimed."""
        if self._ready:
            return self._ready.pop(0)
        while self._next < len(self.order):
            k = self.order[self._next]
            self._next += 1
            if k not in self.claimed and self._take(k):
                return k
        return None

    def publish(self, index: int, result: dict) -> None:
        """Hand ``result`` (tensors, numbers, strings) of subtask ``index`` to the main process."""
        buffer = io.BytesIO()
        torch.save(result, buffer)
        payload = buffer.getvalue()
        key = f"{self._prefix}/result/{index}"
        parts = [payload[i : i + PART_BYTES] for i in range(0, len(payload), PART_BYTES)] or [b""]
        for i, part in enumerate(parts):
            self.store.set(f"{key}/{i}", part)
        self.store.set(key, str(len(parts)))  # last: the result is whole once this key exists

    def publish_error(self, index: int, error: str) -> None:
        self.publish(index, {"index": index, "process": self.rank, "error": error})

    def collect(self, indices: Sequence[int], poll_seconds: float = 2.0, report_seconds: float = 300.0) -> list[dict]:
        """The published results of ``indices``, waiting for them as long as it takes; a result
        that is an error raises ``SubtaskFailed``."""
        keys = {k: f"{self._prefix}/result/{k}" for k in indices}
        results: dict[int, dict] = {}
        started = last_report = time.monotonic()
        while len(results) < len(keys):
            for k, key in keys.items():
                if k not in results and self.store.check([key]):
                    parts = int(self.store.get(key))
                    payload = b"".join(self.store.get(f"{key}/{i}") for i in range(parts))
                    for i in range(parts):  # the store keeps no copy of what it handed over
                        self.store.delete_key(f"{key}/{i}")
                    result = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
                    if "error" in result:
                        raise SubtaskFailed(f"Process {result['process']} failed on subtask {k}:\n{result['error']}")
                    results[k] = result
            if len(results) < len(keys):
                if time.monotonic() - last_report >= report_seconds:
                    last_report = time.monotonic()
                    pending = [k for k in keys if k not in results]
                    logger.info("Waiting %.0f min for subtask(s) %s (%s)", (last_report - started) / 60, pending,
                                ", ".join(f"{k}: {self.claimed_by(k)}" for k in pending))
                time.sleep(poll_seconds)
        return [results[k] for k in indices]

    def claimed_by(self, index: int) -> str:
        key = f"{self._prefix}/claim/{index}"
        return f"process {self.store.get(key).decode()}" if self.store.check([key]) else "not claimed yet"
