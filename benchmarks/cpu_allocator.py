"""Training and distillation speed with glibc's default malloc against
``d3hf.utils.allocator.keep_freed_memory``.

Each training cell trains the grid's evaluation network (MNIST-5k, 200 random real images: one
batch per epoch, as a D3 artifact's 20 samples per class) for a few epochs in a fresh process with
one torch thread, and records wall, user and system seconds and minor page faults per epoch. Each
distillation cell runs a few iterations of a MNIST-5k recipe through `d3hf distill` in a fresh
process and records the seconds per iteration it reports (MTT forward, MMD forward, backward).
Cells are cached in benchmarks/cache/cpu_allocator/; the summary is benchmarks/cpu_allocator.md.

    python benchmarks/cpu_allocator.py              # every cell (resumes), then the summary
    python benchmarks/cpu_allocator.py --cell convnet P-dsa 1   # one measurement, prints JSON
    python benchmarks/cpu_allocator.py --cell distill 10 1      # recipes/mnist5k/ipc10.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file: the repo root

from benchmarks import grid  # noqa: E402  (the machine a measurement ran on, as the grid records it)

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, "cache", "cpu_allocator")
EPOCHS, PER_CLASS = 20, 20
CELLS = [(arch, protocol) for arch in ("convnet", "resnet") for protocol in ("P-noaug", "P-dsa")]
# Distillation: the recipe's settings, random init (the warm start is not what is timed) and one
# expert (the unroll's cost does not depend on how many there are to pick from).
DISTILL_IPCS, DISTILL_ITERATIONS = ("1", "10"), 12


def measure(arch: str, protocol: str, keep: bool) -> dict:
    os.environ["D3HF_KEEP_FREED_MEMORY"] = "1" if keep else "0"
    import torch

    from d3hf import load_image_classification
    from d3hf.evaluation.image_sets import random_real_images
    from d3hf.evaluation.protocols import named_protocol
    from d3hf.evaluation.training import fixed_source, train_network
    from d3hf.utils.allocator import keep_freed_memory

    applied = keep_freed_memory()
    torch.set_num_threads(1)
    data = load_image_classification("mnist5k")
    images = random_real_images(data, PER_CLASS, seed=0)
    # One warm-up epoch (first-touch of the heap, kernel caches), then the timed ones.
    train_network(fixed_source(*images), data, named_protocol(protocol, arch=arch, epochs=1), seed=0)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    train_network(fixed_source(*images), data, named_protocol(protocol, arch=arch, epochs=EPOCHS), seed=0)
    r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
    return {"arch": arch, "protocol": protocol, "keep_freed_memory": applied, "epochs": EPOCHS,
            "wall_s_per_epoch": wall / EPOCHS, "user_s_per_epoch": (r1.ru_utime - r0.ru_utime) / EPOCHS,
            "sys_s_per_epoch": (r1.ru_stime - r0.ru_stime) / EPOCHS,
            "minor_faults_per_epoch": (r1.ru_minflt - r0.ru_minflt) / EPOCHS,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_distill(ipc: str, keep: bool, iterations: int) -> dict:
    """``d3hf distill`` of recipes/mnist5k/ipc{ipc}.yaml as the module docstring says; its timings."""
    os.environ["D3HF_KEEP_FREED_MEMORY"] = "1" if keep else "0"
    from d3hf.commands.cli import main as d3hf

    out = os.path.join(CACHE, f"distill_ipc{ipc}_{'keep' if keep else 'default'}")
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, never resumed from a checkpoint
    recipe = os.path.join(os.path.dirname(HERE), "recipes", "mnist5k", f"ipc{ipc}.yaml")
    status = d3hf(["distill", recipe, "--init", "random", "--num_experts", "1", "--iterations", str(iterations),
                   "--eval_epochs", "0", "--num_threads", "1", "--output_dir", out, "--buffer_dir", experts_dir(ipc)])
    if status:
        raise SystemExit(f"d3hf distill exited with {status}")
    with open(os.path.join(out, "summary.json")) as f:
        timings = json.load(f)["subtasks"][0]["timings"]
    shutil.rmtree(out)
    return timings


def experts_dir(ipc: str) -> str:
    return os.path.join(CACHE, f"experts_ipc{ipc}")


def measure_distill(ipc: str, keep: bool) -> dict:
    timings = run_distill(ipc, keep, DISTILL_ITERATIONS)
    return {"recipe": f"mnist5k/ipc{ipc}", "keep_freed_memory": keep, "iterations": DISTILL_ITERATIONS,
            **{k: timings[k] for k in ("s_per_iteration", "mtt_forward_s_per_iteration",
                                       "mmd_forward_s_per_iteration", "backward_s_per_iteration")},
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def in_fresh_process(kind: str, what: str, keep: bool) -> str:
    """``--cell KIND WHAT KEEP`` in a new process with one torch thread; its standard output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, __file__, "--cell", kind, what, str(int(keep))], env=env,
                          stdout=subprocess.PIPE, text=True, check=True).stdout


