"""Fault injection for the kill-and-resume tests.

With ``D3HF_KILL_AT=<point>`` in the environment, the process SIGKILLs itself when it reaches
that point, the way a power cut or the out-of-memory killer would stop it: no cleanup runs.
Points: ``expert-<i>`` (expert i saved), ``iteration-<n>`` (iteration n done, before its
checkpoint), ``artifact-write`` (artifact files written, not yet renamed into place).

With ``D3HF_KILL_RENDEZVOUS=<dir>:<n>`` as well, a process at the point waits until ``n``
processes have reached it (each leaves a file in ``<dir>``) before it dies, so a multi-process
test sees every rank stopped at the same point instead of whichever the launcher tore down first.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "D3HF_KILL_AT"
RENDEZVOUS_ENV = "D3HF_KILL_RENDEZVOUS"
RENDEZVOUS_TIMEOUT = 300.0


def kill_point(name: str) -> None:
    if os.environ.get(ENV) != name:
        return
    if os.environ.get(RENDEZVOUS_ENV):
        _wait_for_peers(os.environ[RENDEZVOUS_ENV])
    os.kill(os.getpid(), signal.SIGKILL)


def _wait_for_peers(spec: str) -> None:
    directory, _, count = spec.rpartition(":")
    os.makedirs(directory, exist_ok=True)
    open(os.path.join(directory, f"arrived-{os.getpid()}"), "w").close()
    # A bounded wait: a peer that crashed must not hang the test forever.
    deadline = time.monotonic() + RENDEZVOUS_TIMEOUT
    while len(os.listdir(directory)) < int(count) and time.monotonic() < deadline:
        time.sleep(0.05)
