"""benchmarks/scale_simulation.py end to end on seconds-long cells (launches CPU processes)."""

import json
import os

import pytest

from benchmarks import scale_simulation


@pytest.mark.integration
def test_the_simulation_deals_every_subtask_once_and_reports_each_process(tmp_path):
    scale_simulation.main(["--smoke", "--out", str(tmp_path), "--cells", "uneven,single"])
    cache = tmp_path / "cache" / "scale_simulation-smoke"
    uneven = json.loads((cache / "uneven.json").read_text())
    claimed = sorted(k for r in uneven["ranks"] for k in r["subtasks"])
    assert claimed == [0, 1, 2] and [r["rank"] for r in uneven["ranks"]] == [0, 1]
    assert all(r["peak_rss_mb"] > 0 and r["busy_s"] > 0 for r in uneven["ranks"])
    assert os.path.exists(cache / "runs" / "uneven" / "artifact" / "model.safetensors")
    single = json.loads((cache / "single.json").read_text())
    assert single["ranks"][0]["subtasks"] == [0]
    text = (tmp_path / "scale_simulation-smoke.md").read_text()
    assert "| uneven | 2 | [4, 1, 1] |" in text
