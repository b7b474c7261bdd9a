"""Choosing a recipe's settings on a validation split: the recipe and a few variants of it (some
keys changed), each distilled by ``d3hf distill`` in a fresh process with ``validation_size``
and scored by the run's own final evaluation on that split (the test split is never read).

A cell is one (variant, seed). Its run folder and log live in
benchmarks/cache/recipe_sweep/<dataset>_<recipe>/ (git-ignored); variants whose experts are the
same share one expert buffer. Its JSON record, and those of its rescored networks, are kept in
benchmarks/results/recipe_sweep/<dataset>_<recipe>/ (tracked: a clean clone can redraw the
report). A stopped sweep resumes (the record is kept; the run resumes from its checkpoint). The
report, benchmarks/recipe_sweep.md, is made from every kept record; a section of the report
already written whose records are not here is kept as it was:

    python benchmarks/recipe_sweep.py recipes/fashion_mnist/ipc1.yaml \\
        --variants "expert_epoch_rows=0;iterations=0" --seeds 0

The empty variant (always run first) is the recipe itself; ``--variants_only`` leaves it out when
its cell is known from an earlier sweep and the variants are what the cores should go to. Run it on
an otherwise idle machine when the seconds matter; the accuracies do not depend on the load.

``--protocol P-dsa`` also scores each cell's artifact under that protocol on the same validation
split, ``--eval_seeds`` networks each, every cell's first network before any second (each network
cached beside the records, its training resumable); a cell already distilled is not distilled
again:

    python benchmarks/recipe_sweep.py recipes/fashion_mnist/ipc1.yaml --variants "iterations=0" --protocol P-dsa

A protocol with changed fields is named as the results name it, e.g. ``--protocol
"P-noaug[num_per_class=50]"`` (50 fresh samples per class per epoch instead of 20): an
evaluation choice tried on the same artifacts, never distilled again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)  # run as a file: the repo root

from benchmarks.cells import cached, parse_settings, records  # noqa: E402

CACHE_ROOT = os.path.join(HERE, "cache", "recipe_sweep")
D3HF = os.path.join(os.path.dirname(sys.executable), "d3hf")
SET_BY_THE_SWEEP = ("seed", "validation_size", "eval_seeds", "output_dir", "buffer_dir", "overwrite_output_dir")


def variant_name(variant: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(variant.items())) or "recipe"


def sweep_variants(text: str, variants_only: bool = False) -> list[dict[str, str]]:
    """The cells' variants, in the order they run: the recipe itself (the empty variant) first,
    unless ``variants_only``, then each ';'-separated variant of ``text``."""
    variants = [parse_settings(v, "--variants", SET_BY_THE_SWEEP) for v in text.split(";") if v.strip()]
    if variants_only and not variants:
        raise SystemExit("--variants_only needs at least one variant in --variants")
    return variants if variants_only else [{}, *variants]


def cell_name(variant: dict[str, str], seed: int, validation_size: float, eval_seeds: int) -> str:
    return f"{variant_name(variant)}_seed{seed}_val{validation_size:g}_eval{eval_seeds}"


# Settings d3hf gained after the first sweeps were recorded, with the value that means "as before":
# left out at that value, so the earlier sweeps keep their names (and records) and their variants
# their expert buffers.
ADDED_SINCE_FIRST_SWEEP = {"eval_every": 0, "expert_augment": "none", "mmd_augment": "none", "mtt_augment": "none",
                           "mmd_feature_net": "expert"}
ADDED_SINCE_FIRST_EXPERTS = {"image_size": None, "channels": "auto", "expert_augment": "none"}


def sweep_name(recipe: str) -> str:
    """The recipe's dataset and name, and a digest of its settings: a recipe whose settings change
    starts a sweep of its own instead of reading the old one's records."""
    settings = {k: v for k, v in arguments(recipe, {}).to_dict().items()
                if k != "output_dir" and ADDED_SINCE_FIRST_SWEEP.get(k, object()) != v}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    dataset = os.path.basename(str(settings["dataset"]))
    return f"{dataset}_{os.path.splitext(os.path.basename(recipe))[0]}_{digest}"


def arguments(recipe: str, variant: dict[str, str]):
    """The variant's settings as ``d3hf distill RECIPE --key value ...`` parses them."""
    from d3hf.commands.distill import parse_distill_args

    return parse_distill_args([recipe, *[a for k, v in variant.items() for a in (f"--{k}", v)]])


