"""The d3hf benchmark: D3 against baselines at equal storage, on Fashion-MNIST, MNIST-5k and digits.

Every cell is one (dataset, ipc_budget, method, seed, protocol, arch): a training set is built
once per (dataset, ipc, method, seed) and cached (D3 artifacts as folders, image sets as .npz,
in benchmarks/cache/, not tracked), then a fresh network is trained on it and tested on the real
test split. Each result is a small JSON record in benchmarks/results/ (tracked in git), beside
the weights of every D3 build and the learned image sets (results/<grid>/builds/), so the grid
resumes where it stopped and can be completed over several runs, on several machines, without
distilling anything twice.

    python -m benchmarks.grid                 # the full grid (many hours on 2 CPU cores)
    python -m benchmarks.grid --quick         # digits, 1 seed, short runs: under 30 minutes
    python -m benchmarks.grid --datasets mnist5k --ipc 1 --methods d3,random --protocols P-noaug
    python -m benchmarks.grid --report-only   # rewrite the report from the recorded cells
    python -m benchmarks.grid --status        # what of the grid (or of a selection) is still missing

Streams can share the work (one torch thread each, the same selection or e.g. `--only-seeds 0,1`
and `--only-seeds 2`): a build or a cell is locked while one stream makes or scores it, and a cell
that is busy, or whose build is, is left for later. A killed cell's downstream training resumes
from its last checkpoint (saved each minute under results/<grid>/scoring/, git-ignored: force-add
a long cell's checkpoint to carry it to another checkout) in the next run.

Writes benchmarks/RESULTS.md (benchmarks/RESULTS-quick.md with --quick) and a PNG plot of
accuracy against storage budget beside it. Run from the repository's root. The modules, in the
order a run goes through them: modes (the methods, the named modes and their cells), builds (D3
artifacts and image sets, their digests and locks), run (scoring cells, the records, coverage),
report (RESULTS.md and its plot), cli (the command line).
"""

from .builds import (
    KEPT_ARTIFACT_FILES,
    Busy,
    NotApplicable,
    baseline_settings,
    build_d3,
    build_digest,
    build_image_set,
    build_name,
    d3_arguments,
    distill_arguments,
    exclusive,
    keep_build,
    load_data,
    resolved_settings,
    settings_digest,
)
from .cli import main
from .modes import (
    ABLATIONS,
    BASE_MODES,
    D3_VARIANTS,
    FULL_IPC,
    HERE,
    METHOD_NAMES,
    METHODS,
    PROTOTYPE_LR,
    QUICK,
    REPO,
    SMOKE,
    Mode,
    cell_name,
    cells,
)
from .report import machine_text, summarise, write_report
from .run import (
    EARLIER_PRIOR_DRAW,
    PRIOR_DRAW,
    SKIPPED,
    coverage,
    load_results,
    machine,
    run_cell,
    run_grid,
    split_stale,
)

__all__ = [
    "ABLATIONS", "BASE_MODES", "Busy", "D3_VARIANTS", "EARLIER_PRIOR_DRAW", "FULL_IPC", "HERE", "KEPT_ARTIFACT_FILES",
    "METHODS", "METHOD_NAMES", "Mode", "NotApplicable", "PRIOR_DRAW", "PROTOTYPE_LR", "QUICK", "REPO",
    "SKIPPED", "SMOKE", "baseline_settings", "build_d3", "build_digest", "build_image_set", "build_name", "cell_name",
    "cells", "coverage", "d3_arguments", "distill_arguments", "exclusive", "keep_build", "load_data", "load_results",
    "machine", "machine_text", "main", "resolved_settings", "run_cell", "run_grid", "settings_digest", "split_stale",
    "summarise", "write_report",
]
