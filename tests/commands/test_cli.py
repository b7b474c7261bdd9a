"""The ``d3hf`` command line, in process (plus one real subprocess run)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from d3hf import load_distilled
from d3hf.commands.cli import main
from d3hf.commands.distill import parse_distill_args
from d3hf.distill.distiller import read_checkpoint
from d3hf.modeling.modeling_d3 import D3Model
from d3hf.utils.environment import measured_where
from tests.helpers import REPO, write_config


def _state(output_dir):
    return read_checkpoint(os.path.join(output_dir, "subtasks", "0"))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One tiny ``d3hf distill`` run (3 iterations, 2 evaluation epochs)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    root = tmp_path_factory.mktemp("cli")
    out = root / "out"
    cfg = write_config(root / "cfg.yaml", out)
    rc = main(["distill", cfg, "--iterations", "3"])
    return {"rc": rc, "cfg": cfg, "out": out, "root": root}


def test_distill_writes_a_complete_artifact(first_run):
    assert first_run["rc"] == 0
    artifact = first_run["out"] / "artifact"
    for name in ("config.json", "model.safetensors", "README.md", "samples.png", "eval.json"):
        assert (artifact / name).is_file(), name
    model = D3Model.from_pretrained(str(artifact))
    assert model.config.num_classes == 10 and model.config.image_shape == [1, 8, 8]
    assert model.storage().ipc_equivalent <= 10
    assert model.config.distillation["syn_steps"] == 2
    evaluation = json.loads((artifact / "eval.json").read_text())
    assert [r["method"] for r in evaluation["results"]] == ["d3hf artifact", "random real, 10 image(s) per class"]
    assert all(0.0 <= r["mean"] <= 1.0 and r["settings"]["epochs"] == 2 for r in evaluation["results"])
    # The recipe's 2 epochs and 5 samples are not P-noaug's 300 and 20: the name says so.
    assert {r["protocol"] for r in evaluation["results"]} == {"P-noaug[epochs=2,num_per_class=5]"}
    assert "## Evaluation" in (artifact / "README.md").read_text()
    assert _state(first_run["out"])["iteration"] == 3
    summary = json.loads((first_run["out"] / "summary.json").read_text())
    assert summary["ledger"]["total_scalars"] == model.storage().total_scalars


def test_dash_and_underscore_spellings(first_run):
    cfg = first_run["cfg"]
    assert parse_distill_args([cfg]).representation.ipc_budget == 10
    assert parse_distill_args([cfg, "--ipc-budget", "7"]).representation.ipc_budget == 7.0
    assert parse_distill_args([cfg, "--ipc_budget", "7"]).representation.ipc_budget == 7.0
    assert parse_distill_args([cfg, "--syn-steps", "5"]).matching.syn_steps == 5
    args = parse_distill_args([cfg, "--mixed-precision", "bf16"])
    assert args.run.mixed_precision == "bf16" and args.representation.decoder == "2"  # YAML values stay unless overridden


def test_yaml_mixed_precision_no_means_no(tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "out")
    with open(cfg, "a") as f:
        f.write("mixed_precision: no\n")
    assert parse_distill_args([cfg]).run.mixed_precision == "no"


def test_yaml_numbers_for_string_keys_become_strings(tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "out", subtask_ids=0, decoder=8)
    args = parse_distill_args([cfg])
    assert (args.run.subtask_ids, args.representation.decoder) == ("0", "8")  # subtask 0 alone, not "every subtask"


def test_fp16_is_refused_with_the_alternative(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "out", mixed_precision="fp16")
    assert main(["distill", cfg]) == 2
    err = capsys.readouterr().err
    assert "'mixed_precision' must be one of ['no', 'bf16']; got 'fp16'" in err


@pytest.mark.parametrize("value, accepted", [(True, True), ("auto", True), ("off", True), ("ture", False)])
def test_checkpoint_steps_switch_is_checked(tmp_path, value, accepted):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "out", checkpoint_steps=value)
    if accepted:
        assert parse_distill_args([cfg]).matching.checkpoint_steps in ("yes", "auto", "off")
    else:
        with pytest.raises(ValueError, match="'checkpoint_steps' must be auto, true or false; got 'ture'"):
            parse_distill_args([cfg])


def test_a_launcher_precision_the_recipe_overrides_is_reported(monkeypatch, caplog, fresh_accelerate_state):
    from d3hf.distill.distributed import make_accelerator

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with caplog.at_level("WARNING", logger="d3hf.distill.distributed"):
        accelerator = make_accelerator(cpu=True, mixed_precision="no", num_threads=1)
    assert accelerator.mixed_precision == "no"
    assert "launcher config asks for mixed_precision bf16" in caplog.text


def test_unknown_yaml_key_is_refused(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "out", not_a_real_key=3)
    assert main(["distill", cfg]) == 2
    err = capsys.readouterr().err
    assert "not_a_real_key" in err and "Unknown config key" in err
    assert not (tmp_path / "out").exists()


def test_wrong_type_is_refused(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "out", iterations="many")
    assert main(["distill", cfg]) == 2
    assert "iterations" in capsys.readouterr().err


def test_unknown_dataset_is_refused_clearly(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "out", dataset="no_such_dataset_xyz")
    assert main(["distill", cfg]) == 2
    err = capsys.readouterr().err
    assert "Unknown dataset 'no_such_dataset_xyz'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["distill", "evaluate", "info", "aggregate", "push", "generate"])
def test_help_of_every_command_succeeds(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr()
    assert "usage" in out.out and "error" not in out.err


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["distil"]) == 2
    assert "usage" in capsys.readouterr().err


def test_different_settings_in_the_same_output_dir_are_refused(first_run, capsys):
    run_file = first_run["out"] / "run_config.json"
    before = run_file.read_text()
    assert main(["distill", first_run["cfg"], "--iterations", "3", "--syn_steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "syn_steps" in err
    assert run_file.read_text() == before


def test_rerun_resumes_instead_of_redoing(first_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(first_run["out"], out)
    cfg = write_config(tmp_path / "cfg.yaml", out)
    first_state = _state(out)
    first_weights = load_file(str(out / "artifact" / "model.safetensors"))
    expert_mtime = os.stat(out / "subtasks" / "0" / "experts" / "expert_0.safetensors").st_mtime_ns

    assert main(["distill", cfg, "--iterations", "3"]) == 0
    err = capsys.readouterr().err
    assert "finished earlier" in err
    state = _state(out)
    assert state["iteration"] == 3 and len(state["history"]) == 3
    weights = load_file(str(out / "artifact" / "model.safetensors"))
    assert all(torch.equal(weights[k], first_weights[k]) for k in first_weights)
    assert os.stat(out / "subtasks" / "0" / "experts" / "expert_0.safetensors").st_mtime_ns == expert_mtime

    assert main(["distill", cfg, "--iterations", "5", "--eval_epochs", "0"]) == 0
    assert "resuming at iteration 3" in capsys.readouterr().err
    state = _state(out)
    assert state["iteration"] == 5
    assert state["history"][:3] == first_state["history"]


@pytest.mark.integration
def test_python_dash_m_subprocess(tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "out", eval_epochs=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "d3hf", "distill", cfg, "--iterations", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "artifact:" in proc.stdout and "IPC-equivalent" in proc.stdout
    assert (tmp_path / "out" / "artifact" / "model.safetensors").is_file()


def test_summary_is_strict_json_after_a_resume_with_nothing_to_do(first_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(first_run["out"], out)
    cfg = write_config(tmp_path / "cfg.yaml", out, eval_epochs=0)
    assert main(["distill", cfg, "--iterations", "3"]) == 0

    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    json.loads((out / "summary.json").read_text(), parse_constant=refuse)


def test_soft_label_mode_stores_counts_and_returns_teacher_labels(tmp_path):
    """soft_labels: true stores one softmax per prior, counts it in the ledger, and samples carry it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "cfg.yaml", out, soft_labels=True, eval_epochs=0)
    assert main(["distill", cfg, "--iterations", "2"]) == 0
    model = D3Model.from_pretrained(str(out / "artifact"))
    num_priors, num_classes = model.config.num_priors, model.config.num_classes
    assert model.config.soft_labels
    assert model.storage().components["soft_labels"] == num_priors * num_classes
    stored = load_file(str(out / "artifact" / "model.safetensors"))["soft_labels"]
    assert stored.shape == (num_priors, num_classes)
    assert torch.allclose(stored.sum(1), torch.ones(num_priors), atol=1e-5)
    assert not torch.allclose(stored, torch.full_like(stored, 1.0 / num_classes))  # a teacher, not the init
    images, labels, soft = model.sample(3, seed=0, soft_labels=True)
    assert soft.shape == (len(labels), num_classes)
    assert torch.equal(soft, stored[model.draw(3, 0)[0]])
    ds = load_distilled(model, 2, seed=0, soft_labels=True)
    assert "soft_label" in ds.column_names and len(ds[0]["soft_label"]) == num_classes


