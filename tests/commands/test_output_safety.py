"""The command line never loses a user's files, refuses bad settings before any work, and explains itself."""

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time

import datasets
import pytest

from d3hf.commands.cli import main
from d3hf.distill.config import SECTIONS
from d3hf.utils.outputs import MARKER
from tests.helpers import make_model, write_config


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A small saved artifact (digits-shaped, one subtask)."""
    path = tmp_path_factory.mktemp("artifact") / "art"
    make_model(distillation={"dataset": "digits", "seed": 0}).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def subtask_artifact(tmp_path_factory):
    """The one subtask of a one-subtask run, as ``d3hf distill --subtask_ids`` saves it."""
    from d3hf.distill.aggregation import subtask_config
    from d3hf.modeling.modeling_d3 import D3Model

    path = tmp_path_factory.mktemp("subtask") / "artifact"
    whole = make_model(distillation={"dataset": "digits", "seed": 0})
    D3Model(subtask_config(whole.config, 0)).save_pretrained(str(path))
    return path


def user_folder(path):
    """A folder of the user's own files; returns their bytes to compare after a command ran."""
    (path / "code").mkdir(parents=True)
    (path / "thesis.txt").write_text("three years of work")
    (path / "code" / "a.py").write_text("print('mine')\n")
    return snapshot(path)


def snapshot(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def refused(capsys, *fragments):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)


# ----------------------------------------------------------------------------- generate


def test_generate_refuses_a_folder_of_the_users_files(artifact, tmp_path, capsys):
    mine = user_folder(tmp_path / "mywork")
    for extra in ([], ["--overwrite"]):
        assert main(["generate", str(artifact), "--num_per_class", "2", "--output", str(tmp_path / "mywork"),
                     *extra]) == 2
        refused(capsys, "d3hf did not write", "thesis.txt")
        assert snapshot(tmp_path / "mywork") == mine


def test_generate_decodes_on_the_device_asked_and_refuses_one_that_is_absent(artifact, tmp_path, capsys,
                                                                             monkeypatch):
    import datasets
    import torch

    assert main(["generate", str(artifact), "--num_per_class", "2", "--output", str(tmp_path / "cpu"),
                 "--device", "cpu"]) == 0
    assert len(datasets.load_from_disk(str(tmp_path / "cpu"))) == 2 * 10
    capsys.readouterr()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["generate", str(artifact), "--num_per_class", "2", "--output", str(tmp_path / "gpu"),
                 "--device", "cuda:0"]) == 2
    refused(capsys, "asks for CUDA, but torch sees no GPU here")
    assert not (tmp_path / "gpu").exists()


def test_generate_never_writes_over_its_input_a_file_or_the_current_folder(artifact, tmp_path, capsys, monkeypatch):
    before = snapshot(artifact)
    assert main(["generate", str(artifact), "--num_per_class", "2", "--output", str(artifact), "--overwrite"]) == 2
    refused(capsys, "input")
    assert main(["generate", str(artifact), "--num_per_class", "2", "--output", str(artifact / "inside")]) == 2
    refused(capsys, "input")
    assert snapshot(artifact) == before and not (artifact / "inside").exists()

    plain = tmp_path / "notes.txt"
    plain.write_text("keep me")
    assert main(["generate", str(artifact), "--num_per_class", "2", "--output", str(plain)]) == 2
    refused(capsys, "not a folder")
    assert plain.read_text() == "keep me"

    here = tmp_path / "here"
    here.mkdir()
    (here / "x.txt").write_text("x")
    monkeypatch.chdir(here)
    assert main(["generate", str(artifact), "--num_per_class", "2", "--output", "."]) == 2
    refused(capsys, "current directory")
    assert sorted(os.listdir(tmp_path)) == ["here", "notes.txt"]  # no .old-* / .tmp-* left behind
    assert os.listdir(here) == ["x.txt"]


