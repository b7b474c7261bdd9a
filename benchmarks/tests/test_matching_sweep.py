"""A seconds-long run of benchmarks/matching_sweep.py: cells, shared warm start, resume, report."""

import json
import os

import pytest

from benchmarks import matching_sweep as sweep


def test_sweep_scores_each_setting_from_one_warm_start_and_resumes(tmp_path, monkeypatch,
                                                                    fresh_accelerate_state):
    argv = ["--smoke", "--dataset", "digits", "--ipc", "1", "--settings", ";lr_decoder=0.0001", "--eval_at", "0,2",
            "--eval_epochs", "1", "--eval_seeds", "1", "--out", str(tmp_path)]
    sweep.main(argv)
    cells = tmp_path / "cache" / "matching_sweep" / "digits_ipc1_seed0_smoke" / "cells"
    assert sorted(os.listdir(cells)) == ["lr_decoder=0.0001_2.json", "recipe_2.json", "warm_start.json"]
    report = (tmp_path / "matching_sweep-smoke.md").read_text()
    assert "| setting | N = 0 | N = 2 |" in report
    assert "| lr_decoder=0.0001 |" in report and "| recipe |" in report
    assert "--eval_at 0,2" in report
    # A second run finds every cell cached; a longer one resumes each setting's run.
    monkeypatch.setattr(sweep, "run_cell", lambda *a, **k: pytest.fail("a cached cell was run again"))
    sweep.main(argv)
    monkeypatch.undo()
    sweep.main([*argv, "--eval_at", "0,2,3", "--only", "1"])  # the last --eval_at counts
    assert not (cells / "recipe_3.json").exists()
    extended = json.loads((cells / "lr_decoder=0.0001_3.json").read_text())
    assert extended["iterations"] == 3 and "warm_start_s" not in extended["timings"]


def test_a_setting_with_an_unknown_key_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="not KEY=VALUE with a distillation key"):
        sweep.main(["--smoke", "--dataset", "digits", "--settings", "lr_decodr=0.1", "--out", str(tmp_path)])


def test_settings_take_the_recipe_types():
    assert sweep.parse_setting("lr_priors=0.1, syn_steps=7,soft_labels=false") == \
        {"lr_priors": 0.1, "syn_steps": 7, "soft_labels": False}
    with pytest.raises(SystemExit, match="--eval_at"):
        sweep.parse_setting("iterations=7")
    assert sweep.setting_name({}) == "recipe"
