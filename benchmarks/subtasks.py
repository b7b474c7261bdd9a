"""Subtask decomposition on MNIST-5k: accuracy for 1, 2 and 5 subtasks, and the wall-time
speedup of running 2 subtasks on 2 processes instead of 1.

Every cell runs `d3hf distill` in a fresh subprocess and is cached in
benchmarks/cache/subtasks/<cell>.json, so the script resumes where it stopped:

    python benchmarks/subtasks.py                  # all cells, then benchmarks/subtasks.md
    python benchmarks/subtasks.py --only speed     # just the speedup cells
    python benchmarks/subtasks.py --only accuracy

Run it on an otherwise idle machine: the speedup cells time wall clock.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CACHE = os.path.join(HERE, "cache", "subtasks")
RECIPE = os.path.join(REPO, "recipes", "mnist5k", "ipc10.yaml")
ACCELERATE_CONFIG = os.path.join(REPO, "recipes", "accelerate_configs", "cpu_2proc.yaml")
BIN = os.path.dirname(sys.executable)
SPEED_ITERATIONS = 60
# One thread: the accuracy cells can then share the machine with another single-thread job.
ACCURACY_THREADS = 1


def _run(cmd: list[str], threads: int, log: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    t = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - t


def accuracy_cell(subtasks: int) -> dict:
    out = os.path.join(CACHE, f"accuracy_{subtasks}")
    cmd = [os.path.join(BIN, "d3hf"), "distill", RECIPE, "--num_subtasks", str(subtasks), "--output_dir", out,
           "--num_threads", str(ACCURACY_THREADS)]
    wall = _run(cmd, ACCURACY_THREADS, out + ".log")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    return {"subtasks": subtasks, "wall_s": wall, "command": " ".join(cmd[1:]).replace(REPO + "/", ""),
            "results": summary["evaluation"]["results"], "ledger": summary["ledger"],
            "timings": summary["timings"], "per_subtask": summary["subtasks"]}


def speed_cell(processes: int, iterations: int) -> dict:
    out = os.path.join(CACHE, f"speed_{processes}proc" + ("" if iterations == SPEED_ITERATIONS else f"_it{iterations}"))
    shutil.rmtree(out, ignore_errors=True)  # experts are trained again: they are part of the work
    args = ["distill", RECIPE, "--num_subtasks", "2", "--iterations", str(iterations), "--eval_epochs", "0",
            "--num_threads", "1", "--output_dir", out + ("/rank{process_index}" if processes > 1 else "")]
    if processes == 1:
        cmd = [os.path.join(BIN, "d3hf"), *args]
    else:
        cmd = [os.path.join(BIN, "accelerate"), "launch", "--config_file", ACCELERATE_CONFIG, "-m", "d3hf", *args,
               "--cpu"]
    wall = _run(cmd, 1, out + ".log")
    return {"processes": processes, "iterations": iterations, "wall_s": wall, "command": " ".join(cmd[1:]).replace(REPO + "/", "")}


def cached(name: str, compute) -> dict:
    path = os.path.join(CACHE, name + ".json")
    if not os.path.exists(path):
        result = compute()
        result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=2)
        os.replace(path + ".tmp", path)
    with open(path) as f:
        return json.load(f)


def report(accuracy: list[dict], speed: list[dict]) -> str:
    lines = ["# Subtask decomposition (MNIST-5k)", "", "Command: `python benchmarks/subtasks.py` (cells cached in "
             "benchmarks/cache/subtasks/).", ""]
    if speed:
        lines += ["## Speed: 2 subtasks, experts included, no evaluation, one torch thread per process", "",
                  "| iterations per subtask | processes | wall (s) | speedup | command |", "|---:|---:|---:|---:|---|"]
        for one, two in zip(speed[::2], speed[1::2]):
            for r in (one, two):
                lines.append(f"| {r.get('iterations', SPEED_ITERATIONS)} | {r['processes']} | {r['wall_s']:.1f} | "
                             f"{one['wall_s'] / r['wall_s']:.2f}x | `{r['command']}` |")
        lines += ["", f"Target: at least 1.7x on 2 cores; machine: {speed[0]['machine']}. Wall time includes launching "
                      "(accelerate, imports, data loading in each process), a fixed cost that weighs more in short runs.",
                  ""]
    if accuracy:
        lines += ["## Accuracy at ipc_budget 10 (P-noaug, final epoch, 1 seed)", "",
                  "| subtasks | d3hf | random real (10/class) | storage (IPC-eq.) | wall (s) | share of 1 subtask |",
                  "|---:|---:|---:|---:|---:|---:|"]
        base = accuracy[0]["results"][0]["mean"] if accuracy[0]["subtasks"] == 1 else None
        for r in accuracy:
            d3, real = r["results"][0]["mean"], r["results"][1]["mean"]
            share = f"{100 * d3 / base:.1f} %" if base else "-"
            lines.append(f"| {r['subtasks']} | {100 * d3:.1f} % | {100 * real:.1f} % | "
                         f"{r['ledger']['ipc_equivalent']:.3f} | {r['wall_s']:.0f} | {share} |")
        lines += ["", f"Command per row: `d3hf distill recipes/mnist5k/ipc10.yaml --num_subtasks S --num_threads "
                      f"{ACCURACY_THREADS}` (one process); machine: {accuracy[0]['machine']}. Target: 2 subtasks reach "
                      "at least 95 % of the single-task accuracy."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=["speed", "accuracy"], default=None)
    p.add_argument("--subtasks", default="1,2,5")
    p.add_argument("--speed-iterations", default=f"{SPEED_ITERATIONS},150")
    a = p.parse_args()
    os.makedirs(CACHE, exist_ok=True)
    speed, accuracy = [], []
    if a.only in (None, "speed"):
        for its in map(int, a.speed_iterations.split(",")):
            suffix = "" if its == SPEED_ITERATIONS else f"_it{its}"
            speed += [cached(f"speed_{n}proc{suffix}", lambda n=n, its=its: speed_cell(n, its)) for n in (1, 2)]
    if a.only in (None, "accuracy"):
        accuracy = [cached(f"accuracy_{s}", lambda s=s: accuracy_cell(s)) for s in map(int, a.subtasks.split(","))]
    text = report(accuracy, speed)
    with open(os.path.join(HERE, "subtasks.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
