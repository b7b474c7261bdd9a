"""Which decoder family should ``auto`` budgets use? The ``nearest`` family (upsample + 3x3 conv)
against the ``transpose`` family (4x4 transposed convs, the reference code's layout), each at
the width the budget planner gives it, on MNIST-5k's recipes with a validation split carved
from train (25 %: 1,000 images, 0.1 point per image); the test split is never read.

A cell is one (recipe, family, seed): a `d3hf distill` run in a fresh subprocess with
``validation_size 0.25``, scored by the run's own final evaluation (P-noaug, ``--eval_seeds``
networks). Its run folder lives in benchmarks/cache/decoder_family/ and its record is cached
there as JSON, so a stopped sweep resumes (the run itself resumes from its checkpoint):

    python benchmarks/decoder_family.py                       # every cell, then decoder_family.md
    python benchmarks/decoder_family.py --recipes ipc10 --families transpose

Run it on an otherwise idle machine: seconds per iteration are part of the report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from d3hf.utils.environment import cpu_model

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)  # run as a file: the repo root

from benchmarks.cells import cached
from benchmarks.cells import records as cached_records  # noqa: E402

CACHE_ROOT = os.path.join(HERE, "cache", "decoder_family")
FAMILIES = ("nearest", "transpose")
RECIPES = ("ipc1", "ipc10")
VALIDATION_SIZE = 0.25
D3HF = os.path.join(os.path.dirname(sys.executable), "d3hf")


def cell_name(recipe: str, family: str, seed: int) -> str:
    return f"{recipe}_{family}_seed{seed}"


# The ipc10 recipe's matching phase when these cells were measured; the recipe now runs none.
MATCHING = {"ipc10": ["--iterations", "400"]}


def command(recipe: str, family: str, seed: int, eval_seeds: int) -> list[str]:
    return [D3HF, "distill", os.path.join(REPO, "recipes", "mnist5k", f"{recipe}.yaml"), *MATCHING.get(recipe, []),
            "--decoder_family", family, "--seed", str(seed), "--validation_size", str(VALIDATION_SIZE),
            "--eval_seeds", str(eval_seeds), "--output_dir", os.path.join(CACHE_ROOT, "runs", cell_name(recipe, family, seed))]


def decoder_mflops(config: dict) -> float:
    """Forward MFLOP of one image through the artifact's first decoder."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from d3hf.modeling.decoders import DecoderSpec, build_decoder

    spec = DecoderSpec.from_dict(config["decoders"][0])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        build_decoder(spec)(torch.zeros(1, spec.z_dim))
    return counter.get_total_flops() / 1e6


def run_cell(recipe: str, family: str, seed: int, eval_seeds: int) -> dict:
    cmd = command(recipe, family, seed, eval_seeds)
    out = cmd[-1]
    os.makedirs(CACHE_ROOT, exist_ok=True)
    with open(os.path.join(CACHE_ROOT, cell_name(recipe, family, seed) + ".log"), "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(out, "artifact", "config.json")) as f:
        config = json.load(f)
    row = next(r for r in summary["evaluation"]["results"] if r["method"] == "d3hf artifact")
    timings = summary["subtasks"][0]["timings"]
    spec = config["decoders"][0]
    return {
        "recipe": recipe, "family": family, "seed": seed, "split": row["split"], "accuracies": row["accuracies"],
        "protocol": row["notes"], "channels": spec["channels"], "upsample": spec["upsample"],
        "lpc": config["priors_per_class"], "z_dim": config["z_dim"], "decoder_mflops": decoder_mflops(config),
        "ledger": summary["ledger"], "s_per_iteration": timings["s_per_iteration"],
        "warm_start_s": timings["warm_start_s"], "total_s": summary["timings"]["total_s"],
        "cpu": cpu_model(), "command": " ".join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd),
    }


def cell(recipe: str, family: str, seed: int, eval_seeds: int) -> dict:
    return cached(os.path.join(CACHE_ROOT, cell_name(recipe, family, seed) + ".json"),
                  lambda: run_cell(recipe, family, seed, eval_seeds))


def report(records: list[dict]) -> str:
    import statistics

    lines = ["# Decoder family: nearest against transpose", "",
             f"MNIST-5k recipes, validation split = {VALIDATION_SIZE:.0%} of train (1,000 images), P-noaug "
             "ConvNet-3, final-epoch accuracy; mean +- std over the evaluation networks. Measured on "
             f"{records[0]['cpu'] if records else cpu_model()}, one run at a time.", "",
             "| recipe | family | seed | decoder channels | priors per class | IPC-eq | decoder MFLOP / image "
             "| s / iteration | warm start s | total s | validation accuracy |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(records, key=lambda r: (r["recipe"], r["seed"], r["family"])):
        accs = [100 * a for a in r["accuracies"]]
        std = statistics.pstdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"| {r['recipe']} | {r['family']} | {r['seed']} | {r['channels']} | {r['lpc']} | "
                     f"{r['ledger']['ipc_equivalent']:.3f} | {r['decoder_mflops']:.2f} | {r['s_per_iteration']:.2f} | "
                     f"{r['warm_start_s']:.0f} | {r['total_s']:.0f} | {statistics.mean(accs):.1f} +- {std:.1f} |")
    lines += ["", "s / iteration and the other seconds are wall time as measured: comparable only between cells that "
              "had the machine to themselves.", "", "Cells (one `d3hf distill` each):", ""]
    lines += [f"    d3hf {r['command'].split(' ', 1)[1]}" for r in records]
    lines += ["", "Command: `python benchmarks/decoder_family.py`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--seeds", default="0")
    p.add_argument("--eval_seeds", type=int, default=2)
    a = p.parse_args(argv)
    for recipe in a.recipes.split(","):
        for seed in map(int, a.seeds.split(",")):
            for family in a.families.split(","):
                cell(recipe, family, seed, a.eval_seeds)
    text = report(cached_records(CACHE_ROOT))
    with open(os.path.join(HERE, "decoder_family.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