def experts_key(args) -> str:
    """Equal for two variants whose experts are the same (the expert settings, the snapshots kept,
    the seed and the data)."""
    from dataclasses import asdict

    def new_at_default(k, v):
        return ADDED_SINCE_FIRST_EXPERTS.get(k, object()) == v

    data = {k: v for k, v in asdict(args.data).items() if not new_at_default(k, v)}
    identity = {**{k: v for k, v in asdict(args.experts).items() if k != "buffer_dir" and not new_at_default(k, v)},
                "keep": args.matching.max_start_epoch + args.matching.expert_epochs, "seed": args.run.seed,
                "data": data}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def command(recipe: str, variant: dict[str, str], seed: int, root: str, validation_size: float,
            eval_seeds: int) -> list[str]:
    args = arguments(recipe, {**variant, "seed": str(seed), "validation_size": str(validation_size)})
    cell = cell_name(variant, seed, validation_size, eval_seeds)
    return [D3HF, "distill", recipe, *[a for k, v in sorted(variant.items()) for a in (f"--{k}", v)],
            "--seed", str(seed), "--validation_size", str(validation_size), "--eval_seeds", str(eval_seeds),
            "--output_dir", os.path.join(root, "runs", cell),
            "--buffer_dir", os.path.join(root, "experts", experts_key(args))]


def threads_text(measured_on: dict) -> str:
    """The CPU and the thread count the run itself used (not the machine's core count: a sweep
    may run with one thread beside another job)."""
    n = measured_on["torch_threads"]
    return f"{measured_on['device_name']}, {n} thread{'s' if n != 1 else ''}"


def run_cell(cmd: list[str], log_path: str) -> dict:
    with open(log_path, "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    out = cmd[cmd.index("--output_dir") + 1]
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(out, "artifact", "config.json")) as f:
        config = json.load(f)
    row = next(r for r in summary["evaluation"]["results"] if r["method"] == "d3hf artifact")
    if row["split"] != "validation":
        raise RuntimeError(f"{out} was scored on {row['split']!r}: the sweep only reads the validation split")
    timings = summary["subtasks"][0]["timings"]
    from d3hf.distill.tracking import read_metrics

    curve = [[r["iteration"], r["accuracy"], r["mtt_model"], r["mtt_real"]] for r in read_metrics(out)
             if r.get("phase") == "curve" and r.get("subtask", 0) == 0]
    return {"split": row["split"], "curve": sorted(curve), "matching": matching_summary(read_metrics(out)), "accuracies": row["accuracies"], "protocol": row["notes"],
            "lpc": config["priors_per_class"], "z_dim": config["z_dim"],
            "channels": [d["channels"] for d in config["decoders"]], "ipc_equivalent": summary["ledger"]["ipc_equivalent"],
            "experts_s": timings.get("experts_s"), "warm_start_s": timings.get("warm_start_s"),
            "s_per_iteration": timings.get("s_per_iteration"), "distill_s": timings.get("distill_s"),
            "evaluate_s": summary["timings"].get("evaluate_s"), "total_s": summary["timings"]["total_s"],
            "cpu": threads_text(row["measured_on"]),
            "command": shlex.join(["d3hf", *[os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd[1:]]])}


def rescore(run_dir: str, protocol_name: str, network: int, checkpoint: str | None = None,
            **overrides) -> dict:
    """The accuracy of one network (seed ``network``, as the run's own evaluation numbers them)
    trained on the artifact in ``run_dir`` under ``protocol_name`` (``overrides``: its fields,
    e.g. ``epochs``), on the validation split the run carved; its training resumes from
    ``checkpoint`` (a file) when given."""
    import torch

    from d3hf import D3Model
    from d3hf.distill.runner import load_recorded_data
    from d3hf.evaluation.protocols import named_protocol
    from d3hf.evaluation.training import model_source, test_accuracy, train_network
    from d3hf.utils.environment import measured_on

    model = D3Model.from_pretrained(os.path.join(run_dir, "artifact"))
    if not model.config.distillation.get("validation_size"):
        raise SystemExit(f"{run_dir} has no validation split: the sweep never scores on test")
    data = load_recorded_data(model.config.distillation)
    protocol = named_protocol(protocol_name, **overrides)
    run = train_network(model_source(model, protocol.num_per_class, network), data, protocol, network,
                        checkpoint=checkpoint)
    mean, std = data.normalization_tensors("cpu")
    return {"split": data.source_info.get("test_split", "test"), "protocol": protocol.name, "network": network,
            "accuracies": [test_accuracy(run.net, data, mean, std, "cpu")], "notes": protocol.describe(),
            "seconds": run.seconds, "measured_on": measured_on(torch.device("cpu"))}


def run_folder(root: str, record: dict) -> str:
    """The run folder of a record's cell (under ``root``, wherever the sweep ran)."""
    match = re.search(r"--output_dir (\S+)", record["command"])
    return os.path.join(root, "runs", os.path.basename(match.group(1)))


