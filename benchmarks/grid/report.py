"""The report: RESULTS.md (RESULTS-<mode>.md) from a mode's records, with the tables at a glance,
one per panel, the targets and verdicts, coverage, the storage ledger, every cell, and a PNG plot
of accuracy against storage beside it."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections import Counter
from collections.abc import Callable

from .builds import matching_terms
from .modes import (
    ABLATION_PROTOCOLS,
    ABLATIONS,
    BASE_MODES,
    D3_VARIANTS,
    DATASET_METHODS,
    FULL_IPC,
    METHOD_NAMES,
    METHODS,
    Mode,
    cell_name,
)
from .run import EARLIER_PRIOR_DRAW, coverage, load_results, split_stale


def summarise(results: list[dict]) -> dict:
    """(dataset, protocol, arch, method, ipc) -> (mean, std, n, storage, by_seed)."""
    import numpy as np

    groups: dict = {}
    for r in results:
        key = (r["dataset"], r["protocol"], r["arch"], r["method"], r["ipc_budget"])
        groups.setdefault(key, []).append(r)
    out = {}
    for key, rs in groups.items():
        acc = np.array([r["accuracy"] for r in rs])
        out[key] = {"mean": float(acc.mean()), "std": float(acc.std()), "n": len(rs),
                    "storage": int(np.mean([r["storage_scalars"] for r in rs])),
                    "by_seed": {r["seed"]: r["accuracy"] for r in rs}}
    return out


def write_report(mode: Mode, command: str) -> str:
    """RESULTS.md from every cached cell of this mode (also cells of earlier, wider runs)."""
    from d3hf.evaluation.protocols import FIXED_SET_TRAINING
    from d3hf.utils.environment import describe

    results, stale = split_stale(mode, load_results(mode))
    summary = summarise(results)
    # A group with no record under today's settings shows its stale records, marked, until re-scored:
    # re-scoring a grid takes days, and a row must not vanish meanwhile. Verdicts use current cells only.
    shown = {**{k: {**v, "earlier": True} for k, v in summarise(stale).items() if k not in summary}, **summary}
    every = results + stale  # every record of this mode, as the Cells table lists them
    timed = [r["cell_seconds"] for r in results if r.get("cell_seconds") is not None]
    recovered = sorted({r["recovered_from"] for r in every if "recovered_from" in r})
    datasets = [d for d in ("fashion_mnist", "mnist5k", "digits") if any(r["dataset"] == d for r in every)]
    # The all-real bound trained shorter than its panel's protocol, with its test curve (seed 0) to show it converged.
    shorter = sorted({(r["dataset"], r["protocol"], r["trained_under"], _curve_text(r.get("test_curve")))
                      for r in results if "trained_under" in r and r.get("seed", 0) == 0})
    ipcs = sorted({r["ipc_budget"] for r in every})
    methods = [m for m in METHODS if any(r["method"] == m for r in every)]
    machines = Counter(machine_text(r["machine"]) for r in every if "machine" in r)
    lines = [f"# d3hf benchmark{'' if mode.name == 'full' else f' ({mode.name} mode)'}", "",
             "## The grid: D3 and baselines at equal storage", "",
             f"Command: `{command}`. Machines: {os.cpu_count()} CPU cores, no GPU, torch {_torch_version()}; "
             "each cell's CPU is named below and in the Cells table.", "",
             f"- Cells: {len(every)}, one JSON record each in `{_rel(mode.cells_dir, mode)}/`, tracked, with the weights "
             "of the D3 builds and the learned image sets in its `builds/`; the untracked "
             f"`{_rel(mode.cache, mode)}/` holds the rest (D3 run folders with experts and checkpoints, random and all-real "
             "sets).",
             *[f"- {n} scored on {text}." for text, n in sorted(machines.items())],
             *[f"- {sum(r.get('recovered_from') == source for r in every)} recovered from {source} "
               "(`benchmarks/recover_cells.py`): scored on a 2-core machine whose CPU model was not recorded; their build and "
               "evaluation seconds were kept, their cell time was not." for source in recovered],
             *([f"- Cell time: {sum(timed) / 60:.1f} min over the {len(timed)} cells timed whole."] if timed else []),
             *[f"- {METHOD_NAMES['full']} on {d}, in the {p} panel: trained under {t}{c}." for d, p, t, c in shorter],
             *([f"- {len(stale)} records were scored under settings that have changed since (a recipe or a "
                f"baseline setting); the grid scores those cells anew. Where a group has no record under today's "
                f"settings, the tables show its earlier ones marked {EARLIER} (the verdicts leave them out)."]
               if stale else []),
             *([f"- {cyclic} D3 cells were scored under the cyclic prior draw (sample j of a class took prior j mod "
                "lpc in every epoch, so where 20 samples do not divide evenly over the priors the first ones took one "
                "sample more every epoch; marked * in the Cells table); the grid scores them anew."]
               if (cyclic := sum(r.get("prior_draw") == EARLIER_PRIOR_DRAW for r in results)) else []),
             "",
             "Accuracy is the FINAL-epoch accuracy on the real test split of a freshly trained network, mean +- std "
             "over the seeds in brackets (each seed builds its own training set and trains its own network). Every "
             "method at an `ipc_budget` stores at most `ipc_budget x classes x C x H x W` scalars (D3: decoders + "
             "priors; image sets: pixels); the storage column is the measured mean. At `ipc_budget` 1 herding and "
             "k-center keep the same image per class by construction (both start from the train image whose "
             "features are nearest the class mean), so their rows agree there.", ""]
    # The grid the mode defines, not the selection this run was narrowed to (--methods full must not
    # drop the ablation rows from the report).
    grid_mode = dataclasses.replace(BASE_MODES.get(mode.name, mode), out=mode.out)
    lines += _at_a_glance(shown, datasets, ipcs, grid_mode.methods)
    for dataset in datasets:
        for protocol in sorted({k[1] for k in shown if k[0] == dataset}):
            for arch in sorted({k[2] for k in shown if k[0] == dataset and k[1] == protocol}):
                rows = {k: v for k, v in shown.items() if k[:3] == (dataset, protocol, arch)}
                panel = [r for r in every
                         if (r["dataset"], r["protocol"], r["arch"]) == (dataset, protocol, arch)]
                # Said as for the artifacts; the image sets' rows differ only in what they train on.
                notes = next((r for r in panel if r["method"] in D3_VARIANTS), panel[0])["notes"]
                fixed = any(r["method"] not in D3_VARIANTS for r in panel)
                lines += [f"### {dataset}, {protocol}, {arch}", "", f"Protocol: {notes}.", "",
                          *([f"Image sets (the rows other than D3's) train on {FIXED_SET_TRAINING}.", ""] if fixed
                            else []),
                          "| method | " + " | ".join(f"ipc_budget {i}" for i in ipcs) + " | storage (scalars) |",
                          "|---|" + "---:|" * (len(ipcs) + 1)]
                for method in methods:
                    cells_ = [rows.get((dataset, protocol, arch, method, i)) for i in ipcs]
                    if not any(cells_):
                        continue
                    text = [_accuracy(c) if c else "-" for c in cells_]
                    storage = " / ".join(f"{c['storage']:,}" for c in cells_ if c)
                    lines.append(f"| {METHOD_NAMES[method]} | " + " | ".join(text) + f" | {storage} |")
                lines.append("")
    if not results:
        lines += ["No grid cell has been run yet: `python -m benchmarks.grid` (resumable) fills this section.", ""]
    lines += _verdicts(summary, datasets=grid_mode.datasets)
    lines += _matching_verdicts(summary, matching_terms)
    lines += coverage(grid_mode, results)
    lines += _ledger(results)
    lines += ["### Cells", "", "Build s: making the cell's training set (one build serves every protocol and "
              "architecture of its seed; each of their rows shows its seconds); eval s: the cell's downstream "
              "training; cell s: the cell's wall time as run, which holds the build's seconds only where the cell "
              "made the build, not where it found it made (not recorded for recovered cells).", "",
              "| cell | accuracy | build s | eval s | cell s | CPU |", "|---|---:|---:|---:|---:|---|"]
    stale_ids = {id(r) for r in stale}
    for r in every:
        cpu = r["machine"]["cpu"] if "machine" in r else "not recorded"
        if r.get("checkpointed_on"):  # resumed from a downstream training begun on another machine
            cpu += " (resumed from " + "; ".join(describe(e) for e in r["checkpointed_on"]) + ")"
        cell_s = f"{r['cell_seconds']:.0f}" if r.get("cell_seconds") is not None else "-"
        mark = (" *" if r.get("prior_draw") == EARLIER_PRIOR_DRAW else "") + (f" {EARLIER}" if id(r) in stale_ids else "")
        lines.append(f"| {cell_name(r['dataset'], r['ipc_budget'], r['method'], r['seed'], r['protocol'], r['arch'])}"
                     f"{mark} "
                     f"| {100 * r['accuracy']:.2f} % | {r['build_seconds']:.0f} | {r['eval_seconds']:.0f} | {cell_s} "
                     f"| {cpu} |")
    if mode.name == "full":
        lines += _other_measurements(mode.out)
    text = "\n".join(lines) + "\n"
    with open(mode.report, "w") as f:
        f.write(text)
    _plot(mode.report, methods, summary)
    return text


EARLIER = "†"  # marks a summarised cell made of records scored under earlier settings


def _accuracy(c: dict) -> str:
    """A summarised cell as the report's tables and verdicts write it: mean +- std (seeds), in %."""
    return f"{100 * c['mean']:.1f} +- {100 * c['std']:.1f} ({c['n']})" + (f" {EARLIER}" if c.get("earlier") else "")


