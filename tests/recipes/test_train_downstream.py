"""recipes/train_downstream.py in process, on a tiny untrained digits artifact."""

import importlib.util
import json
import logging
import os
import sys

import pytest

from tests.helpers import REPO, make_model

RECIPE = os.path.join(REPO, "recipes", "train_downstream.py")


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("train_downstream", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the recipe loads
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("downstream-artifact")
    make_model(distillation={"dataset": "digits", "ipc_budget": 2, "seed": 0}).save_pretrained(str(path))
    return str(path)


def tiny_argv(artifact, output_dir, *extra):
    return ["--artifact", artifact, "--output_dir", str(output_dir), "--num_per_class", "4", "--embedding_size", "4",
            "--hidden_sizes", "4,8", "--depths", "1,1", "--per_device_train_batch_size", "16",
            "--num_train_epochs", "1", "--disable_tqdm", "true", "--use_cpu", "true", *extra]


def test_one_epoch_on_distilled_samples(recipe, artifact, tmp_path):
    result = recipe.main(tiny_argv(artifact, tmp_path))
    assert result["train_on"] == "distilled"
    assert result["dataset"] == "digits" and result["test_rows"] == 360  # the recorded real test split
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert result["steps"] == 3  # 40 rows per epoch, batch 16
    with open(tmp_path / "downstream.json") as f:
        assert json.load(f)["test_accuracy"] == result["test_accuracy"]


def test_every_epoch_sees_new_samples_with_dataloader_workers(recipe, artifact, tmp_path):
    result = recipe.main(tiny_argv(artifact, tmp_path, "--num_train_epochs", "2", "--dataloader_num_workers", "2"))
    assert result["epochs_seen"] >= 2
    assert result["max_repeated_fraction"] == 0.0


def test_real_baseline_repeats_its_images(recipe, artifact, tmp_path):
    result = recipe.main(tiny_argv(artifact, tmp_path, "--num_train_epochs", "2", "--train_on", "real"))
    assert result["real_ipc"] == 2  # the artifact's ipc_budget
    assert result["steps"] == 6
    assert result["max_repeated_fraction"] == 1.0  # the same 20 real images every epoch


def test_downstream_recipe_honours_a_given_max_steps(recipe, artifact, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="train_downstream"):
        result = recipe.main(tiny_argv(artifact, tmp_path, "--max_steps", "2"))
    assert result["steps"] == 2  # one epoch of 40 rows in batches of 16 would be 3
    assert "2 steps of batch 16 (from --max_steps)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="train_downstream"):
        assert recipe.main(tiny_argv(artifact, tmp_path / "epochs"))["steps"] == 3
    assert "3 steps of batch 16 (from --num_train_epochs 1)" in caplog.text