def rescore_record(root: str, kept: str, record: dict, protocol_name: str, network: int, **overrides) -> dict:
    """``rescore`` of one network on a record's artifact (its run folder under ``root``), kept in
    ``kept``/rescored (its training resumable from ``root``/rescoring)."""
    from d3hf.evaluation.protocols import named_protocol

    folder = run_folder(root, record)
    cell = f"{os.path.basename(folder)}__{named_protocol(protocol_name, **overrides).name}"
    checkpoint = os.path.join(root, "rescoring", cell, f"eval-seed{network}.pt")
    result = cached(os.path.join(kept, "rescored", f"{cell}__net{network}.json"), lambda: {
        "variant": record["variant"], "seed": record["seed"],
        **rescore(folder, protocol_name, network, checkpoint, **overrides)})
    if os.path.exists(checkpoint):  # the record is kept: its training's state is no longer needed
        os.remove(checkpoint)
    return result


def matching_summary(records: list[dict]) -> dict | None:
    """What a run's matching phase did, from its logged iterations: the mean MTT loss and MMD over
    the last fifth of them, the final step size, prior std and drift from the warm start, and the
    median ratio of the two terms' gradient norms; None for a run without matching."""
    rows = sorted((r for r in records if r.get("phase") == "distill" and r.get("subtask", 0) == 0),
                  key=lambda r: r["iteration"])
    if not rows:
        return None
    tail = [r for r in rows if r["iteration"] > 0.8 * rows[-1]["iteration"]]

    def mean(key: str) -> float | None:
        values = [r[key] for r in tail if r.get(key) is not None]
        return statistics.mean(values) if values else None

    ratios = [r["grad_norm_mtt"] / r["grad_norm_mmd"] for r in rows if r.get("grad_norm_mmd")]
    final = rows[-1]
    return {"iterations": final["iteration"], "mtt": mean("mtt"), "mmd": mean("mmd"),
            "step_size": final.get("step_size"), "prior_std": final.get("prior_std_mean"),
            "drift_prior_means": final.get("drift_prior_means"), "drift_decoder": final.get("drift_decoder"),
            "grad_ratio": statistics.median(ratios) if ratios else None}


def _matching(record: dict, root: str | None) -> dict | None:
    """A record's matching summary; for a record cached before it was kept, read from its run
    folder under the sweep's ``root`` when that is still there."""
    if "matching" in record:
        return record["matching"]
    if root is None or "--output_dir" not in record.get("command", ""):
        return None
    from d3hf.distill.tracking import read_metrics

    folder = run_folder(root, record)
    return matching_summary(read_metrics(folder)) if os.path.isdir(folder) else None


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _recipe_first(item: tuple[str, list[dict]]) -> tuple[bool, str]:
    """Sort key of (variant, rows): the recipe, then the variants by name."""
    return item[0] != "recipe", item[0]


def _pooled(rows: list[dict]) -> str:
    accs = [100 * a for r in rows for a in r["accuracies"]]
    return f"{statistics.mean(accs):.2f} +- {statistics.pstdev(accs) if len(accs) > 1 else 0.0:.2f}"