GLANCE_METHODS = ("d3", "dm", "peer", "herding", "kcenter", "random", "full")


def _panels(summary: dict, dataset: str, methods) -> list[tuple[str, str]]:
    """The (protocol, arch) panels of ``dataset`` where any of ``methods`` was scored, P-noaug and
    ConvNet first."""
    keys = {(k[1], k[2]) for k in summary if k[0] == dataset and k[3] in methods}
    return sorted(keys, key=lambda k: (not k[0].startswith("P-noaug"), k[0], k[1] != "convnet", k[1]))


def _at_a_glance(summary: dict, datasets: list[str], ipcs: list[int], defined=METHODS) -> list[str]:
    """D3 and every baseline side by side in each panel, one table per dataset and budget, and the
    ablations side by side across budgets: the best mean of each column in bold."""
    def column(cells_: list, contenders: list[bool]) -> list[str]:
        contenders = [ok and c is not None and not c.get("earlier") for c, ok in zip(cells_, contenders)]
        best = max((c["mean"] for c, ok in zip(cells_, contenders) if ok), default=None)
        return ["-" if c is None else (f"**{100 * c['mean']:.1f}**" if ok and c["mean"] == best else
                                       f"{100 * c['mean']:.1f}") + (f" +- {100 * c['std']:.1f}" if c["n"] > 1 else "")
                + f" ({c['n']})" + (f" {EARLIER}" if c.get("earlier") else "") for c, ok in zip(cells_, contenders)]

    lines = ["## At a glance", "", "Mean +- std test accuracy in % (seeds in brackets); in bold the best stored set of "
             "each column (all real train images are the upper bound, the same cells at every budget); a dash: not "
             "scored yet, or an ablation that is the recipe itself at that budget"
             + (f"; {EARLIER}: scored under earlier settings, not re-scored yet (never in bold)"
                if any(c.get("earlier") for c in summary.values()) else "") + ".", ""]
    for dataset in datasets:
        panels = _panels(summary, dataset, GLANCE_METHODS)
        for ipc in ipcs:
            methods = [m for m in GLANCE_METHODS if any((dataset, *p, m, ipc) in summary for p in panels)
                       and m != "full"] + ["full"]
            if not any((dataset, *p, "d3", ipc) in summary for p in panels):
                continue
            grid_ = [column([summary.get((dataset, *p, m, FULL_IPC if m == "full" else ipc)) for m in methods],
                            [m != "full" for m in methods]) for p in panels]
            lines += _glance_table(f"{dataset}, ipc_budget {ipc}", [f"{p} {a}" for p, a in panels], methods, grid_)
    for dataset in datasets:
        protocols = ABLATION_PROTOCOLS.get(dataset)
        panels = [p for p in _panels(summary, dataset, ABLATIONS) if protocols is None or p[0] in protocols]
        for protocol, arch in panels[: len(protocols) if protocols else 1]:
            budgets = [i for i in ipcs if (dataset, protocol, arch, "d3", i) in summary]
            # The variants this grid defines for the dataset (a quick run leaves some out), scored yet or not.
            rows = [m for m in ("d3", *ABLATIONS, "random") if m in defined and m in DATASET_METHODS.get(dataset, METHODS)]
            grid_ = [column([summary.get((dataset, protocol, arch, m, i)) for m in rows], [True] * len(rows))
                     for i in budgets]
            lines += _glance_table(f"{dataset} ablations, {protocol} {arch}", [f"ipc_budget {i}" for i in budgets],
                                   rows, grid_)
    return lines


