"""Watching a run: report_to, metrics.jsonl, TensorBoard event files, curves.png, d3hf plot/info."""

import json

import pytest
import torch
from PIL import Image

from d3hf.commands.cli import main
from d3hf.distill import tracking
from d3hf.distill.tracking import MetricsLog, parse_report_to, read_jsonl, resolve_report_to
from d3hf.errors import ConfigError
from d3hf.nn.sgd import train_epoch
from tests.helpers import write_config


def scalars(logdir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def test_report_to_names_all_none_auto_and_lists():
    assert parse_report_to("tensorboard, wandb") == ["tensorboard", "wandb"]
    assert parse_report_to('["tensorboard"]') == ["tensorboard"]
    assert resolve_report_to("none") == []
    assert resolve_report_to("auto") == ["tensorboard"]  # the test extra installs it
    assert "tensorboard" in resolve_report_to("all")
    with pytest.raises(ConfigError, match="tensorbord \\(did you mean tensorboard\\?\\)"):
        parse_report_to("tensorbord")
    with pytest.raises(ConfigError, match="stands alone"):
        parse_report_to("all,wandb")


def test_a_tracker_that_is_not_installed_is_refused_with_its_install_command(monkeypatch):
    monkeypatch.setattr(tracking, "_installed", lambda name: name == "tensorboard")
    with pytest.raises(ConfigError, match="wandb: pip install wandb"):
        resolve_report_to("tensorboard,wandb")
    assert resolve_report_to("all") == ["tensorboard"]


@pytest.mark.parametrize("value", ["[nonsense]", "nonsense"])
def test_an_unknown_tracker_is_refused_before_any_file_is_written(tmp_path, capsys, value):
    out = tmp_path / "run"
    (tmp_path / "cfg.yaml").write_text(f"dataset: digits\noutput_dir: {out}\nreport_to: {value}\n")
    assert main(["distill", str(tmp_path / "cfg.yaml")]) == 2
    assert "unknown tracker(s) nonsense" in capsys.readouterr().err
    assert not out.exists()


def test_metrics_log_drops_what_a_resumed_task_redoes_and_never_writes_a_line_twice(tmp_path):
    log = MetricsLog(str(tmp_path / "metrics.jsonl"))
    for i in range(1, 6):
        assert log.append({"phase": "distill", "iteration": i})
    assert log.append({"phase": "experts", "expert": 0, "epoch": 1})
    assert not log.append({"phase": "experts", "expert": 0, "epoch": 1})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"phase": "distill", "iterat')  # a line cut short by a killed process
    log = MetricsLog(str(tmp_path / "metrics.jsonl"))
    log.truncate("distill", 3)
    assert not log.append({"phase": "distill", "iteration": 3})
    assert log.append({"phase": "distill", "iteration": 4})
    records = read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r.get("iteration") for r in records if r["phase"] == "distill"] == [1, 2, 3, 4]
    assert sum(r["phase"] == "experts" for r in records) == 1


