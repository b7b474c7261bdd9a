"""Run a d3hf command that SIGKILLs itself at a named point, the way a power cut or the
out-of-memory killer would stop it: no cleanup runs.

    python tests/kill_run.py POINT [RENDEZVOUS] d3hf-arguments ...

POINT: ``expert-<i>`` (expert i saved), ``iteration-<n>`` (iteration n done, before its
checkpoint), ``artifact-write`` (artifact files written, not yet renamed into place).
RENDEZVOUS ``<dir>:<n>``: the process waits at POINT until ``n`` processes have reached it (each
leaves a file in ``<dir>``), so a multi-process test sees every rank stopped at the same point
instead of whichever the launcher tore down first. Runs under ``accelerate launch`` too.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time

from d3hf.distill.callbacks import DistillCallback

RENDEZVOUS_TIMEOUT = 300.0


class KillAt(DistillCallback):
    """SIGKILLs this process when the run reaches ``point``."""

    def __init__(self, point: str, rendezvous: str | None = None):
        self.point, self.rendezvous = point, rendezvous

    def on_expert_saved(self, index: int, path: str) -> None:
        self._reached(f"expert-{index}")

    def on_iteration_end(self, iteration: int, record: dict) -> None:
        self._reached(f"iteration-{iteration}")

    def on_artifact_written(self, folder: str) -> None:
        self._reached("artifact-write")

    def _reached(self, point: str) -> None:
        if point != self.point:
            return
        if self.rendezvous:
            self._wait_for_peers()
        os.kill(os.getpid(), signal.SIGKILL)

    def _wait_for_peers(self) -> None:
        directory, _, count = self.rendezvous.rpartition(":")
        os.makedirs(directory, exist_ok=True)
        open(os.path.join(directory, f"arrived-{os.getpid()}"), "w").close()
        # A bounded wait: a peer that crashed must not hang the test forever.
        deadline = time.monotonic() + RENDEZVOUS_TIMEOUT
        while len(os.listdir(directory)) < int(count) and time.monotonic() < deadline:
            time.sleep(0.05)


def main(argv: list[str]) -> int:
    point, argv = argv[0], argv[1:]
    rendezvous = argv.pop(0) if argv and ":" in argv[0] and not argv[0].startswith("-") else None
    import d3hf.distill.runner as runner
    from d3hf.commands.cli import main as d3hf_main

    runner.run_distillation = functools.partial(runner.run_distillation, callbacks=[KillAt(point, rendezvous)])
    return d3hf_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