def test_generate_replaces_its_own_output_only_when_asked_and_only_if_nothing_else_is_there(artifact, tmp_path,
                                                                                              capsys):
    out = tmp_path / "samples"
    assert main(["generate", str(artifact), "--num_per_class", "2", "--output", str(out), "--seed", "0"]) == 0
    captured = capsys.readouterr()
    assert (captured.out + captured.err).lower().count("wrote") == 1  # the result, said once
    assert json.loads((out / MARKER).read_text())["kind"] == "samples"
    first = snapshot(out)

    assert main(["generate", str(artifact), "--num_per_class", "2", "--output", str(out), "--seed", "1"]) == 2
    refused(capsys, "--overwrite")
    assert snapshot(out) == first
    assert main(["generate", str(artifact), "--num_per_class", "2", "--output", str(out), "--seed", "1",
                 "--overwrite"]) == 0
    assert snapshot(out) != first

    (out / "mine.txt").write_text("added by the user")
    assert main(["generate", str(artifact), "--num_per_class", "2", "--output", str(out), "--overwrite"]) == 2
    refused(capsys, "mine.txt")
    assert (out / "mine.txt").read_text() == "added by the user"


def test_outputs_get_the_users_umask(artifact, subtask_artifact, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["generate", str(artifact), "--num_per_class", "1", "--output", str(tmp_path / "s")]) == 0
        assert main(["aggregate", str(subtask_artifact), "--output_dir", str(tmp_path / "a")]) == 0
    finally:
        os.umask(old)
    for path in (tmp_path / "s", tmp_path / "a"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o755, path
        assert stat.S_IMODE(os.stat(path / MARKER).st_mode) == 0o644


# ----------------------------------------------------------------------------- aggregate and evaluate


def test_aggregate_refuses_a_folder_of_the_users_files_and_its_own_input(subtask_artifact, tmp_path, capsys):
    mine = user_folder(tmp_path / "mywork2")
    assert main(["aggregate", str(subtask_artifact), "--output_dir", str(tmp_path / "mywork2"), "--overwrite"]) == 2
    refused(capsys, "d3hf did not write")
    assert snapshot(tmp_path / "mywork2") == mine
    before = snapshot(subtask_artifact)
    assert main(["aggregate", str(subtask_artifact), "--output_dir", str(subtask_artifact), "--overwrite"]) == 2
    refused(capsys, "input")
    assert snapshot(subtask_artifact) == before

    out = tmp_path / "merged"
    assert main(["aggregate", str(subtask_artifact), "--output_dir", str(out)]) == 0
    assert main(["aggregate", str(subtask_artifact), "--output_dir", str(out)]) == 2
    refused(capsys, "--overwrite")
    assert main(["aggregate", str(subtask_artifact), "--output_dir", str(out), "--overwrite"]) == 0


def test_evaluate_writes_only_its_own_files_into_the_artifact(artifact, tmp_path, capsys):
    folder = tmp_path / "art"
    shutil.copytree(artifact, folder)
    mine = user_folder(folder / "mine")
    weights = (folder / "model.safetensors").read_bytes()
    assert main(["evaluate", str(folder), "--epochs", "1", "--seeds", "1", "--num_per_class", "2",
                 "--allow_unverified_test", "--device", "cpu"]) == 0
    assert (folder / "eval.json").is_file()
    assert snapshot(folder / "mine") == mine and (folder / "model.safetensors").read_bytes() == weights


# ----------------------------------------------------------------------------- distill


def test_distill_refuses_a_folder_of_the_users_files_and_adds_nothing(tmp_path, capsys):
    mine = user_folder(tmp_path / "mywork")
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "mywork")
    for extra in ([], ["--overwrite_output_dir"]):
        assert main(["distill", cfg, *extra]) == 2
        refused(capsys, "d3hf did not write")
        assert snapshot(tmp_path / "mywork") == mine
        assert sorted(os.listdir(tmp_path / "mywork")) == ["code", "thesis.txt"]


