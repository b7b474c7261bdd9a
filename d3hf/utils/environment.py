"""What a number was measured on: float results depend on the device's kernels and thread count,
so the same training on another CPU or GPU gives a different, equally valid, accuracy."""

from __future__ import annotations

import os
import platform

import torch

from .._version import __version__


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``'s model name on Linux), else what
    ``platform`` knows."""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def measured_on(device: str | torch.device = "cpu") -> dict:
    """The device, its name, and the torch build and thread count a result came from."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {"device": device.type, "device_name": name, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": str(torch.__version__), "torch_threads": torch.get_num_threads(), "d3hf": __version__}


def describe(environment: dict) -> str:
    """One line for a table's caption: "AMD EPYC (cpu), torch 2.13.0+cpu, 1 thread"."""
    threads = environment["torch_threads"]
    return (f"{environment['device_name']} ({environment['device']}), torch {environment['torch']}, "
            f"{threads} thread{'s' if threads != 1 else ''}")


def measured_where(result: dict) -> str:
    """Where an evaluation result (``evaluation.evaluate``) was trained: its machine, and the
    machines of the checkpoints it resumed from, if any."""
    text = describe(result["measured_on"])
    if result.get("checkpointed_on"):
        text += "; resumed from training on " + ", ".join(describe(e) for e in result["checkpointed_on"])
    return text