def report(sweeps: dict[str, list[dict]], rescored: dict[str, list[dict]] | None = None,
           cache: str | None = None) -> str:
    """recipe_sweep.md from each sweep's records (and rescored records); ``cache`` holds the
    sweeps' folders (for the run folders of records older than their matching summary)."""
    lines = ["# Recipe settings chosen on validation", "",
             "Each row: `d3hf distill` on the recipe with the variant's keys changed, a validation split carved "
             "from train (`validation_size`), scored by the run's final evaluation on it (P-noaug ConvNet-3, "
             "final epoch); accuracy is the mean +- std over the evaluation networks (and seeds). Seconds are "
             "wall time, comparable only between rows that had the machine to themselves.", ""]
    for name, recs in sorted(sweeps.items()):
        first = recs[0]
        lines += [f"## {name}", "", f"Validation split: {first['validation_size']:.0%} of train; measured on "
                  f"{'; '.join(sorted({r['cpu'] for r in recs}))}.", "",
                  "| variant | seeds | validation accuracy | priors per class | decoder channels | IPC-eq | experts s "
                  "| warm start s | s / iteration | evaluation s | total s |",
                  "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        by_variant: dict[str, list[dict]] = {}
        for r in recs:
            by_variant.setdefault(r["variant"], []).append(r)
        for variant, rows in sorted(by_variant.items(), key=_recipe_first):
            def mean(key: str, digits: int = 0) -> str:
                values = [r[key] for r in rows if r.get(key) is not None]
                return f"{statistics.mean(values):.{digits}f}" if values else "-"

            lines.append(f"| {variant} | {', '.join(str(r['seed']) for r in rows)} | {_pooled(rows)} "
                         f"| {rows[0]['lpc']} | {rows[0]['channels'][0]} | {rows[0]['ipc_equivalent']:.3f} | "
                         f"{mean('experts_s')} | {mean('warm_start_s')} | {mean('s_per_iteration', 2)} | "
                         f"{mean('evaluate_s')} | {mean('total_s')} |")
        by_protocol: dict[str, dict[str, list[dict]]] = {}
        for r in (rescored or {}).get(name, []):
            by_protocol.setdefault(r["protocol"], {}).setdefault(r["variant"], []).append(r)
        for protocol, variants in sorted(by_protocol.items()):
            lines += ["", f"The same artifacts under {protocol} on the same validation split "
                      f"(`--protocol`; {next(iter(variants.values()))[0]['notes']}):", "",
                      "| variant | seeds | networks | validation accuracy |", "|---|---|---:|---:|"]
            for variant, rows in sorted(variants.items(), key=_recipe_first):
                seeds = sorted({r["seed"] for r in rows})
                lines.append(f"| {variant} | {', '.join(map(str, seeds))} | {sum(len(r['accuracies']) for r in rows)} "
                             f"| {_pooled(rows)} |")
        root = os.path.join(cache, name) if cache else None
        summaries = [(r["variant"], r["seed"], _matching(r, root)) for r in recs]
        if any(m for _, _, m in summaries):
            lines += ["", "Matching phase, from each run's metrics (means over the last fifth of its iterations; "
                      "final values; drift: relative L2 distance from where the matching phase started; gradient ratio: median "
                      "||grad MTT term|| / ||grad MMD term||, both weighted):", "",
                      "| variant | seed | iterations | MTT loss | MMD | step size | prior std | drift priors "
                      "| drift decoder | gradient ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for variant, seed, m in sorted(summaries, key=lambda v: (v[0] != "recipe", v[0], v[1])):
                if m:
                    lines.append(f"| {variant} | {seed} | {m['iterations']} | {_fmt(m['mtt'], '.3f')} | "
                                 f"{_fmt(m['mmd'], '.4f')} | {_fmt(m['step_size'], '.4f')} | "
                                 f"{_fmt(m['prior_std'], '.3f')} | {_fmt(m['drift_prior_means'], '.3f')} | "
                                 f"{_fmt(m['drift_decoder'], '.3f')} | {_fmt(m['grad_ratio'], '.2f')} |")
        curves = {f"{r['variant']} seed {r['seed']}": r["curve"] for r in recs if r.get("curve")}
        if curves:
            lines += ["", "Validation curves (`eval_every`; one network each, so single points are noisier than "
                      "the rows above): iteration: accuracy %, then the MTT loss over 8 fixed segments of the "
                      "samples / of random real images at the same storage.", ""]
            for variant, points in sorted(curves.items()):
                text = ", ".join(f"{it}: {100 * acc:.1f} ({mtt:.3f} / {real:.3f})" for it, acc, mtt, real in points)
                lines.append(f"- {variant}: {text}")
            lines += ["", f"![curves](recipe_sweep_{name}.png)"]
        # Paths from the repository's root, wherever the sweep ran.
        commands = [re.sub(r"[^ ]*?(benchmarks/cache/)", r"\1", r["command"]) for r in recs]
        lines += ["", "Cells:", ""] + [f"    {c}" for c in commands] + [""]
    lines += ["Command: `python benchmarks/recipe_sweep.py RECIPE --variants ...` (see its docstring).", ""]
    return "\n".join(lines)


def merged(report_text: str, earlier: str | None) -> str:
    """``report_text`` with the sections (``## name``) of an ``earlier`` report that it lacks,
    kept as written, all sections in order of name."""
    def split(text: str) -> tuple[str, dict[str, str], str]:
        head, *parts = re.split(r"(?m)^(?=## )", text)
        tail = ""
        if parts and "\nCommand: `python benchmarks/recipe_sweep.py" in parts[-1]:
            parts[-1], tail = parts[-1].split("\nCommand: `python benchmarks/recipe_sweep.py", 1)
            tail = "Command: `python benchmarks/recipe_sweep.py" + tail
        return head, {part.split("\n", 1)[0][3:].strip(): part.rstrip() + "\n\n" for part in parts}, tail

    head, sections, tail = split(report_text)
    if earlier:
        sections = {**split(earlier)[1], **sections}
    return head + "".join(sections[name] for name in sorted(sections)) + tail


def plot_curves(name: str, recs: list[dict], path: str) -> str | None:
    """The sweep's validation curves (accuracy, and MTT loss beside real images') in one PNG."""
    curves = {f"{r['variant']} seed {r['seed']}": r["curve"] for r in recs if r.get("curve")}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (acc_ax, mtt_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for label, points in sorted(curves.items()):
        steps = [p[0] for p in points]
        acc_ax.plot(steps, [100 * p[1] for p in points], marker="o", markersize=3, label=label)
        line, = mtt_ax.plot(steps, [p[2] for p in points], marker="o", markersize=3, label=f"{label}: samples")
        mtt_ax.plot(steps, [p[3] for p in points], linestyle="--", color=line.get_color(), label=f"{label}: real")
    acc_ax.set(title="validation accuracy (%)", xlabel="iteration")
    mtt_ax.set(title="MTT loss, 8 fixed segments", xlabel="iteration")
    acc_ax.legend(fontsize=7)
    mtt_ax.legend(fontsize=6)
    fig.suptitle(name, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", nargs="?", help="a recipe YAML; without it, only the report is redrawn")
    p.add_argument("--variants", default="", help="';'-separated variants, each KEY=VALUE,...")
    p.add_argument("--seeds", default="0")
    p.add_argument("--validation_size", type=float, default=0.1)
    p.add_argument("--eval_seeds", type=int, default=2)
    p.add_argument("--out", default=HERE, help="folder for the cache, the kept records and recipe_sweep.md")
    p.add_argument("--variants_only", action="store_true",
                   help="run only the variants, not the recipe's own cell")
    p.add_argument("--protocol", help="also score each cell under this named protocol (e.g. P-dsa, or "
                   "P-noaug[num_per_class=50] for changed fields) on its validation split")
    a = p.parse_args(argv)
    if a.protocol:
        from d3hf.evaluation.protocols import named_protocol

        try:
            named_protocol(a.protocol)
        except ValueError as e:
            p.error(str(e))
    cache = os.path.join(a.out, "cache", "recipe_sweep")
    results = os.path.join(a.out, "results", "recipe_sweep")
    if a.recipe:
        from d3hf.utils.allocator import keep_freed_memory

        # As d3hf's command line runs: rescoring trains in this process (a P-dsa epoch took 2.3 s
        # without it, 1.6 s with it, one thread).
        keep_freed_memory()
        recipe = os.path.abspath(a.recipe)
        root = os.path.join(cache, sweep_name(recipe))
        kept = os.path.join(results, sweep_name(recipe))
        variants = sweep_variants(a.variants, a.variants_only)
        done = []
        for seed in [int(s) for s in a.seeds.split(",")]:
            for variant in variants:
                cell = cell_name(variant, seed, a.validation_size, a.eval_seeds)
                cmd = command(recipe, variant, seed, root, a.validation_size, a.eval_seeds)
                os.makedirs(root, exist_ok=True)
                record = cached(os.path.join(kept, "records", cell + ".json"), lambda: {
                    "recipe": os.path.relpath(recipe, REPO), "variant": variant_name(variant), "seed": seed,
                    "validation_size": a.validation_size, **run_cell(cmd, os.path.join(root, cell + ".log"))})
                print(f"{record['variant']} seed {seed}: {[round(100 * x, 2) for x in record['accuracies']]}",
                      file=sys.stderr, flush=True)
                done.append(record)
        # Every cell's first network before any cell's second: a stopped rescoring has compared
        # as many variants as it could. The recipe comes last: the variants are what was asked.
        for network in range(a.eval_seeds if a.protocol else 0):
            for record in sorted(done, key=lambda r: r["variant"] == "recipe"):
                rescored = rescore_record(root, kept, record, a.protocol, network)
                print(f"{record['variant']} seed {record['seed']} under {rescored['protocol']}, network {network}: "
                      f"{100 * rescored['accuracies'][0]:.2f}", file=sys.stderr, flush=True)
    sweeps, rescored = {}, {}
    if os.path.isdir(results):
        for name in sorted(os.listdir(results)):
            found = records(os.path.join(results, name, "records"))
            if found:
                sweeps[name] = found
                rescored[name] = records(os.path.join(results, name, "rescored"))
    for name, recs in sweeps.items():
        plot_curves(name, recs, os.path.join(a.out, f"recipe_sweep_{name}.png"))
    path = os.path.join(a.out, "recipe_sweep.md")
    earlier = open(path).read() if os.path.exists(path) else None
    text = merged(report(sweeps, rescored, cache), earlier)
    with open(path, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