def test_train_epoch_reports_the_epochs_loss_and_accuracy():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    stats = train_epoch(net, torch.optim.SGD(net.parameters(), lr=0.0), [(x[:16], y[:16]), (x[16:], y[16:])])
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(net(x), y)
    assert stats["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert stats["accuracy"] == pytest.approx(float((net(x).argmax(1) == y).float().mean()))


def test_a_run_writes_metrics_tensorboard_curves_and_its_card_shows_them(tmp_path, capsys, fresh_accelerate_state):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", out, report_to="tensorboard", log_every=1)
    assert main(["distill", cfg, "--iterations", "3"]) == 0
    records = read_jsonl(str(out / "subtasks" / "0" / "metrics.jsonl"))
    distill = [r for r in records if r["phase"] == "distill"]
    assert [r["iteration"] for r in distill] == [1, 2, 3]  # one line per log step
    for key in ("mtt", "mtt_distance", "mmd", "step_size", "grad_norm_priors", "grad_norm_decoder",
                "seconds_per_iteration", "peak_memory_mb", "lr_decoder"):
        assert all(isinstance(r[key], float) for r in distill), key
    experts = [r for r in records if r["phase"] == "experts"]
    assert sorted((r["expert"], r["epoch"]) for r in experts) == [(0, 1), (0, 2), (0, 3)]
    for tag in ("subtask_00/mtt_normalised", "subtask_00/mmd", "subtask_00/step_size"):
        assert [step for step, _ in scalars(out / "tensorboard" / "subtask_00", tag)] == [1, 2, 3], tag
    assert scalars(out / "tensorboard" / "subtask_00", "subtask_00/mtt_normalised")[-1][1] == \
        pytest.approx(distill[-1]["mtt"])
    evaluation = read_jsonl(str(out / "metrics.jsonl"))
    assert {r["method"] for r in evaluation} == {"d3hf artifact", "random real, 10 image(s) per class"}
    for png in (out / "curves.png", out / "artifact" / "curves.png"):
        with Image.open(png) as image:
            image.verify()
    card = (out / "artifact" / "README.md").read_text()
    assert "![training curves](curves.png)" in card and "| 0 | 3 |" in card
    assert json.loads((out / "artifact" / "training.json").read_text())["subtask_00"]["iteration"] == 3
    capsys.readouterr()

    assert main(["plot", str(out), "--output", str(tmp_path / "again.png")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "again.png")
    (tmp_path / "mine.png").write_bytes(b"a user's file")
    assert main(["plot", str(out), "--output", str(tmp_path / "mine.png")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "mine.png").read_bytes() == b"a user's file"
    assert main(["plot", str(out), "--output", str(tmp_path / "mine.png"), "--overwrite"]) == 0
    capsys.readouterr()
    with Image.open(tmp_path / "again.png") as image:
        assert image.format == "PNG"
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "last recorded values" in printed and '"iteration": 3' in printed
    assert main(["plot", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


class Recorder:
    """An accelerate tracker that keeps what it is given."""

    def __new__(cls):
        from accelerate.tracking import GeneralTracker

        class _Recorder(GeneralTracker):
            name = "recorder"
            requires_logging_directory = False

            def __init__(self):
                super().__init__()
                self.config, self.logged = None, []

            @property
            def tracker(self):
                return self

            def store_init_configuration(self, values):
                self.config = values

            def log(self, values, step=None, **kwargs):
                self.logged.append((step, dict(values)))

        return _Recorder()


def test_accelerate_trackers_get_the_config_and_every_subtask_tag_on_one_increasing_step(
        tmp_path, fresh_accelerate_state):
    from accelerate import Accelerator

    from d3hf.distill.runner import run_distillation
    from d3hf.distill.tracking import RunTracker
    from tests.helpers import tiny_args

    recorder = Recorder()
    accelerator = Accelerator(cpu=True, log_with=[recorder])
    args = tiny_args(iterations=3, log_every=1, report_to="none", output_dir=str(tmp_path / "run"))
    run_distillation(args, accelerator=accelerator, show_progress=False)
    assert recorder.config["ipc_budget"] == args.representation.ipc_budget
    steps = [step for step, _ in recorder.logged]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    tags = {tag for _, values in recorder.logged for tag in values}
    assert {"subtask_00/mtt_normalised", "subtask_00/mmd", "subtask_00/expert_0/accuracy"} <= tags
    assert not (tmp_path / "run" / "tensorboard").exists()  # report_to none: no event files

    # a subtask another process distilled reaches these trackers from its metrics file
    task_dir = tmp_path / "other"
    MetricsLog(str(task_dir / "metrics.jsonl")).append({"phase": "distill", "iteration": 5, "mtt": 0.5})
    before = len(recorder.logged)
    RunTracker(str(tmp_path / "run"), [], accelerator).replay(1, str(task_dir))
    assert recorder.logged[before][1] == {"subtask_01/mtt_normalised": 0.5}


def test_the_curves_show_an_experts_panel_only_for_a_run_that_trained_experts(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from d3hf.distill.curves import plot_curves

    drawn = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (drawn.append([a.get_title() for a in fig.axes if a.axison]),
                                                        close(fig)))
    evaluation = {"phase": "evaluation", "method": "d3hf artifact", "split": "test", "accuracy": 0.9}
    expert = {"phase": "experts", "subtask": 0, "expert": 0, "epoch": 1, "accuracy": 0.5}
    plot_curves([evaluation], str(tmp_path / "warm_start_only.png"))
    plot_curves([expert, evaluation], str(tmp_path / "with_experts.png"))
    assert drawn == [["evaluation accuracy (%)"], ["experts: train accuracy (%, mean)", "evaluation accuracy (%)"]]