def test_evaluate_an_artifact_writes_eval_json_and_card(first_run, tmp_path, capsys):
    artifact = tmp_path / "artifact"
    shutil.copytree(first_run["out"] / "artifact", artifact)
    assert main(["evaluate", str(artifact), "--epochs", "1", "--seeds", "2", "--arch", "resnet",
                 "--with-prior-means", "--num_per_class", "3"]) == 0
    out = capsys.readouterr().out
    assert "| d3hf artifact (samples + prior means) | P-noaug[epochs=1,num_per_class=3] | resnet | test |" in out
    assert "verified disjoint" in out
    evaluation = json.loads((artifact / "eval.json").read_text())
    # distill's two rows stay; the new one comes after them
    distilled = json.loads((first_run["out"] / "artifact" / "eval.json").read_text())["results"]
    assert evaluation["results"][:2] == distilled and len(evaluation["results"]) == 3
    new = evaluation["results"][2]
    assert len(new["accuracies"]) == 2 and "protocol_text" not in evaluation  # rows of two protocols
    card = (artifact / "README.md").read_text()
    assert "P-noaug[epochs=1,num_per_class=3]" in card and "random real, 10 image(s) per class" in card
    measured_on = new["measured_on"]
    assert measured_on["device"] == "cpu" and measured_on["torch"] == torch.__version__
    assert "checkpointed_on" not in new  # trained in one go, here
    assert f"measured on {measured_where(new)}" in out
    assert f"Measured on {measured_where(new)}." in card
    # The same evaluation again replaces its row instead of adding one.
    assert main(["evaluate", str(artifact), "--epochs", "1", "--seeds", "1", "--arch", "resnet",
                 "--with-prior-means", "--num_per_class", "3"]) == 0
    again = json.loads((artifact / "eval.json").read_text())["results"]
    assert len(again) == 3 and again[:2] == distilled and again[2]["seeds"] == 1