def _glance_table(title: str, columns: list[str], methods: list[str], grid_: list[list[str]]) -> list[str]:
    """A titled table with a row per method and ``grid_[column][row]`` in its cells."""
    return [f"### {title}", "", "| method | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns),
            *[f"| {METHOD_NAMES[m]} | " + " | ".join(col[i] for col in grid_) + " |" for i, m in enumerate(methods)], ""]


# The benchmark's targets: D3's accuracy floor per budget in each dataset's headline panel (Fashion-MNIST's
# is the published protocol), where it must also be ahead of every baseline. Ablations of single
# terms must beat random real images in MNIST-5k's panel.
TARGET_PANEL = ("mnist5k", "P-noaug", "convnet")
TARGETS = {("fashion_mnist", "P-dsa", "convnet"): {1: 0.85, 10: 0.90}, TARGET_PANEL: {1: 0.85, 10: 0.95}}
BASELINES = ("random", "herding", "kcenter", "dm", "peer")
SINGLE_TERM_ABLATIONS = ("d3-mtt-only", "d3-mmd-only")


def _verdicts(summary: dict, datasets: tuple[str, ...] | None = None) -> list[str]:
    """Targets met or missed (of ``datasets``, default all), every panel where a baseline is level
    with or ahead of D3, and the single-term ablations against random real images: stated from the
    cells, never by hand."""
    lines = ["### Targets, and where D3 is not ahead", ""]
    targets = [(panel, ipc, floor) for panel, floors in TARGETS.items() for ipc, floor in floors.items()
               if datasets is None or panel[0] in datasets]
    for panel, ipc, floor in targets:
        d3 = summary.get((*panel, "d3", ipc))
        others = {m: summary[(*panel, m, ipc)] for m in BASELINES if (*panel, m, ipc) in summary}
        where = f"{', '.join(panel)}, ipc_budget {ipc}"
        if d3 is None:
            lines.append(f"- {where}: D3 not scored under the current settings yet; target >= {100 * floor:.0f} % and "
                         "ahead of every baseline.")
            continue
        best = max(others, key=lambda m: others[m]["mean"]) if others else None
        floor_met = "met" if d3["mean"] >= floor else "MISSED"
        ahead = ("no baseline run yet" if best is None else
                 f"{'met' if d3['mean'] > others[best]['mean'] else 'MISSED'} (best baseline: "
                 f"{METHOD_NAMES[best]} {_accuracy(others[best])}; {len(others)} of {len(BASELINES)} baselines run)")
        lines.append(f"- {where}: D3 {_accuracy(d3)}. Target >= {100 * floor:.0f} %: {floor_met}. "
                     f"Ahead of every baseline: {ahead}.")
    behind = []
    for key, d3 in sorted(summary.items()):
        if key[3] != "d3":
            continue
        level = [(m, summary[(*key[:3], m, key[4])]) for m in BASELINES if (*key[:3], m, key[4]) in summary]
        level = [(m, c) for m, c in level if c["mean"] >= d3["mean"]]
        if level:
            behind.append(f"- {', '.join(key[:3])}, ipc_budget {key[4]}: D3 {_accuracy(d3)} against "
                          + ", ".join(f"{METHOD_NAMES[m]} {_accuracy(c)}" for m, c in level) + ".")
    if len(lines) > 2:  # after the target lines
        lines.append("")
    lines += ["Panels where a baseline is level with or ahead of D3:", ""] + (behind or ["- none so far."])
    ablations = []
    for key, random_real in sorted(summary.items()):
        # The headline protocol, also with a mode's overrides (e.g. "P-noaug[epochs=100]").
        if key[3] != "random" or (key[1].split("[")[0], key[2]) != TARGET_PANEL[1:] or key[4] != 1:
            continue
        for m in SINGLE_TERM_ABLATIONS:
            if (c := summary.get((*key[:3], m, 1))) is not None:
                verdict = "beats" if c["mean"] > random_real["mean"] else "DOES NOT beat"
                ablations.append(f"- {key[0]}, ipc_budget 1: {METHOD_NAMES[m]} {_accuracy(c)} {verdict} random real "
                                 f"{_accuracy(random_real)}.")
    lines += ["", "Single-term ablations against random real images (P-noaug, convnet, ipc_budget 1):", ""]
    lines += (ablations or ["- not run yet."])
    # An ablation that removes a part of D3 and scores as well means that part is not earning its cost there.
    level = [f"- {', '.join(key[:3])}, ipc_budget {key[4]}: {METHOD_NAMES[m]} {_accuracy(c)} against D3 {_accuracy(d3)}."
             for key, d3 in sorted(summary.items()) if key[3] == "d3"
             for m in ABLATIONS if (c := summary.get((*key[:3], m, key[4]))) is not None and c["mean"] >= d3["mean"]]
    lines += ["", "Ablations level with or ahead of the whole method:", ""]
    return lines + (level or ["- none so far."]) + [""]