def test_distill_starts_over_in_its_own_run_only_with_overwrite(tmp_path, capsys, fresh_accelerate_state):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", out, eval_epochs=0)
    assert main(["distill", cfg, "--iterations", "1"]) == 0
    assert json.loads((out / MARKER).read_text())["kind"] == "run"
    assert json.loads((out / "artifact" / MARKER).read_text())["kind"] == "artifact"
    assert main(["distill", cfg, "--iterations", "1", "--syn_steps", "3"]) == 2
    refused(capsys, "different settings", "--overwrite_output_dir")
    (out / "keep.txt").write_text("mine")
    assert main(["distill", cfg, "--iterations", "1", "--syn_steps", "3", "--overwrite_output_dir"]) == 2
    refused(capsys, "keep.txt")
    (out / "keep.txt").unlink()
    assert main(["distill", cfg, "--iterations", "1", "--syn_steps", "3", "--overwrite"]) == 0
    assert json.loads((out / "run_config.json").read_text())["syn_steps"] == 3


def test_a_run_written_before_a_setting_existed_resumes_when_that_setting_is_at_its_first_default(tmp_path):
    from d3hf.distill.config import DistillArguments
    from d3hf.distill.runner import RUN_FILE, _check_run_dir

    args = DistillArguments(output_dir=str(tmp_path / "run"), report_to="none")
    os.makedirs(args.run.output_dir)
    older = {k: v for k, v in args.run_identity().items() if k != "decoder_family"}
    (tmp_path / "run" / RUN_FILE).write_text(json.dumps(older))  # as a d3hf before the setting wrote it
    # decoder_family's default changed after it was added: such a run used the first one, nearest.
    assert args.representation.decoder_family == "transpose"
    with pytest.raises(Exception, match="decoder_family"):
        _check_run_dir(args)
    assert _check_run_dir(args.replace(decoder_family="nearest")) == "resume"


@pytest.mark.parametrize("flags, message", [
    (["--iterations", "-5"], "'iterations' must be an integer >= 0"),
    (["--init_steps", "-1"], "'init_steps' must be an integer >= 0"),
    (["--mmd_chunk_classes", "0"], "'mmd_chunk_classes' must be 'auto' or an integer >= 1"),
    (["--expert_epoch_rows", "-1"], "'expert_epoch_rows' must be an integer >= 0"),
    (["--init_steps", "0"], "init: random"),
    (["--max_start_epoch", "9", "--expert_epochs_total", "2"], "expert_epochs_total is 2"),
    (["--num_experts", "0"], "'num_experts' must be an integer >= 1"),
    (["--lpc", "0"], "'lpc' must be 'auto' or an integer >= 1"),
    (["--z_dim", "x"], "'z_dim' must be 'auto' or an integer >= 1"),
    (["--decoder", "huge"], "'decoder' must be 'auto', 'small', 'medium', 'large' or an integer >= 1"),
    (["--mmd_samples", "1"], "'mmd_samples' must be an integer >= 2"),
    (["--mmd_bandwidths", "1,-2"], "'mmd_bandwidths' must be comma-separated numbers > 0"),
    (["--ipc_budget", "0"], "'ipc_budget' must be a number > 0"),
    (["--validation_size", "1.5"], "'validation_size' must be a share in [0, 1)"),
    (["--mtt_weight", "0", "--mmd_weight", "0"], "both 0"),
    (["--subtask_ids", "a"], "'subtask_ids' must be comma-separated subtask indices"),
    (["--subtask_ids", "0,5"], "subtask_ids '0,5' must lie in 0..0"),  # one subtask: checked once data is read
])
def test_bad_settings_are_refused_before_any_file_is_written(tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "cfg.yaml", out)
    assert main(["distill", cfg, *flags]) == 2
    refused(capsys, message)
    assert not out.exists()


def test_every_recipe_passes_the_checks():
    from d3hf.commands.distill import parse_distill_args

    recipes = sorted(p for p in (os.path.join("recipes", d, f) for d in os.listdir("recipes")
                                 if os.path.isdir(os.path.join("recipes", d)) and d != "accelerate_configs"
                                 for f in os.listdir(os.path.join("recipes", d))) if p.endswith(".yaml"))
    assert len(recipes) >= 6
    for recipe in recipes:
        parse_distill_args([recipe])


def test_a_recipe_after_the_flags_is_not_silently_dropped(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "out")
    assert main(["distill", "--iterations", "2", cfg]) == 2
    refused(capsys, "Give the recipe first")
    assert not (tmp_path / "out").exists()


