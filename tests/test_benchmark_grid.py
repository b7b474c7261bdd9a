"""A seconds-long run of the benchmark grid: builds, cells, cache, resume and report."""

import importlib.util
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def grid():
    spec = importlib.util.spec_from_file_location("grid", os.path.join(REPO, "benchmarks", "grid.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["grid"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    del sys.modules["grid"]


def test_smoke_grid_runs_caches_and_reports(grid, tmp_path, capsys, fresh_accelerate_state):
    grid.main(["--smoke", "--out", str(tmp_path)])
    cells = sorted(os.listdir(tmp_path / "cache" / "grid-smoke" / "cells"))
    assert cells == [f"digits_ipc10_{m}_seed0_P-noaug_convnet.json" for m in ("d3", "dm", "herding", "random")]
    report = (tmp_path / "RESULTS-smoke.md").read_text()
    assert "| d3hf (D3) |" in report and "| herding |" in report and "P-noaug[epochs=2]" in report
    mtimes = {c: os.stat(tmp_path / "cache" / "grid-smoke" / "cells" / c).st_mtime_ns for c in cells}
    grid.main(["--smoke", "--out", str(tmp_path)])  # everything cached: nothing is recomputed
    assert mtimes == {c: os.stat(tmp_path / "cache" / "grid-smoke" / "cells" / c).st_mtime_ns for c in cells}