# What the matching phase (MTT + MMD after the warm start) must show against its own ablations, per
# panel: D3's least lead in points over each row, with the spreads (mean +- std over MATCHING_SEEDS
# seeds) apart; None: D3's mean only must not fall below the row's. Where the recipe dropped the MMD
# term, D3 is its MTT-only row, and the claim that the terms work together is judged on the
# both-terms row against it.
MATCHING_CRITERIA = {("fashion_mnist", "P-dsa", "convnet"): {"d3-vae-only": 0.015, "d3-mtt-only": 0.0,
                                                             "d3-mmd-only": 0.0},
                     ("mnist5k", "P-noaug", "convnet"): {"d3-vae-only": None}}
MATCHING_SEEDS = 3


def _matching_verdicts(summary: dict, terms: Callable[[str, int], frozenset[str]]) -> list[str]:
    """Whether the matching phase earns its place, budget by budget, against MATCHING_CRITERIA,
    with the seed-by-seed differences (each seed's D3 and ablation share their experts); ``terms``:
    the terms a dataset's recipe matches with at a budget."""
    lines = []
    for panel, rows in MATCHING_CRITERIA.items():
        for ipc in sorted(k[4] for k in summary if k[:4] == (*panel, "d3")):
            d3 = summary[(*panel, "d3", ipc)]
            where = f"- {', '.join(panel)}, ipc_budget {ipc}: D3 {_accuracy(d3)}"
            recipe_terms = terms(panel[0], ipc)
            if not recipe_terms:
                lines.append(f"{where}: the recipe runs no matching phase at this budget (its validation split chose "
                             "the warm start alone), so D3 is its warm start.")
                continue
            if recipe_terms == {"mtt"}:
                parts = [_against(d3, "d3", method, summary.get((*panel, method, ipc)), lead)
                         for method, lead in rows.items() if method != "d3-mtt-only"]
                both = summary.get((*panel, "d3-both-terms", ipc))
                together = (f"The terms together ({METHOD_NAMES['d3-both-terms']}) against MTT alone: not scored yet."
                            if both is None else "The terms together: " + _against(both, "d3-both-terms", "d3", d3, 0.0))
                lines.append(f"{where}: the recipe runs the MTT term alone (its validation split dropped the MMD term), "
                             "so D3 is its MTT-only row. " + " ".join(parts) + " " + together)
                continue
            parts = [_against(d3, "d3", method, summary.get((*panel, method, ipc)), lead)
                     for method, lead in rows.items()]
            lines.append(f"{where}. " + " ".join(parts))
    if not lines:  # e.g. a quick grid, on digits only
        return []
    return ["", f"The matching phase against its own ablations (needed: D3's lead over each row, mean over "
            f"{MATCHING_SEEDS} seeds, with the spreads mean +- std apart; 'not below': D3's mean at least the row's):",
            "", *lines, ""]


