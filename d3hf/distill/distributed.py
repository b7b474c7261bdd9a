"""The accelerate side of a run: one process per launched rank, checked, with a fair share of threads."""

from __future__ import annotations

import logging
import os

import torch

from ..errors import ConfigError

logger = logging.getLogger(__name__)


def threads_per_process(requested: int = 0) -> int:
    """``requested`` if set; else the machine's cores split over the processes that share it."""
    if requested:
        return requested
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, (os.cpu_count() or 1) // local) if local > 1 else torch.get_num_threads()


def make_accelerator(cpu: bool = False, mixed_precision: str = "no", num_threads: int = 0,
                     log_with: list[str] | None = None, project_dir: str | None = None, timeout_seconds: int = 1800):
    """An ``Accelerator`` whose world size is the one the launcher started, with the experiment
    trackers ``log_with`` (accelerate's names) writing under ``project_dir`` and a process group
    whose collectives wait at most ``timeout_seconds``.

    ``accelerate launch --multi_gpu`` on a machine without GPUs starts processes that each
    believe they are alone unless the script asks for CPU (gloo): they would all redo the
    same work. That case is refused here instead.
    """
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    torch.set_num_threads(threads_per_process(num_threads))
    # The recipe's key wins over the launcher's (it is part of what a resumed run must match).
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launcher and launcher != mixed_precision:
        logger.warning("The launcher config asks for mixed_precision %s; d3hf uses the recipe's %r. "
                       "Set mixed_precision in the recipe or pass --mixed_precision %s.", launcher, mixed_precision,
                       launcher)
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision, log_with=log_with or None,
                              project_dir=project_dir,
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_seconds))])
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched != accelerator.num_processes:
        raise ConfigError(
            f"The launcher started {launched} processes, but this one runs as world size {accelerator.num_processes}. "
            "Without GPUs, pass the script's own --cpu flag: accelerate launch --multi_gpu --num_processes "
            f"{launched} -m d3hf distill CONFIG.yaml --cpu"
        )
    if accelerator.num_processes > 1:
        logger.info("Process %d of %d on %s, %d torch thread(s)", accelerator.process_index,
                    accelerator.num_processes, accelerator.device, torch.get_num_threads())
    return accelerator
