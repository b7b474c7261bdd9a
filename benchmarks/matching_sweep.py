"""Does D3's matching phase (MTT + MMD iterations) improve on its VAE warm start, and at which
step sizes? Measured on a validation split carved from train (10 %), never on the test split.

Each setting (a few of the recipe's keys changed) distils from the same warm start with the same
experts (one buffer per dataset, budget and seed) and is scored at every ``--eval_at`` iteration
count: downstream P-noaug training on fresh samples, final-epoch accuracy on the validation
split. Iteration 0 is the warm start alone, shared by every setting. A cell is one (setting,
iterations) pair, cached as JSON; runs resume from the distillation's checkpoint, so a killed or
extended sweep redoes nothing:

    python benchmarks/matching_sweep.py --dataset mnist5k --ipc 1 --eval_at 0,100,250,500 \\
        --settings "lr_decoder=0.001,lr_priors=1;lr_decoder=0.0001,lr_priors=1;lr_decoder=0.001,lr_priors=0.1"

``--only 0,2`` runs some of the settings (one stream each); the report,
``benchmarks/matching_sweep.md``, is made from every cached cell.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

from d3hf.utils.environment import cpu_model

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
VALIDATION_SIZE = 0.1
# Seconds-long settings for the test suite: every code path, no meaningful number.
SMOKE = {"num_experts": 1, "expert_epochs_total": 3, "max_start_epoch": 1, "min_start_epoch": 0,
         "expert_epochs": 1, "syn_steps": 2, "student_width": 8, "init_steps": 20, "checkpoint_every": 1}


def parse_setting(text: str) -> dict:
    """``"lr_decoder=0.001,lr_priors=1"`` -> those keys, typed and checked as ``d3hf distill``
    reads them from its command line; a key it does not have is refused."""
    from d3hf.commands.distill import parse_distill_args
    from d3hf.distill.config import SECTION_OF_KEY

    pairs = [item.partition("=") for item in filter(None, (part.strip() for part in text.split(",")))]
    for key, sep, value in pairs:
        if not sep or key not in SECTION_OF_KEY:
            raise SystemExit(f"--settings: {key + sep + value!r} is not KEY=VALUE with a distillation key "
                             f"(e.g. lr_decoder=0.0001)")
        if key in ("iterations", "validation_size", "output_dir", "buffer_dir", "eval_epochs"):
            raise SystemExit(f"--settings: {key} is set by the sweep (iteration counts are --eval_at)")
    try:
        parsed = parse_distill_args([arg for key, _, value in pairs for arg in (f"--{key}", value)])
    except ValueError as err:
        raise SystemExit(f"--settings {text!r}: {err}") from None
    values = parsed.to_dict()
    return {key: values[key] for key, _, _ in pairs}


def setting_name(setting: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(setting.items())) or "recipe"


def score(artifact_dir: str, data, epochs: int, seeds: int) -> dict:
    from d3hf.evaluation.protocols import named_protocol
    from d3hf.evaluation.training import evaluate, model_source
    from d3hf.modeling.modeling_d3 import D3Model

    model = D3Model.from_pretrained(artifact_dir)
    protocol = named_protocol("P-noaug", epochs=epochs)
    return evaluate(lambda s: model_source(model, protocol.num_per_class, s), data, protocol, seeds,
                    show_progress=True)


def run_cell(recipe, setting: dict, iterations: int, root: str, eval_epochs: int, eval_seeds: int) -> dict:
    """Distil ``setting`` up to ``iterations`` (resuming its run) and score it on validation."""
    from d3hf.distill.runner import load_data, run_distillation

    args = recipe.replace(**setting, iterations=iterations, validation_size=VALIDATION_SIZE,
                               eval_epochs=0, output_dir=os.path.join(root, "runs", setting_name(setting)),
                               buffer_dir=os.path.join(root, "experts"))
    t = time.perf_counter()
    _, summary = run_distillation(args, show_progress=True)
    distill_s = time.perf_counter() - t
    result = score(summary["artifact_dir"], load_data(args.data, args.run.seed), eval_epochs, eval_seeds)
    assert result["split"] == "validation", "the sweep never scores on the test split"
    return {"setting": setting_name(setting), "iterations": iterations, "mean": result["mean"], "std": result["std"],
            "accuracies": result["accuracies"], "distill_s_this_call": distill_s,
            "timings": summary["subtasks"][0]["timings"], "eval_epochs": eval_epochs, "eval_seeds": eval_seeds}


def report(root: str, title: str) -> str:
    cells = []
    for name in sorted(os.listdir(os.path.join(root, "cells"))):
        with open(os.path.join(root, "cells", name)) as f:
            cells.append(json.load(f))
    stops = sorted({c["iterations"] for c in cells})
    warm = next((c for c in cells if c["iterations"] == 0), None)
    rows = [f"## {title}", "",
            f"Validation accuracy (P-noaug, final epoch, {VALIDATION_SIZE:.0%} of train held out), mean +- std "
            "over eval seeds, after N matching iterations from the same warm start (N = 0: the warm start alone).",
            "", "| setting | " + " | ".join(f"N = {n}" for n in stops) + " |",
            "|---|" + "---:|" * len(stops)]
    for name in sorted({c["setting"] for c in cells if c["iterations"] > 0}):
        by_stop = {c["iterations"]: c for c in cells if c["setting"] == name and c["iterations"] > 0}
        if warm is not None:
            by_stop[0] = warm
        rows.append(f"| {name} | " + " | ".join(
            f"{100 * by_stop[n]['mean']:.2f} +- {100 * by_stop[n]['std']:.2f}" if n in by_stop else "-"
            for n in stops) + " |")
    return "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", default="", help="';'-separated settings, each KEY=VALUE,...; '' is the recipe")
    p.add_argument("--only", default=None, help="comma-separated indices of --settings to run")
    p.add_argument("--eval_at", default="0,100,250,500")
    p.add_argument("--eval_epochs", type=int, default=300)
    p.add_argument("--eval_seeds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=HERE, help="folder for the cache and matching_sweep.md")
    p.add_argument("--smoke", action="store_true", help="seconds-long settings (for the tests)")
    a = p.parse_args(argv)

    import torch

    from d3hf.commands.distill import parse_distill_args
    from d3hf.utils.allocator import keep_freed_memory
    from d3hf.utils.io import atomic_write_json

    keep_freed_memory()
    torch.set_num_threads(a.threads)
    recipe_path = os.path.join(REPO, "recipes", a.dataset, f"ipc{a.ipc}.yaml")
    if not os.path.exists(recipe_path):
        raise SystemExit(f"no recipe {os.path.relpath(recipe_path, REPO)}: pick --dataset/--ipc that has one")
    recipe = parse_distill_args([recipe_path]).replace(seed=a.seed, num_threads=a.threads,
                                 **(SMOKE if a.smoke else {}))
    settings = [parse_setting(s) for s in a.settings.split(";")]
    picks = range(len(settings)) if a.only is None else [int(i) for i in a.only.split(",")]
    stops = sorted(int(n) for n in a.eval_at.split(","))
    name = f"{a.dataset}_ipc{a.ipc}_seed{a.seed}" + ("_smoke" if a.smoke else "")
    root = os.path.join(a.out, "cache", "matching_sweep", name)
    os.makedirs(os.path.join(root, "cells"), exist_ok=True)
    for i in picks:
        for n in stops:
            # The warm start does not depend on the matching settings: scored once.
            cell = os.path.join(root, "cells", "warm_start.json" if n == 0 else f"{setting_name(settings[i])}_{n}.json")
            if os.path.exists(cell):
                continue
            result = run_cell(recipe, settings[i], n, root, a.eval_epochs, a.eval_seeds)
            result["machine"] = f"{cpu_model()}, {os.cpu_count()} cores, {a.threads} torch thread(s)"
            atomic_write_json(cell, result)
            print(f"{result['setting']} N={n}: {100 * result['mean']:.2f} %", file=sys.stderr, flush=True)
    command = shlex.join(["python", "benchmarks/matching_sweep.py", *(argv if argv is not None else sys.argv[1:])])
    text = report(root, f"{a.dataset}, ipc_budget {a.ipc}, seed {a.seed}") + f"\n\nCommand: `{command}`\n"
    with open(os.path.join(a.out, f"matching_sweep{'-smoke' if a.smoke else ''}.md"), "w") as f:
        f.write("# The matching phase against its warm start\n\n" + text)
    print(text)


if __name__ == "__main__":
    main()
