"""The distributed path at D3's scale, simulated on CPU: 100 classes of 64x64x3 generated images
(benchmarks/synthetic.py, 200 train and 20 test images per class, saved with ``save_to_disk``)
distilled in subtasks by ``accelerate launch`` on 2 CPU processes (gloo), each subtask longer
than the process group's timeout allows a collective to wait.

Cells (each one launch, cached as JSON in benchmarks/cache/scale_simulation/):

- ``even``: 10 subtasks of 10 classes on 2 processes, ``ddp_timeout`` 60 s;
- ``uneven``: 3 subtasks on 2 processes, one with 5x the classes (and work) of each other one,
  ``ddp_timeout`` 60 s;
- ``single``: 1 process distilling 1 of the ``even`` cell's subtasks (``subtask_ids 0``): the
  memory a subtask of that size needs, which the ``even`` processes are compared with.

Each process reports its busy time (from its start to its last subtask's end), the subtasks it
claimed and its peak RSS:

    python benchmarks/scale_simulation.py            # every cell, then benchmarks/scale_simulation.md
    python benchmarks/scale_simulation.py --cells even

Settings are small per subtask (1 expert of 2 epochs, ConvNet-3 width 16, 5 unrolled steps): the
point is the dealing, the hand-over and the memory, not the accuracy. Run it on an otherwise idle
machine: the busy times are wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file: the repo root
from benchmarks.cells import cached  # noqa: E402
from benchmarks.synthetic import write_synthetic  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CACHE = os.path.join(HERE, "cache", "scale_simulation")
SHAPE, CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = (3, 64, 64), 100, 200, 20
TIMEOUT_S = 60
# Seconds-long for the test suite: every code path, no meaningful figure.
SMOKE = {"shape": (3, 16, 16), "classes": 6, "train_per_class": 8, "test_per_class": 2,
         "settings": {"iterations": 2, "init_steps": 5, "expert_epochs_total": 2, "student_width": 4, "ipc_budget": 4}}
SETTINGS = {"ipc_budget": 1, "num_experts": 1, "expert_epochs_total": 2, "min_start_epoch": 0, "max_start_epoch": 1,
            "expert_epochs": 1, "student_width": 16, "syn_steps": 5, "samples_per_class": 2, "mmd_samples": 8,
            "init_steps": 100, "iterations": 40, "checkpoint_every": 20, "log_every": 10, "eval_epochs": 0,
            "report_to": "none", "num_threads": 1, "expert_workers": 1}
CELLS = {
    "even": {"processes": 2, "num_subtasks": 10},
    "uneven": {"processes": 2, "subtasks": [list(range(0, 72)), list(range(72, 86)), list(range(86, 100))]},
    "single": {"processes": 1, "num_subtasks": 10, "subtask_ids": "0"},
}


def _peak_rss_mb() -> float:
    """This process's peak RSS since it started its program: the memory map's high-water mark.
    (``ru_maxrss`` would also count the parent's memory at the fork: the driver of this benchmark
    holds the generated images when it starts the 1-process cell.)"""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def worker(config: str) -> None:
    """One launched process: the run, then one JSON line with what this process did."""
    import torch

    from d3hf.commands.distill import parse_distill_args
    from d3hf.distill.distributed import make_accelerator
    from d3hf.distill.runner import run_distillation

    started = time.perf_counter()
    args = parse_distill_args([config])
    accelerator = make_accelerator(cpu=True, num_threads=args.run.num_threads, timeout_seconds=args.run.ddp_timeout)
    try:
        _, summary = run_distillation(args, accelerator=accelerator, show_progress=False)
    finally:
        accelerator.end_training()
    mine = [s for s in summary["subtasks"] if s.get("process") == accelerator.process_index]
    print(json.dumps({"rank": accelerator.process_index, "busy_s": summary["timings"]["busy_s"],
                      "wall_s": time.perf_counter() - started, "subtasks": [s["index"] for s in mine],
                      "peak_rss_mb": _peak_rss_mb(),
                      "threads": torch.get_num_threads()}), flush=True)


def run_cell(name: str, cache: str = CACHE, smoke: bool = False) -> dict:
    import yaml

    from d3hf.utils.environment import cpu_model

    if smoke:
        data = write_synthetic(os.path.join(cache, "data"), SMOKE["shape"], SMOKE["classes"],
                               SMOKE["train_per_class"], SMOKE["test_per_class"])
    else:
        data = write_synthetic(os.path.join(cache, "data"), SHAPE, CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS)
    cell = dict(CELLS[name])
    processes = cell.pop("processes")
    if smoke:  # the same shapes of work on 6 classes
        cell = {"uneven": {"subtasks": [[0, 1, 2, 3], [4], [5]]}, "even": {"num_subtasks": 3},
                "single": {"num_subtasks": 3, "subtask_ids": "0"}}[name]
    out = os.path.join(cache, "runs", name)
    settings = {**SETTINGS, **(SMOKE["settings"] if smoke else {}), **cell, "dataset": data, "output_dir": out,
                "ddp_timeout": TIMEOUT_S, "overwrite_output_dir": True}
    config = os.path.join(cache, f"{name}.yaml")
    with open(config, "w") as f:
        yaml.safe_dump(settings, f)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    if processes == 1:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", config]
        env.update(WORLD_SIZE="1")
    else:
        accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
        cmd = [accelerate, "launch", "--config_file", os.path.join(REPO, "recipes", "accelerate_configs",
                                                                     "cpu_2proc.yaml"),
               "--num_processes", str(processes), os.path.abspath(__file__), "--worker", config]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    with open(os.path.join(cache, f"{name}.log"), "w") as f:
        f.write(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"cell {name} failed (rc {proc.returncode}); see {os.path.join(cache, name + '.log')}")
    ranks = sorted((json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")),
                   key=lambda r: r["rank"])
    return {"cell": name, "processes": processes, "settings": {k: v for k, v in settings.items()
                                                               if k not in ("dataset", "output_dir")},
            "wall_s": wall, "ranks": ranks, "cpu": f"{cpu_model()}, {os.cpu_count()} threads"}


def report(records: dict[str, dict]) -> str:
    lines = ["# Subtasks at scale, simulated on CPU", "",
             f"Command: `python benchmarks/scale_simulation.py`. {CLASSES} classes x {TRAIN_PER_CLASS} train images, "
             f"64x64x3 (generated), ipc_budget 1; `accelerate launch` on CPU processes (gloo), one torch thread each; "
             f"`ddp_timeout` {TIMEOUT_S} s. Busy: from the process's start to the end of its last subtask.", "",
             "| cell | processes | subtasks | wall s | per process: subtasks claimed, busy s, peak RSS MB | busy spread |",
             "|---|---:|---|---:|---|---:|"]
    for name, r in records.items():
        busy = [x["busy_s"] for x in r["ranks"]]
        spread = (max(busy) - min(busy)) / max(busy) if len(busy) > 1 else 0.0
        parts = "; ".join(f"{x['rank']}: {x['subtasks']}, {x['busy_s']:.0f} s, {x['peak_rss_mb']:.0f} MB"
                          for x in r["ranks"])
        subtasks = r["settings"].get("num_subtasks") or [len(s) for s in r["settings"]["subtasks"]]
        lines.append(f"| {name} | {r['processes']} | {subtasks} | {r['wall_s']:.0f} | {parts} | {100 * spread:.0f} % |")
    if "even" in records and "single" in records:
        single = records["single"]["ranks"][0]["peak_rss_mb"]
        worst = max(x["peak_rss_mb"] for x in records["even"]["ranks"])
        lines += ["", f"Peak RSS of an `even` process against a 1-subtask run of the same subtask size: "
                      f"{worst:.0f} / {single:.0f} MB = {worst / single:.2f}x."]
    first = next(iter(records.values()), None)
    if first:
        lines += ["", f"Measured on {first['cpu']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--out", default=HERE, help="folder for the cache and scale_simulation.md")
    p.add_argument("--smoke", action="store_true", help="seconds-long cells (for the tests)")
    p.add_argument("--worker", metavar="CONFIG", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(a.worker)
        return
    cache = os.path.join(a.out, "cache", "scale_simulation" + ("-smoke" if a.smoke else ""))
    records = {name: cached(os.path.join(cache, f"{name}.json"), lambda name=name: run_cell(name, cache, a.smoke))
               for name in a.cells.split(",")}
    text = report(records)
    with open(os.path.join(a.out, f"scale_simulation{'-smoke' if a.smoke else ''}.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