def test_a_yaml_syntax_error_is_one_line_naming_the_file(tmp_path, capsys):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("dataset: digits\niterations: [1, 2\n")
    assert main(["distill", str(cfg)]) == 2
    refused(capsys, "broken.yaml is not valid YAML", "line")


def test_an_unknown_key_gets_a_did_you_mean(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "out", iteration=3)
    assert main(["distill", cfg]) == 2
    refused(capsys, "iteration (did you mean iterations?)")


def test_a_text_column_named_as_images_is_refused(tmp_path, capsys):
    data = datasets.Dataset.from_dict({"text": ["a", "b"] * 10, "label": [0, 1] * 10})
    data.save_to_disk(str(tmp_path / "text"))
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "out", dataset=str(tmp_path / "text"), image_column="text")
    assert main(["distill", cfg]) == 2
    refused(capsys, "Column 'text'", "not images")
    assert not (tmp_path / "out").exists()


def test_a_missing_local_dataset_path_is_never_sent_to_the_hub(tmp_path, capsys, monkeypatch):
    import datasets

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub client was asked")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    for path in ("data/mnist", "./mnist", "data/sub/mnist"):
        cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "out", dataset=path)
        assert main(["distill", cfg]) == 2
        refused(capsys, f"Dataset path {path!r} does not exist")


def test_a_misspelt_dataset_name_fails_fast_with_a_suggestion(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "out", dataset="mnsit5k")
    start = time.perf_counter()
    assert main(["distill", cfg]) == 2
    assert time.perf_counter() - start < 5  # no network retries
    refused(capsys, "Unknown dataset 'mnsit5k'", "Did you mean 'mnist5k'?")


def test_distill_without_a_recipe_says_what_it_would_run_and_starts_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["distill"]) == 2
    err = capsys.readouterr().err
    assert "Name a recipe" in err and "quick.yaml" in err and "1000 matching iterations" in err
    assert os.listdir(tmp_path) == []


def test_ctrl_c_stops_with_one_line(tmp_path, capsys, monkeypatch):
    import d3hf.distill.runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(d3hf.distill.runner, "run_distillation", interrupted)
    assert main(["distill", write_config(tmp_path / "cfg.yaml", tmp_path / "out")]) == 130
    err = capsys.readouterr().err.strip()
    assert err == "d3hf distill: interrupted. Run the same command again to resume from the last checkpoint."


def test_a_bug_is_not_dressed_as_a_user_error(tmp_path, monkeypatch):
    import d3hf.distill.runner

    def bug(*args, **kwargs):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(d3hf.distill.runner, "run_distillation", bug)
    with pytest.raises(ValueError, match="internal inconsistency"):
        main(["distill", write_config(tmp_path / "cfg.yaml", tmp_path / "out")])


# ----------------------------------------------------------------------------- info and evaluate


