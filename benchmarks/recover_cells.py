"""Rebuild grid cell records from a RESULTS.md the grid wrote, for cells whose cache is gone.

Until cell records were tracked in git (benchmarks/results/), they lived only in the untracked
cache; the cache of the first 114 cells did not survive a machine change, but the report the grid
wrote from them did. This reads that report back: accuracy (exact: the test splits have 1,000 and
360 images, and the report has two decimals), build and evaluation seconds, the protocol notes
and the storage. D3 ledgers are recomputed from the recipe and must add up to the recorded
storage; the settings digest is the current recipe's (the report does not record it), so recover
only from a report written with the recipes as they are. Each record says where it came from
(`recovered_from`); its cell time was not kept.

    python benchmarks/recover_cells.py --commit 4efef30
    python benchmarks/recover_cells.py --commit 4efef30 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file: the repo root

from benchmarks import grid  # noqa: E402

TEST_SIZES = {"mnist5k": 1000, "digits": 360}
# Protocol names may carry overrides, e.g. "P-noaug[epochs=2]".
# The earlier-draw mark (*) and the cell-seconds and CPU columns came later: reports before them
# end after the evaluation seconds.
CELL = re.compile(r"^\| (\w+?)_ipc(\d+)_([\w-]+)_seed(\d+)_(P-[^_ ]+)_(\w+)(?: \*)? \| ([\d.]+) % \| (\d+) \| (\d+) \|"
                  r"(?: (?:\d+|-) \|)?(?: [^|]+ \|)?$")


def _cell_notes(panel_notes: str, method: str) -> str:
    """A cell's notes from its panel's protocol line, which describes the artifacts' training data."""
    from d3hf.evaluation.protocols import FIXED_SET_TRAINING

    if method in grid.D3_VARIANTS:
        return panel_notes
    return re.sub(r"\d+ fresh samples per class per epoch from a distributional artifact", FIXED_SET_TRAINING,
                  panel_notes)


def parse_report(text: str) -> list[dict]:
    notes, storage, panel = {}, {}, None
    names = {v: k for k, v in grid.METHOD_NAMES.items()}
    ipcs: list[int] = []
    for line in text.splitlines():
        if m := re.match(r"^### (\w+), (P-[^, ]+), (\w+)$", line):
            panel = m.groups()
        elif panel and line.startswith("Protocol: "):
            notes[panel] = line[len("Protocol: "):].rstrip(".")
        elif panel and line.startswith("| method |"):
            ipcs = [int(i) for i in re.findall(r"ipc_budget (\d+)", line)]
        elif panel and line.startswith("| ") and line.split(" | ")[0][2:] in names:
            parts = [p.strip() for p in line.strip("|").split("|")]
            method = names[parts[0]]
            present = [ipc for ipc, text in zip(ipcs, parts[1:-1]) if text != "-"]
            for ipc, n in zip(present, parts[-1].split(" / ")):
                storage[(panel[0], ipc, method)] = int(n.replace(",", ""))
        elif line.startswith("### "):
            panel = None
    cells = []
    for line in text.splitlines():
        if m := CELL.match(line):
            dataset, ipc, method, seed, protocol, arch, acc, build_s, eval_s = m.groups()
            correct = round(float(acc) / 100 * TEST_SIZES[dataset])
            assert abs(100 * correct / TEST_SIZES[dataset] - float(acc)) < 0.006, line
            cells.append({"dataset": dataset, "ipc_budget": int(ipc), "method": method, "seed": int(seed),
                          "protocol": protocol, "arch": arch, "accuracy": correct / TEST_SIZES[dataset],
                          "notes": _cell_notes(notes[(dataset, protocol, arch)], method), "eval_seconds": float(eval_s),
                          "build_seconds": float(build_s),
                          "storage_scalars": storage[(dataset, int(ipc), method)], "cell_seconds": None})
    return cells


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commit", required=True, help="the commit whose report to read")
    p.add_argument("--quick", action="store_true", help="recover the --quick grid (RESULTS-quick.md)")
    a = p.parse_args(argv)
    mode = grid.QUICK if a.quick else grid.Mode(name="full")
    report = os.path.relpath(mode.report, grid.REPO)
    text = subprocess.run(["git", "show", f"{a.commit}:{report}"], cwd=grid.REPO, check=True,
                          capture_output=True, text=True).stdout
    from d3hf.distill.runner import build_config
    from d3hf.modeling.storage import estimate_storage

    os.makedirs(mode.cells_dir, exist_ok=True)
    cells = parse_report(text)
    for cell in cells:
        dataset, ipc, method, seed = cell["dataset"], cell["ipc_budget"], cell["method"], cell["seed"]
        data = grid.load_data(dataset)
        args = grid.distill_arguments(data, dataset, ipc, method, seed, mode)
        cell["settings_digest"] = grid.build_digest(data, dataset, ipc, method, seed, mode)
        if method in grid.D3_VARIANTS:
            ledger = estimate_storage(build_config(args, data)).to_dict()
            if ledger["total_scalars"] != cell["storage_scalars"]:
                raise SystemExit(f"{cell}: the recipe's ledger has {ledger['total_scalars']} scalars; the report "
                                 f"recorded {cell['storage_scalars']}: the recipe changed, do not recover this cell")
            cell["ledger"] = ledger
        cell["recovered_from"] = f"{report} at {a.commit}"
        # Files are named by the grid's key, whose protocol carries no overrides.
        name = grid.cell_name(dataset, ipc, method, seed, cell["protocol"].split("[")[0], cell["arch"])
        with open(os.path.join(mode.cells_dir, name + ".json"), "w") as f:
            json.dump(cell, f, indent=2)
    print(f"{len(cells)} cells written to {os.path.relpath(mode.cells_dir, grid.REPO)}/")


if __name__ == "__main__":
    main()
