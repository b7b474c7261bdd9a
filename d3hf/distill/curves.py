"""``curves.png``: a run's metrics drawn as one panel per quantity, subtasks overlaid."""

from __future__ import annotations

import logging
import os
from collections import defaultdict

from ..utils.io import atomic_path
from .layout import CURVES_FILE
from .tracking import read_metrics

logger = logging.getLogger(__name__)

# (record key, panel title, log scale) for the matching phase's panels.
DISTILL_PANELS = [
    ("mtt", "MTT loss (normalised)", False),
    ("mmd", "MMD", True),
    ("loss", "weighted total loss", True),
    ("step_size", "learned inner step size", False),
    ("grad_norm_decoder", "decoder gradient norm", True),
    ("grad_norm_mtt", "MTT term: gradient norm", True),
    ("grad_norm_mmd", "MMD term: gradient norm", True),
    ("drift_decoder", "decoder: relative distance from start", False),
    ("drift_prior_means", "prior means: relative distance from start", False),
    ("prior_std_mean", "prior std (mean)", False),
    ("seconds_per_iteration", "seconds per iteration", False),
]


def plot_curves(records: list[dict], path: str, title: str = "") -> str:
    """Draw ``records`` (as ``read_metrics`` returns them) into the PNG ``path``; returns ``path``.
    Needs matplotlib (``pip install "d3hf[tracking]"``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    distill = defaultdict(list)
    experts = defaultdict(lambda: defaultdict(list))
    evaluation = []
    curve = defaultdict(list)
    for r in records:
        if r.get("phase") == "distill":
            distill[r.get("subtask", 0)].append(r)
        elif r.get("phase") == "curve":
            curve[r.get("subtask", 0)].append(r)
        elif r.get("phase") == "experts":
            experts[r.get("subtask", 0)][r["epoch"]].append(r["accuracy"])
        elif r.get("phase") == "evaluation":
            evaluation.append(r)
    panels = [p for p in DISTILL_PANELS if any(p[0] in r for rows in distill.values() for r in rows)]
    # A run without a matching phase trains no experts: no empty panel for them.
    count = len(panels) + (2 if curve else 0) + (1 if experts else 0) + 1
    cols = 3
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax, (key, name, log) in zip(flat, panels):
        for subtask in sorted(distill):
            points = sorted((r["iteration"], r[key]) for r in distill[subtask] if r.get(key) is not None)
            if points:
                ax.plot(*zip(*points), label=f"subtask {subtask}", linewidth=1.2)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        if log and all(r.get(key, 1) > 0 for rows_ in distill.values() for r in rows_):
            ax.set_yscale("log")
    if curve:
        _curve_panels(curve, flat[len(panels)], flat[len(panels) + 1])
    if experts:
        ax = flat[count - 2]
        for subtask in sorted(experts):
            epochs = sorted(experts[subtask])
            ax.plot(epochs, [100 * sum(experts[subtask][e]) / len(experts[subtask][e]) for e in epochs],
                    label=f"subtask {subtask}", linewidth=1.2)
        ax.set_title("experts: train accuracy (%, mean)", fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
    ax = flat[count - 1]
    if evaluation:
        names = [f"{r['method']}\n({r['split']})" for r in evaluation]
        values = [100 * r["accuracy"] for r in evaluation]
        bars = ax.barh(range(len(values)), values, color="tab:blue")
        ax.set_yticks(range(len(values)), names, fontsize=7)
        ax.bar_label(bars, fmt="%.1f %%", fontsize=8)
        ax.set_xlim(0, 100)
    else:
        ax.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("evaluation accuracy (%)", fontsize=10)
    for ax in flat[count:]:
        ax.axis("off")
    if len(distill) > 1 or len(experts) > 1:
        flat[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # a run and `d3hf plot` may draw at once: readers see a whole file
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def _curve_panels(curve: dict[int, list[dict]], accuracy_ax, mtt_ax) -> None:
    """The validation curve: accuracy, and the MTT loss over fixed segments beside real images'."""
    for subtask in sorted(curve):
        points = sorted(curve[subtask], key=lambda r: r["iteration"])
        steps = [r["iteration"] for r in points]
        accuracy_ax.plot(steps, [100 * r["accuracy"] for r in points], marker="o", markersize=3,
                         label=f"subtask {subtask}", linewidth=1.2)
        line, = mtt_ax.plot(steps, [r["mtt_model"] for r in points], marker="o", markersize=3, linewidth=1.2,
                            label=f"samples, subtask {subtask}")
        mtt_ax.plot(steps, [r["mtt_real"] for r in points], linestyle="--", color=line.get_color(), linewidth=1.0,
                    label=f"real images, subtask {subtask}")
    split = next(iter(curve.values()))[0].get("split", "validation")
    accuracy_ax.set_title(f"{split} accuracy (%)", fontsize=10)
    mtt_ax.set_title("MTT loss, fixed segments", fontsize=10)
    mtt_ax.legend(fontsize=6)
    for ax in (accuracy_ax, mtt_ax):
        ax.set_xlabel("iteration", fontsize=8)


def write_curves(run_dir: str, path: str | None = None, records: list[dict] | None = None) -> str | None:
    """``run_dir``'s curves (``records``, read from it when not given) into ``path`` (default
    ``run_dir/curves.png``); None, with a log line, when the run has no records yet or matplotlib
    is not installed."""
    records = read_metrics(run_dir) if records is None else records
    if not records:
        logger.info("%s has no metrics yet: no curves drawn", run_dir)
        return None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logger.info('curves.png not drawn: matplotlib is not installed (pip install "d3hf[tracking]")')
        return None
    return plot_curves(records, path or os.path.join(run_dir, CURVES_FILE), os.path.basename(os.path.abspath(run_dir)))
