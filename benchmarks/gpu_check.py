"""A ten-minute check of d3hf's device paths on one GPU (or on the CPU, where it is tested):
distil a few iterations of a small generated 64x64x3 task on the device, in float32 and in
bf16 autocast, evaluate the artifact there, generate samples there, and print a short report
(device, time of each step, peak device memory, and the checks that passed).

    python benchmarks/gpu_check.py                    # cuda when available, else cpu
    python benchmarks/gpu_check.py --device cpu --out /tmp/gpu-check

Exit code 0 when every check passed. Nothing is downloaded; the data is generated
(benchmarks/synthetic.py) in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file: the repo root
from benchmarks.synthetic import write_synthetic  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPE, CLASSES = (3, 64, 64), 10
SETTINGS = {"ipc_budget": 1, "num_experts": 1, "expert_epochs_total": 2, "min_start_epoch": 0, "max_start_epoch": 1,
            "expert_epochs": 1, "syn_steps": 5, "samples_per_class": 2, "mmd_samples": 8, "init_steps": 50,
            "iterations": 10, "checkpoint_every": 5, "log_every": 5, "eval_epochs": 20, "report_to": "none",
            "mmd_chunk_classes": "4"}
QUICK = {"iterations": 2, "init_steps": 5, "eval_epochs": 2, "student_width": 4, "expert_epochs_total": 2}


def run(device: str, out: str, quick: bool = False) -> dict:
    import torch
    from accelerate.state import AcceleratorState

    from d3hf.distill.config import DistillArguments
    from d3hf.distill.distributed import make_accelerator
    from d3hf.distill.runner import run_distillation
    from d3hf.hub.generate import generate_dataset
    from d3hf.utils.environment import measured_on

    data = write_synthetic(os.path.join(out, "data"), SHAPE if not quick else (3, 16, 16), CLASSES,
                           40 if not quick else 6, 10 if not quick else 2)
    cpu = torch.device(device).type == "cpu"
    checks, steps = {}, {}
    for precision in ("no", "bf16"):
        settings = {**SETTINGS, **(QUICK if quick else {}), "dataset": data, "mixed_precision": precision,
                    "output_dir": os.path.join(out, f"run-{precision}"), "overwrite_output_dir": True, "cpu": cpu}
        if torch.device(device).type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t = time.perf_counter()
        accelerator = make_accelerator(cpu=cpu, mixed_precision=precision)
        ran_on = accelerator.device
        try:
            model, summary = run_distillation(DistillArguments(**settings), accelerator=accelerator,
                                              show_progress=False)
        finally:
            accelerator.end_training()
            # One process, two precisions: accelerate keeps one state per process unless reset.
            AcceleratorState._reset_state(reset_partial_state=True)
        steps[f"distil + evaluate ({precision})"] = time.perf_counter() - t
        accuracy = summary["evaluation"]["results"][0]["mean"]
        checks[f"distilled on {ran_on} ({precision}), evaluated: {100 * accuracy:.1f} %"] = \
            model is not None and 0.0 <= accuracy <= 1.0 and summary["evaluation"]["results"][0]["split"] == "test"
        if torch.device(device).type == "cuda":
            steps[f"peak device memory ({precision}) MB"] = torch.cuda.max_memory_allocated(device) / 2**20
    t = time.perf_counter()
    samples = generate_dataset(model, os.path.join(out, "samples"), num_per_class=5, seed=0, overwrite=True,
                               device=device)
    steps["generate 50 samples"] = time.perf_counter() - t
    checks[f"generated {len(samples)} samples on {device}"] = len(samples) == 5 * CLASSES
    return {"device": str(device), "machine": measured_on(torch.device(device)), "seconds": steps, "checks": checks,
            "passed": all(checks.values())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--out", default=os.path.join(HERE, "cache", "gpu_check"))
    p.add_argument("--quick", action="store_true", help="seconds-long settings (for the tests)")
    a = p.parse_args(argv)
    import torch

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    report = run(device, a.out, a.quick)
    lines = [f"d3hf GPU check on {report['device']} ({report['machine'].get('device_name')}, torch "
             f"{report['machine'].get('torch')})"]
    lines += [f"  {name}: {value:.1f}" for name, value in report["seconds"].items()]
    lines += [f"  [{'ok' if ok else 'FAILED'}] {name}" for name, ok in report["checks"].items()]
    lines.append("all checks passed" if report["passed"] else "SOME CHECKS FAILED")
    print("\n".join(lines))
    with open(os.path.join(a.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
