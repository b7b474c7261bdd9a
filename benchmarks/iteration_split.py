"""Where distillation time goes: the experts, the MTT term and the MMD term, each with its own
forward and backward pass.

An iteration sums both terms and runs one backward pass over the sum, so its backward cannot be
split by timing it. Each recipe (MNIST-5k at ipc_budget 1 and 10) is therefore run three times
through `d3hf distill` in a fresh process with one torch thread: as it is, with MTT only
(`--mmd_weight 0`) and with MMD only (`--mtt_weight 0`), for a few iterations from a random
init (the warm start is not what is timed) on the recipe's experts, which are built once first
and timed. Cells are cached in benchmarks/cache/iteration_split/; the summary is
benchmarks/iteration_split.md.

    python benchmarks/iteration_split.py                  # every cell (resumes), then the summary
    python benchmarks/iteration_split.py --cell 10 mtt    # one measurement, prints JSON
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file: the repo root

from benchmarks import grid  # noqa: E402  (the machine a measurement ran on, as the grid records it)

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, "cache", "iteration_split")
IPCS, ITERATIONS = ("1", "10"), 30
TERMS = {"both": [], "mtt": ["--mmd_weight", "0"], "mmd": ["--mtt_weight", "0"]}
PARTS = ("mtt_forward", "mmd_forward", "backward")


def recipe(ipc: str) -> str:
    return os.path.join(os.path.dirname(HERE), "recipes", "mnist5k", f"ipc{ipc}.yaml")


def run(ipc: str, terms: str) -> dict:
    """``d3hf distill`` of the recipe as the module docstring says; the timings it reports.
    ``terms`` "experts" builds the recipe's experts into the shared buffer (and runs one
    iteration: a run without a matching phase trains no experts)."""
    from d3hf.commands.cli import main as d3hf

    load = os.getloadavg()[0]  # what else was running: timings are wall time
    out = os.path.join(CACHE, f"run_ipc{ipc}_{terms}")
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, never resumed from a checkpoint
    iterations = 1 if terms == "experts" else ITERATIONS
    status = d3hf(["distill", recipe(ipc), "--init", "random", "--iterations", str(iterations), "--eval_epochs", "0",
                   "--num_threads", "1", "--output_dir", out, "--buffer_dir", os.path.join(CACHE, f"experts_ipc{ipc}"),
                   *TERMS.get(terms, [])])
    if status:
        raise SystemExit(f"d3hf distill exited with {status}")
    with open(os.path.join(out, "summary.json")) as f:
        timings = json.load(f)["subtasks"][0]["timings"]
    shutil.rmtree(out)
    return {"recipe": f"mnist5k/ipc{ipc}", "terms": terms, "iterations": iterations, **timings,
            "load_average_at_start": load, "machine": grid.machine()}  # here: the thread count is the run's


def cached(ipc: str, terms: str) -> dict:
    """The cell, measured in a fresh one-thread process the first time and read back after."""
    path = os.path.join(CACHE, f"ipc{ipc}_{terms}.json")
    if not os.path.exists(path):
        from d3hf.utils.io import atomic_write_json

        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, __file__, "--cell", ipc, terms], env=env, stdout=subprocess.PIPE,
                             text=True, check=True).stdout
        record = json.loads(out.strip().splitlines()[-1])
        os.makedirs(CACHE, exist_ok=True)
        atomic_write_json(path, record)
    with open(path) as f:
        return json.load(f)


def term_seconds(cell: dict) -> float:
    """Seconds per iteration in the cell's forward passes and backward pass together."""
    return sum(cell[f"{p}_s_per_iteration"] for p in PARTS)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cell", nargs=2, metavar=("IPC", "experts|" + "|".join(TERMS)))
    a = p.parse_args()
    if a.cell:
        print(json.dumps(run(*a.cell)))
        return
    rows, loads = [], []
    for ipc in IPCS:
        experts = cached(ipc, "experts")  # first: the other cells read the buffer it builds
        both, mtt, mmd = (cached(ipc, t) for t in TERMS)
        loads += [c["load_average_at_start"] for c in (both, mtt, mmd)]
        rows.append(
            f"| `recipes/mnist5k/ipc{ipc}.yaml` | {experts['experts_s']:.0f} | "
            f"{mtt['mtt_forward_s_per_iteration']:.2f} + {mtt['backward_s_per_iteration']:.2f} | "
            f"{mmd['mmd_forward_s_per_iteration']:.2f} + {mmd['backward_s_per_iteration']:.2f} | "
            f"{term_seconds(mtt) + term_seconds(mmd):.2f} | "
            f"{both['mtt_forward_s_per_iteration']:.2f} + {both['mmd_forward_s_per_iteration']:.2f} + "
            f"{both['backward_s_per_iteration']:.2f} = {term_seconds(both):.2f} | {both['s_per_iteration']:.2f} |")
    m = both["machine"]
    text = "\n".join([
        "# Distillation time: experts, MTT and MMD", "",
        f"Command: `python benchmarks/iteration_split.py`. Machine: {grid.machine_text(m)}, {m['cores']} cores, "
        f"a fresh process per cell; 1-minute load average when a cell started: {min(loads):.1f} to {max(loads):.1f} "
        "(above 1: another job shared the cores).", "",
        f"Each recipe's experts are built once (their seconds are the first column: every expert of the recipe, "
        f"one-off, cached for every later run). Then {ITERATIONS} iterations from a random init, three times: MTT "
        "only (`--mmd_weight 0`), MMD only (`--mtt_weight 0`), and both terms as the recipe runs them (one backward "
        "pass over the sum, which timing cannot split). Seconds are means per iteration as the run reports them, "
        "first iteration included; 'forward + backward' is the term's own forward pass and the backward pass "
        "through it alone.", "",
        "| recipe | experts s | MTT only: forward + backward s/it | MMD only: forward + backward s/it | "
        "sum of the two | both: MTT fwd + MMD fwd + backward s/it | both: whole iteration s/it |",
        "|---|---:|---:|---:|---:|---:|---:|", *rows, "",
        "The whole iteration (distillation seconds over iterations) also holds the optimiser steps, the "
        "finiteness checks, the progress bar and the checkpoint saved at the end: the difference between the last "
        "two columns.", ""])
    with open(os.path.join(HERE, "iteration_split.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
