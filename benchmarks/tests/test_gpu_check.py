"""benchmarks/gpu_check.py runs its whole path on the CPU here (seconds-long settings)."""

import json

import pytest

from benchmarks import gpu_check


@pytest.mark.integration
def test_the_gpu_check_passes_on_the_cpu(tmp_path, capsys, fresh_accelerate_state):
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path), "--quick"]) == 0
    out = capsys.readouterr().out
    assert "d3hf GPU check on cpu" in out and "all checks passed" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and any("(bf16)" in name for name in report["checks"])
    assert any("generated 50 samples on cpu" in name for name in report["checks"])
