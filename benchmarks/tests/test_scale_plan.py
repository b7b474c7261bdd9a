"""benchmarks/scale_plan.py: the memory plan follows d3hf's own rules, and a tiny measurement
runs the real runner and is scaled into the report."""

import os
import shutil

import pytest
import yaml

from benchmarks import scale_plan
from d3hf.commands.distill import parse_distill_args

RECIPE = {"dataset": "any/hub-id", "ipc_budget": 1, "num_subtasks": 4, "student_depth": 4, "student_width": 128,
          "syn_steps": 10, "samples_per_class": 2, "mmd_samples": 32, "iterations": 2000, "expert_epoch_rows": 4000,
          "min_start_epoch": 2, "max_start_epoch": 8, "expert_epochs": 2, "expert_epochs_total": 10}


def test_the_memory_plan_turns_on_step_checkpointing_and_chunks_as_the_distiller_would(tmp_path):
    from d3hf.distill.distiller import plain_unroll_bytes

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    args = parse_distill_args([str(path)])
    big = scale_plan.memory_plan(args, 200, (3, 64, 64), 500, device_gb=1000)
    small = scale_plan.memory_plan(args, 200, (3, 64, 64), 500, device_gb=24)
    assert big["classes_per_subtask"] == 50 and big["rows_per_subtask"] == 25000
    assert big["unroll_plain_bytes"] == plain_unroll_bytes(args.matching, 128, (3, 64, 64), 50)
    assert not big["step_checkpointing"] and big["unroll_bytes"] == big["unroll_plain_bytes"]
    assert small["step_checkpointing"] and small["unroll_bytes"] < small["unroll_plain_bytes"] / 5
    assert big["mmd_chunk_classes"] == 50  # all classes fit a quarter of 1,000 GB
    assert small["mmd_bytes"] <= 24e9 / 4 < (small["mmd_chunk_classes"] + 1) * small["mmd_bytes_per_class"]
    assert 0.9 < small["ipc_equivalent"] <= 1
    fixed = scale_plan.memory_plan(args.replace(mmd_chunk_classes="3", checkpoint_steps="false"), 200, (3, 64, 64),
                                   500, device_gb=24)
    assert fixed["mmd_chunk_classes"] == 3 and not fixed["step_checkpointing"]


@pytest.mark.integration
def test_a_tiny_plan_measures_this_cpu_and_writes_the_report(tmp_path):
    recipe = {**RECIPE, "test_split": "valid", "num_subtasks": 2, "student_depth": 2, "student_width": 8, "samples_per_class": 1,
              "mmd_samples": 4, "min_start_epoch": 0, "max_start_epoch": 1, "expert_epochs": 1,
              "expert_epochs_total": 2, "init_steps": 40, "num_threads": 1}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    scale_plan.main([str(path), "--num_classes", "8", "--shape", "3,16,16", "--train_per_class", "50",
                     "--measure_classes", "2", "--measure_rows_per_class", "8", "--out", str(tmp_path)])
    text = (tmp_path / "scale_plan.md").read_text()
    assert "2 subtasks of up to 4 classes, 200 train rows each" in text
    # Measured on 2 classes with the decoder a 4-class subtask gets (checked by the script itself).
    assert "measured at 2 classes with this decoder" in text and "scaled x2 for the classes" in text
    assert "h per subtask on this CPU" in text
    # The measurement and the record are kept beside the other results: with the cache gone the
    # report is redrawn unchanged, without measuring.
    assert len(os.listdir(tmp_path / "results" / "scale_plan" / "measure")) == 1
    shutil.rmtree(tmp_path / "cache")
    scale_plan.main(["--out", str(tmp_path)])
    assert (tmp_path / "scale_plan.md").read_text() == text


@pytest.mark.parametrize("recipe, classes, per_class", [("recipes/tiny_imagenet/ipc1.yaml", 200, 500),
                                                        ("recipes/imagenet64/ipc1.yaml", 1000, 1300)])
def test_the_scale_recipes_fit_their_budget_and_a_24_gb_gpu(recipe, classes, per_class):
    plan = scale_plan.memory_plan(parse_distill_args([recipe]), classes, (3, 64, 64), per_class, device_gb=24)
    assert 0.95 < plan["ipc_equivalent"] <= 1 and plan["step_checkpointing"]
    assert plan["device_peak_bytes"] < 24e9 / 2
