"""The grid's command line: ``python -m benchmarks.grid --help``."""

from __future__ import annotations

import argparse
import dataclasses

from . import __doc__ as GRID_DOC
from .modes import HERE, METHODS, QUICK, SMOKE, Mode
from .report import write_report
from .run import coverage, run_grid


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.grid", description=GRID_DOC.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="digits, 1 seed, short runs (under 30 minutes)")
    p.add_argument("--smoke", action="store_true", help="seconds-long run of every code path (for the tests)")
    p.add_argument("--out", default=HERE, help="folder for the cache and the report (default: benchmarks/)")
    p.add_argument("--datasets")
    p.add_argument("--ipc", help="comma-separated ipc budgets")
    p.add_argument("--methods", help=f"comma-separated, of {','.join(METHODS)}")
    p.add_argument("--seeds", type=int)
    p.add_argument("--only-seeds", help="comma-separated: run only these of the seeds (e.g. one per stream)")
    p.add_argument("--protocols")
    p.add_argument("--archs")
    p.add_argument("--max-minutes", type=float, default=None, help="stop starting new cells after this long")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--status", action="store_true", help="print what of the selection is scored and what is missing")
    a = p.parse_args(argv)
    mode = dataclasses.replace(SMOKE if a.smoke else QUICK if a.quick else Mode(name="full"), out=a.out)
    picks = {"datasets": a.datasets, "ipcs": a.ipc, "methods": a.methods, "protocols": a.protocols,
             "archs": a.archs}
    for field, value in picks.items():
        if value:
            items = tuple(int(v) if field == "ipcs" else v for v in value.split(","))
            mode = dataclasses.replace(mode, **{field: items})
    if a.seeds:
        mode = dataclasses.replace(mode, seeds=a.seeds)
    if a.only_seeds:
        mode = dataclasses.replace(mode, only_seeds=tuple(int(v) for v in a.only_seeds.split(",")))
    unknown = set(mode.methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}")
    if a.status:
        print("\n".join(coverage(mode)))
        return
    if not a.report_only:
        from d3hf.utils.allocator import keep_freed_memory

        keep_freed_memory()
        run_grid(mode, a.max_minutes)
    command = "python -m benchmarks.grid" + (" --quick" if a.quick else " --smoke" if a.smoke else "")
    print(write_report(mode, command))
