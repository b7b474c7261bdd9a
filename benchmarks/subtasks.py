"""Subtask decomposition on MNIST-5k: accuracy for 1, 2 and 5 subtasks, and the wall-time
speedup of running 2 subtasks on 2 processes instead of 1.

Every cell runs `d3hf distill` in a fresh subprocess and is cached in
benchmarks/cache/subtasks/<cell>.json, so the script resumes where it stopped:

    python benchmarks/subtasks.py                  # all cells, then benchmarks/subtasks.md
    python benchmarks/subtasks.py --only speed     # just the speedup cells
    python benchmarks/subtasks.py --only accuracy
    python benchmarks/subtasks.py --init random    # the reference's start (cells of their own)

Run it on an otherwise idle machine: the speedup cells time wall clock. The report has one
section per `init` with cached cells.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from d3hf.utils.environment import cpu_model

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CACHE_ROOT = os.path.join(HERE, "cache", "subtasks")
INITS = ("vae", "random")
RECIPE = os.path.join(REPO, "recipes", "mnist5k", "ipc10.yaml")
ACCURACY_ITERATIONS = 400  # the recipe's matching phase when the accuracy cells were measured; it now runs none
ACCELERATE_CONFIG = os.path.join(REPO, "recipes", "accelerate_configs", "cpu_2proc.yaml")
BIN = os.path.dirname(sys.executable)
SPEED_ITERATIONS = 300
# One thread: the accuracy cells can then share the machine with another single-thread job.
ACCURACY_THREADS = 1


def _run(cmd: list[str], threads: int, log: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    t = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - t


def accuracy_cell(init: str, subtasks: int) -> dict:
    out = os.path.join(CACHE_ROOT, init, f"accuracy_{subtasks}")
    cmd = [os.path.join(BIN, "d3hf"), "distill", RECIPE, "--num_subtasks", str(subtasks), "--init", init,
           "--iterations", str(ACCURACY_ITERATIONS), "--output_dir", out, "--num_threads", str(ACCURACY_THREADS)]
    wall = _run(cmd, ACCURACY_THREADS, out + ".log")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    return {"subtasks": subtasks, "wall_s": wall, "command": " ".join(cmd[1:]).replace(REPO + "/", ""),
            "results": summary["evaluation"]["results"], "ledger": summary["ledger"],
            "timings": summary["timings"], "per_subtask": summary["subtasks"]}


def speed_cell(init: str, processes: int, iterations: int) -> dict:
    out = os.path.join(CACHE_ROOT, init, f"speed_{processes}proc_it{iterations}")
    shutil.rmtree(out, ignore_errors=True)  # experts are trained again: they are part of the work
    args = ["distill", RECIPE, "--num_subtasks", "2", "--iterations", str(iterations), "--eval_epochs", "0",
            "--init", init,
            "--num_threads", "1", "--output_dir", out + ("/rank{process_index}" if processes > 1 else "")]
    if processes == 1:
        cmd = [os.path.join(BIN, "d3hf"), *args]
    else:
        cmd = [os.path.join(BIN, "accelerate"), "launch", "--config_file", ACCELERATE_CONFIG, "-m", "d3hf", *args,
               "--cpu"]
    wall = _run(cmd, 1, out + ".log")
    return {"processes": processes, "iterations": iterations, "wall_s": wall, "command": " ".join(cmd[1:]).replace(REPO + "/", "")}


def _read(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def cached(init: str, name: str, compute) -> dict:
    path = os.path.join(CACHE_ROOT, init, name + ".json")
    if not os.path.exists(path):
        result = compute()
        result["machine"] = f"{cpu_model()}, {os.cpu_count()} cores"
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=2)
        os.replace(path + ".tmp", path)
    return _read(path)


def load_cells(init: str) -> tuple[list[dict], list[dict]]:
    """(accuracy, speed) cells cached for ``init``; speed as (1 process, 2 processes) pairs."""
    folder = os.path.join(CACHE_ROOT, init)
    names = sorted(n for n in os.listdir(folder) if n.endswith(".json")) if os.path.isdir(folder) else []
    cells = {n[:-5]: _read(os.path.join(folder, n)) for n in names}
    accuracy = sorted((c for n, c in cells.items() if n.startswith("accuracy_")), key=lambda c: c["subtasks"])
    speed = []
    for its in sorted({c["iterations"] for n, c in cells.items() if n.startswith("speed_")}):
        pair = [cells.get(f"speed_{p}proc_it{its}") for p in (1, 2)]
        if all(pair):
            speed += pair
    return accuracy, speed


def report() -> str:
    lines = ["# Subtask decomposition (MNIST-5k)", "", "Command: `python benchmarks/subtasks.py [--init random]` (cells "
             "cached in benchmarks/cache/subtasks/INIT/).", ""]
    for init in INITS:
        accuracy, speed = load_cells(init)
        if accuracy or speed:
            lines += [f"## init: {init}" + (" (the default)" if init == INITS[0] else ""), ""]
            lines += _section(accuracy, speed)
    return "\n".join(lines) + "\n"


def _section(accuracy: list[dict], speed: list[dict]) -> list[str]:
    lines = []
    if speed:
        lines += ["### Speed: 2 subtasks, experts included, no evaluation, one torch thread per process", "",
                  "| iterations per subtask | processes | wall (s) | speedup | command |", "|---:|---:|---:|---:|---|"]
        for one, two in zip(speed[::2], speed[1::2]):
            for r in (one, two):
                lines.append(f"| {r['iterations']} | {r['processes']} | {r['wall_s']:.1f} | "
                             f"{one['wall_s'] / r['wall_s']:.2f}x | `{r['command']}` |")
        lines += ["", f"Target: at least 1.7x on 2 cores; machine: {speed[0]['machine']}. Wall time includes launching "
                      "(accelerate, imports, data loading in each process), a fixed cost that weighs more in short runs.",
                  ""]
    if accuracy:
        lines += ["### Accuracy at ipc_budget 10 (P-noaug, final epoch, 1 seed)", "",
                  "| subtasks | d3hf | random real (10/class) | storage (IPC-eq.) | wall (s) | share of 1 subtask |",
                  "|---:|---:|---:|---:|---:|---:|"]
        base = accuracy[0]["results"][0]["mean"] if accuracy[0]["subtasks"] == 1 else None
        for r in accuracy:
            d3, real = r["results"][0]["mean"], r["results"][1]["mean"]
            share = f"{100 * d3 / base:.1f} %" if base else "-"
            lines.append(f"| {r['subtasks']} | {100 * d3:.1f} % | {100 * real:.1f} % | "
                         f"{r['ledger']['ipc_equivalent']:.3f} | {r['wall_s']:.0f} | {share} |")
        lines += ["", f"Command per row: `d3hf distill recipes/mnist5k/ipc10.yaml --num_subtasks S --iterations "
                      f"{ACCURACY_ITERATIONS} --num_threads {ACCURACY_THREADS}` (one process); machine: {accuracy[0]['machine']}. Target: 2 subtasks reach "
                      "at least 95 % of the single-task accuracy.", ""]
    return lines


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=["speed", "accuracy"], default=None)
    p.add_argument("--subtasks", default="1,2,5")
    p.add_argument("--speed-iterations", default=str(SPEED_ITERATIONS))
    p.add_argument("--init", choices=INITS, default=INITS[0])
    a = p.parse_args()
    os.makedirs(os.path.join(CACHE_ROOT, a.init), exist_ok=True)
    if a.only in (None, "speed"):
        for its in map(int, a.speed_iterations.split(",")):
            for n in (1, 2):
                cached(a.init, f"speed_{n}proc_it{its}", lambda n=n, its=its: speed_cell(a.init, n, its))
    if a.only in (None, "accuracy"):
        for s in map(int, a.subtasks.split(",")):
            cached(a.init, f"accuracy_{s}", lambda s=s: accuracy_cell(a.init, s))
    text = report()
    with open(os.path.join(HERE, "subtasks.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