def test_evaluate_keeps_old_rows_apart_and_refuses_a_broken_eval_json_before_training(first_run, tmp_path, capsys):
    artifact = tmp_path / "artifact"
    shutil.copytree(first_run["out"] / "artifact", artifact)
    rows = json.loads((artifact / "eval.json").read_text())["results"]
    for row in rows:  # as versions before results named their split and dataset wrote them
        row.pop("split", None)
        row.pop("dataset", None)
    (artifact / "eval.json").write_text(json.dumps({"results": rows}))
    again = ["evaluate", str(artifact), "--epochs", "2", "--num_per_class", "5", "--seeds", "1"]
    assert main(again) == 0  # the same method and protocol as distill's own row: replaced, not doubled
    results = json.loads((artifact / "eval.json").read_text())["results"]
    assert [r["method"] for r in results] == ["random real, 10 image(s) per class", "d3hf artifact"]
    (artifact / "eval.json").write_text("{broken")
    capsys.readouterr()
    assert main(again) == 2
    err = capsys.readouterr().err
    assert "eval.json cannot be read" in err and "seed 0" not in err


def test_evaluate_under_p_dsa_with_the_mlp(first_run, tmp_path, capsys):
    artifact = tmp_path / "artifact"
    shutil.copytree(first_run["out"] / "artifact", artifact)
    assert main(["evaluate", str(artifact), "--augment", "dsa", "--arch", "mlp", "--epochs", "1", "--seeds", "1"]) == 0
    assert "| d3hf artifact | P-dsa[epochs=1] | mlp | test |" in capsys.readouterr().out
    row = json.loads((artifact / "eval.json").read_text())["results"][-1]
    assert row["settings"]["augment"] == "dsa" and row["arch"] == "mlp" and "DSA" in row["notes"]


def test_a_tuning_run_says_it_scored_the_validation_split(tmp_path, capsys, fresh_accelerate_state):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "out", validation_size=0.2)
    assert main(["distill", cfg, "--iterations", "1"]) == 0
    out = capsys.readouterr().out
    assert "d3hf artifact: validation accuracy" in out and "test accuracy" not in out
    evaluation = json.loads((tmp_path / "out" / "artifact" / "eval.json").read_text())
    assert [r["split"] for r in evaluation["results"]] == ["validation", "validation"]
    card = (tmp_path / "out" / "artifact" / "README.md").read_text()
    assert "| d3hf artifact | P-noaug" in card and "| validation |" in card and "| test |" not in card