def _against(lead_row: dict, lead_method: str, method: str, other: dict | None, lead: float | None) -> str:
    """One verdict of ``lead_method`` (D3, or a row judged against it) against one other row, as a sentence."""
    name = METHOD_NAMES[method]
    if other is None:
        return f"Against {name}: not scored yet."
    gap = 100 * (lead_row["mean"] - other["mean"])
    facts = [f"{gap:+.1f}"]
    if lead is None:
        need, met = "not below", gap >= 0
    else:
        apart = 100 * ((lead_row["mean"] - lead_row["std"]) - (other["mean"] + other["std"]))
        need = "spreads apart" if lead == 0 else f"+{100 * lead:.1f} and spreads apart"
        met = gap >= 100 * lead and apart > 0
        facts.append(f"spreads {'apart' if apart > 0 else 'overlapping'} by {abs(apart):.2f}")
    if shared := sorted(set(lead_row["by_seed"]) & set(other["by_seed"])):
        facts.append("seed by seed " + " / ".join(f"{100 * (lead_row['by_seed'][s] - other['by_seed'][s]):+.1f}"
                                                   for s in shared))
    seeds = min(lead_row["n"], other["n"])
    verdict = ("met" if met else "MISSED") if seeds >= MATCHING_SEEDS else f"not decided ({seeds} of {MATCHING_SEEDS} seeds)"
    subject = "Against" if lead_method == "d3" else f"{METHOD_NAMES[lead_method]} {_accuracy(lead_row)} against"
    return f"{subject} {name} {_accuracy(other)}: {', '.join(facts)} (needed: {need}): {verdict}."