def test_info_on_a_missing_folder_or_an_incomplete_artifact(artifact, tmp_path, capsys, monkeypatch):
    assert main(["info", str(tmp_path / "nope")]) == 2
    refused(capsys, "There is no folder")
    assert main(["info", "outputs/no-such-run/artifact"]) == 2
    refused(capsys, "There is no folder")
    (tmp_path / "outputs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["info", "outputs/run"]) == 2  # could be NAMESPACE/NAME, but outputs/ is a folder here
    refused(capsys, "There is no folder")
    broken = tmp_path / "broken"
    shutil.copytree(artifact, broken)
    (broken / "model.safetensors").unlink()
    assert main(["info", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "has no model.safetensors" in err and "huggingface.co" not in err


@pytest.mark.parametrize("flag", ["--seeds", "--epochs", "--num_per_class"])
def test_evaluate_refuses_zero_before_training(artifact, capsys, flag):
    assert main(["evaluate", str(artifact), flag, "0"]) == 2
    refused(capsys, f"{flag} must be at least 1")


# ----------------------------------------------------------------------------- help


def test_top_level_help_lists_the_commands_without_loading_torch():
    code = ("import sys, time; t = time.perf_counter(); from d3hf.commands.cli import main; rc = main(['--help']); "
            "print('ELAPSED', time.perf_counter() - t); "
            "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules)); "
            "sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "HEAVY []" in out
    for command in ("distill", "evaluate", "info", "aggregate", "push", "generate"):
        assert f"  {command} " in out
    elapsed = float(out.split("ELAPSED")[1].split()[0])
    assert elapsed < 1.0, elapsed


def test_every_public_name_resolves_and_import_is_light():
    code = ("import sys, d3hf; light = 'torch' not in sys.modules; "
            "missing = [n for n in d3hf.__all__ if getattr(d3hf, n, None) is None]; print(light, missing)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "True []"


def test_version(capsys):
    import d3hf

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"d3hf {d3hf.__version__}"


def test_distill_help_names_the_command_its_config_and_every_flag(capsys):
    from dataclasses import fields

    assert main(["distill", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: d3hf distill") and "CONFIG.yaml" in out
    for section in SECTIONS.values():
        for f in fields(section):
            assert f.metadata.get("help"), f"{f.name} has no help text"
            assert f"--{f.name}" in out


@pytest.mark.parametrize("command", ["evaluate", "info", "aggregate", "push", "generate"])
def test_every_flag_of_every_command_has_help(command, monkeypatch):
    import argparse

    class Parsed(Exception):
        pass

    def capture(parser, *args, **kwargs):
        raise Parsed(parser)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)  # what HfArgumentParser calls
    with pytest.raises(Parsed) as parsed:
        main([command, "--help"])
    parser = parsed.value.args[0]
    assert parser.prog == f"d3hf {command}" and parser.description
    assert type(parser).__name__ == "HfArgumentParser"
    for action in parser._actions:
        assert action.help, f"d3hf {command} {action.option_strings or action.dest} has no help text"


def test_generate_offers_every_format_the_library_writes():
    from d3hf.commands.generate import FORMATS
    from d3hf.hub.generate import GENERATE_FORMATS

    assert FORMATS == GENERATE_FORMATS


def test_an_unknown_flag_ends_with_usage_and_a_close_spelling(tmp_path, capsys):
    assert main(["distill", write_config(tmp_path / "cfg.yaml", tmp_path / "out"), "--ipc_buget", "2"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --ipc_buget (did you mean --ipc_budget?)" in err and "Traceback" not in err
    assert main(["info", "x", "--revison", "main"]) == 2
    assert "did you mean --revision?" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_log_lines_go_above_progress_bars(tmp_path, monkeypatch):
    import d3hf.distill.runner

    seen = []

    def record(*args, **kwargs):
        seen.extend(type(h).__name__ for h in logging.getLogger("d3hf").handlers)
        raise KeyboardInterrupt

    monkeypatch.setattr(d3hf.distill.runner, "run_distillation", record)
    main(["distill", write_config(tmp_path / "cfg.yaml", tmp_path / "out")])
    assert seen == ["_TqdmLoggingHandler"]


def test_settings_parsed_from_yaml_are_checked_like_flags(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "out", num_experts=0)
    assert main(["distill", cfg]) == 2
    refused(capsys, "'num_experts' must be an integer >= 1")
    assert not (tmp_path / "out").exists()


def test_a_run_is_not_resumed_on_other_data_than_it_started_with(tmp_path):
    from d3hf.distill.config import DistillArguments
    from d3hf.distill.layout import DATA_FILE
    from d3hf.distill.runner import RUN_FILE, RunConflictError, run_distillation

    args = DistillArguments(dataset="digits", output_dir=str(tmp_path / "run"), report_to="none")
    os.makedirs(args.run.output_dir)
    (tmp_path / "run" / RUN_FILE).write_text(json.dumps(args.run_identity()))
    then = {"train_fingerprint": "0123456789abcdef", "test_split": "test", "test_rows": 360}
    (tmp_path / "run" / DATA_FILE).write_text(json.dumps(then))
    with pytest.raises(RunConflictError, match="other data than 'digits' loads today"):
        run_distillation(args, show_progress=False)
    assert json.loads((tmp_path / "run" / DATA_FILE).read_text()) == then  # refused before writing