def test_evaluate_refuses_a_test_split_it_cannot_show_disjoint(first_run, tmp_path, capsys):
    import datasets

    from d3hf import load_image_classification

    digits = load_image_classification("digits")
    # The whole digits data as one unsplit dataset: its held-out rows may be distillation rows.
    full = datasets.concatenate_datasets([digits.train, digits.test])
    full.save_to_disk(str(tmp_path / "digits-all"))
    code = main(["evaluate", str(first_run["out"] / "artifact"), "--dataset", str(tmp_path / "digits-all"),
                 "--epochs", "1", "--seeds", "1"])
    assert code == 2
    assert "Cannot verify that the test split" in capsys.readouterr().err
    assert not (first_run["out"] / "artifact" / "eval.json").read_text().count("digits-all")


def test_evaluate_needs_an_artifact_or_images(capsys):
    assert main(["evaluate"]) == 2
    assert "Give an artifact (MODEL) or --images" in capsys.readouterr().err
    assert main(["evaluate", "some/artifact", "--images", "x.npz"]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be at least 1; got 0"),
    (["--device", "tpu-ish"], "is not a torch device"),
    pytest.param(["--device", "cuda"], "torch sees no GPU here", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="this machine has a GPU")),
])
def test_evaluate_refuses_bad_flags_before_training(flags, message, capsys):
    assert main(["evaluate", "some/artifact", *flags]) == 2
    assert message in capsys.readouterr().err


PEER_IPC1 = os.path.join(REPO, "..", "shared",
                         "peer-baselines", "dm_mnist5k_ipc1.npz")


@pytest.mark.skipif(not os.path.exists(PEER_IPC1), reason="the external peer images are not on this machine")
def test_evaluate_a_fixed_image_set_under_the_same_protocol(capsys):
    assert main(["evaluate", "--images", PEER_IPC1, "--dataset", "mnist5k", "--epochs", "1", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert f"| images {PEER_IPC1} | P-noaug[epochs=1] | convnet |" in out and "verified disjoint" in out


def test_an_image_file_is_verified_by_the_rows_it_records(tmp_path, capsys):
    from d3hf import load_image_classification
    from d3hf.evaluation.image_sets import random_real_images, save_image_set

    digits = load_image_classification("digits")
    images = random_real_images(digits, 1, seed=0)
    save_image_set(str(tmp_path / "recorded.npz"), images, digits)
    run = ["--dataset", "digits", "--epochs", "1", "--seeds", "1"]
    # No --dataset: the file's record names digits.
    assert main(["evaluate", "--images", str(tmp_path / "recorded.npz"), *run[2:]]) == 0
    out = capsys.readouterr().out
    assert "verified disjoint" in out and "NOT verified" not in out
    # Its record does not name MNIST-5k's train rows: refused there.
    assert main(["evaluate", "--images", str(tmp_path / "recorded.npz"), "--dataset", "mnist5k", *run[2:]]) == 2
    assert "Cannot verify that the test split" in capsys.readouterr().err
    # The same pixels without a record: nothing says where they came from.
    np.savez(tmp_path / "bare.npz", images=images.images.numpy(), labels=images.labels.numpy())
    assert main(["evaluate", "--images", str(tmp_path / "bare.npz"), *run]) == 2
    assert "does not record the train rows" in capsys.readouterr().err
    assert main(["evaluate", "--images", str(tmp_path / "bare.npz"), *run, "--allow_unverified_test"]) == 0
    assert "NOT verified" in capsys.readouterr().out


@pytest.mark.parametrize("source, message", [
    (np.array("{not json"), "is not valid JSON"),
    (np.array('["a list"]'), "does not name the train rows"),
    (np.array(["{}", "{}"]), "must be one JSON string"),
    (np.array([{"a": 1}], dtype=object), "cannot be read"),
])
def test_a_malformed_source_record_is_refused_with_the_file_named(tmp_path, capsys, source, message):
    path = tmp_path / "images.npz"
    np.savez(path, images=np.zeros((10, 1, 8, 8), np.float32), labels=np.arange(10), source=source)
    assert main(["evaluate", "--images", str(path), "--dataset", "digits", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err
