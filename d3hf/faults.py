"""Fault injection for the kill-and-resume tests.

With ``D3HF_KILL_AT=<point>`` in the environment, the process SIGKILLs itself when it reaches
that point, the way a power cut or the out-of-memory killer would stop it: no cleanup runs.
Points: ``expert-<i>`` (expert i saved), ``iteration-<n>`` (iteration n done, before its
checkpoint), ``artifact-write`` (artifact files written, not yet renamed into place).
"""

from __future__ import annotations

import os
import signal

ENV = "D3HF_KILL_AT"


def kill_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