def _ledger(results: list[dict]) -> list[str]:
    """What each method stores at each budget (its first seed's build)."""
    if not results:
        return []
    # Scalars in one image per class, from a D3 ledger or an image set's pixels.
    per_ipc = {}
    for r in results:
        if "ledger" in r:
            per_ipc[r["dataset"]] = r["ledger"]["scalars_per_ipc"]
        elif r["method"] != "full":
            per_ipc.setdefault(r["dataset"], r["storage_scalars"] // r["ipc_budget"])
    lines = ["### Storage ledger", "",
             "What each method stores, in fp32 scalars (4 bytes each). Labels are implicit: every stored set is "
             "ordered by class, one block of priors or images per class.", "",
             "| dataset | ipc_budget | method | stored | scalars | IPC-equivalent |", "|---|---:|---|---|---:|---:|"]
    seen = set()
    for r in sorted(results, key=lambda r: (r["dataset"], r["ipc_budget"], METHODS.index(r["method"]), r["seed"])):
        key = (r["dataset"], r["ipc_budget"], r["method"])
        if key in seen:
            continue
        seen.add(key)
        if "ledger" in r:
            stored = ", ".join(f"{name} {n:,}" for name, n in sorted(r["ledger"]["components"].items()))
        else:
            stored = f"pixels {r['storage_scalars']:,}"
        ipc = "all" if r["method"] == "full" else str(r["ipc_budget"])
        ipc_eq = r["storage_scalars"] / per_ipc[r["dataset"]] if r["dataset"] in per_ipc else float("nan")
        lines.append(f"| {r['dataset']} | {ipc} | {METHOD_NAMES[r['method']]} | {stored} | "
                     f"{r['storage_scalars']:,} | {ipc_eq:.3f} |")
    return lines + [""]


# Measurements made by the other benchmark scripts, gathered into RESULTS.md when present.
OTHER_REPORTS = ("baseline_check.md", "subtasks.md", "iteration_split.md", "unroll_memory.md", "speed_and_storage.md",
                 "cpu_allocator.md", "reproducibility.md")


def _other_measurements(folder: str) -> list[str]:
    lines = []
    for name in OTHER_REPORTS:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            with open(path) as f:
                body = f.read().strip().splitlines()
            # Demote the section's own title one level under RESULTS.md.
            lines += [("#" + body[0]) if body and body[0].startswith("# ") else body[0], *body[1:], "",
                      f"(from `benchmarks/{name}`)", ""]
    return lines


def _plot(report: str, methods: list[str], summary: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is not installed (pip install -e .[bench]); no plot written", file=sys.stderr)
        return
    panels = sorted({k[:3] for k in summary})
    if not panels:
        return
    # One row per dataset, one colour per method in every panel, one legend; the ablations are in
    # the tables only (a dozen lines per panel would hide the comparison).
    datasets = sorted({p[0] for p in panels})
    columns = sorted({p[1:] for p in panels})
    shown = [m for m in methods if m not in ABLATIONS and m != "full"]
    colours = {m: f"C{i}" for i, m in enumerate(shown)}
    fig, axes = plt.subplots(len(datasets), len(columns), figsize=(3.6 * len(columns), 3.2 * len(datasets)),
                             squeeze=False)
    for row, dataset in enumerate(datasets):
        for col, (protocol, arch) in enumerate(columns):
            ax, panel = axes[row][col], (dataset, protocol, arch)
            ax.set_title(f"{dataset}, {protocol}, {arch}", fontsize=9)
            for method in shown:
                points = sorted((k[4], v) for k, v in summary.items() if k[:3] == panel and k[3] == method)
                if points:
                    ax.errorbar([v["storage"] for _, v in points], [100 * v["mean"] for _, v in points],
                                yerr=[100 * v["std"] for _, v in points], marker="o", capsize=3,
                                color=colours[method], linestyle="none" if method == "peer" else "-",
                                label=METHOD_NAMES[method])
            full = [v for k, v in summary.items() if k[:3] == panel and k[3] == "full"]
            if full:
                ax.axhline(100 * full[0]["mean"], color="grey", linestyle="--", label=METHOD_NAMES["full"])
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labels on the decades only
            ax.set_xlabel("storage (scalars)", fontsize=8)
            ax.set_ylabel("test accuracy (%)", fontsize=8)
            ax.tick_params(labelsize=7)
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(os.path.splitext(report)[0] + ".png", dpi=110)
    plt.close(fig)


def machine_text(m: dict) -> str:
    return f"{m['cpu']} ({m['cpu_capability']}), {m['torch_threads']} torch thread(s), torch {m['torch']}"


def _curve_text(curve: list | None) -> str:
    """"; test accuracy after 2 / 4 / ... epochs: 90.1 / 91.0 / ... %" for an all-real record's test curve."""
    if not curve:
        return ""
    epochs = " / ".join(str(e) for e, _ in curve)
    return f"; test accuracy after {epochs} epochs: " + " / ".join(f"{100 * a:.1f}" for _, a in curve) + " %"


def _rel(path: str, mode: Mode) -> str:
    """``path`` as the report names it: from the root of the checkout ``mode.out`` is in (not of the
    code that runs: a grid run from another worktree writes into this one)."""
    return os.path.relpath(path, os.path.dirname(os.path.abspath(mode.out)))


def _torch_version() -> str:
    import torch

    return torch.__version__