def cached(arch: str, protocol: str, keep: bool) -> dict:
    path = os.path.join(CACHE, f"{arch}_{protocol}_{'keep' if keep else 'default'}.json")
    if not os.path.exists(path):
        from d3hf.utils.io import atomic_write_json

        out = in_fresh_process(arch, protocol, keep)
        record = {**json.loads(out.strip().splitlines()[-1]), "cpu": grid.machine()["cpu"], "cores": os.cpu_count()}
        os.makedirs(CACHE, exist_ok=True)
        atomic_write_json(path, record)
    with open(path) as f:
        return json.load(f)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cell", nargs=3, metavar=("ARCH|distill|experts", "PROTOCOL|IPC", "KEEP"))
    a = p.parse_args()
    if a.cell:
        kind, what, keep = a.cell[0], a.cell[1], bool(int(a.cell[2]))
        if kind == "experts":
            run_distill(what, keep, iterations=1)  # experts are trained only for a run that matches
        else:
            print(json.dumps(measure_distill(what, keep) if kind == "distill" else measure(kind, what, keep)))
        return
    rows = []
    for arch, protocol in CELLS:
        default, keep = cached(arch, protocol, False), cached(arch, protocol, True)
        rows.append(f"| {arch} | {protocol} | {default['wall_s_per_epoch']:.3f} | {keep['wall_s_per_epoch']:.3f} | "
                    f"{default['wall_s_per_epoch'] / keep['wall_s_per_epoch']:.2f}x | "
                    f"{default['sys_s_per_epoch']:.3f} / {keep['sys_s_per_epoch']:.3f} | "
                    f"{default['minor_faults_per_epoch']:,.0f} / {keep['minor_faults_per_epoch']:,.0f} | "
                    f"{default['peak_rss_mb']:.0f} / {keep['peak_rss_mb']:.0f} |")
    parts = ("mtt_forward", "mmd_forward", "backward")
    distill_rows = []
    for ipc in DISTILL_IPCS:
        if not os.path.isdir(experts_dir(ipc)):  # built apart, so that neither cell's peak RSS includes them
            in_fresh_process("experts", ipc, True)
        d, k = cached("distill", ipc, False), cached("distill", ipc, True)
        split = " | ".join(f"{d[p + '_s_per_iteration']:.2f} / {k[p + '_s_per_iteration']:.2f}" for p in parts)
        distill_rows.append(f"| `recipes/{d['recipe']}.yaml` | {d['s_per_iteration']:.2f} | {k['s_per_iteration']:.2f} | "
                            f"{d['s_per_iteration'] / k['s_per_iteration']:.2f}x | {split} | "
                            f"{d['peak_rss_mb']:.0f} / {k['peak_rss_mb']:.0f} |")
    text = "\n".join([
        "# Training and distillation with glibc's default malloc and with `keep_freed_memory`", "",
        f"Command: `python benchmarks/cpu_allocator.py`. Machine: {default['cpu']}, {default['cores']} cores, one "
        "torch thread per process, nothing else running, a fresh process per cell.", "",
        "`d3hf.utils.allocator.keep_freed_memory()` (called by `d3hf`'s command line and by the benchmark grid) sets "
        "glibc's mmap threshold to 1 GB and turns off heap trimming, so the tens-of-MB activations of every step "
        "reuse freed heap memory instead of new zero-filled pages from the kernel. Results do not change: only "
        "where the memory comes from.", "",
        "## Downstream training", "",
        f"MNIST-5k, {10 * PER_CLASS} random real images (one batch per epoch), width 128, {EPOCHS} timed epochs "
        "after one warm-up.", "",
        "| arch | protocol | default s/epoch | keep s/epoch | speed-up | sys s/epoch (default / keep) | "
        "minor faults/epoch | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|", *rows, "",
        "## Distillation", "",
        f"`d3hf distill RECIPE --init random --num_experts 1 --iterations {DISTILL_ITERATIONS} --eval_epochs 0 "
        "--num_threads 1`: the recipe's iteration (unroll, MMD batch, decoder) on one expert, without the warm "
        "start; mean seconds per iteration as the run reports them, first iteration included.", "",
        "| recipe | default s/it | keep s/it | speed-up | MTT forward s/it (default / keep) | "
        "MMD forward s/it | backward s/it | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|", *distill_rows, ""])
    with open(os.path.join(HERE, "cpu_allocator.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
