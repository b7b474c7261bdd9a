"""Faults: runs killed with SIGKILL at several points resume and finish with the tensors of an
uninterrupted run; corrupt checkpoints and expert files are detected by their checksums."""

import os
import signal
import subprocess
import sys

import pytest
import yaml

from d3hf.commands.cli import main
from d3hf.distill.distiller import CHECKPOINT_NAME, read_checkpoint
from d3hf.distill.tracking import read_jsonl
from d3hf.utils.io import CorruptFileError, read_checked, write_checked
from tests.helpers import SUBTASK_RUN, TINY, assert_same_weights, launch_two_processes, weights

pytestmark = pytest.mark.integration  # SIGKILLed runs in subprocesses

RUN = {**TINY, "num_experts": 2, "iterations": 4, "checkpoint_every": 1, "eval_epochs": 0, "num_threads": 1,
       "log_every": 1, "report_to": "tensorboard"}


KILL_RUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kill_run.py")


def distill_subprocess(cfg, kill_at=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    program = [KILL_RUN, kill_at] if kill_at else ["-m", "d3hf"]
    return subprocess.run([sys.executable, *program, "distill", str(cfg)], env=env, capture_output=True,
                          text=True, timeout=180)


def assert_whole_record(out, subtask: int, iterations: int, experts: int, epochs: int) -> None:
    """A subtask's metrics.jsonl and TensorBoard curve hold every log step exactly once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = read_jsonl(str(out / "subtasks" / str(subtask) / "metrics.jsonl"))
    assert [r["iteration"] for r in records if r["phase"] == "distill"] == list(range(1, iterations + 1))
    assert sorted((r["expert"], r["epoch"]) for r in records if r["phase"] == "experts") == \
        [(e, k) for e in range(experts) for k in range(1, epochs + 1)]
    accumulator = EventAccumulator(str(out / "tensorboard" / f"subtask_{subtask:02d}"))
    accumulator.Reload()
    steps = [e.step for e in accumulator.Scalars(f"subtask_{subtask:02d}/mtt_normalised")]
    assert steps == list(range(1, iterations + 1))
    accumulator = EventAccumulator(str(out / "tensorboard" / f"subtask_{subtask:02d}_experts"))
    accumulator.Reload()  # not purged by the resumed matching phase
    for expert in range(experts):
        steps = [e.step for e in accumulator.Scalars(f"subtask_{subtask:02d}/expert_{expert}/accuracy")]
        assert steps == list(range(1, epochs + 1)), expert


def temporaries(out) -> list:
    return [p for p in out.rglob("*") if p.name.startswith((".tmp-", ".old-"))]


def test_killed_at_every_stage_resumes_to_the_uninterrupted_result(tmp_path, fresh_accelerate_state):
    reference = tmp_path / "reference"
    (tmp_path / "ref.yaml").write_text(yaml.safe_dump({**RUN, "output_dir": str(reference)}))
    assert main(["distill", str(tmp_path / "ref.yaml")]) == 0

    out = tmp_path / "out"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**RUN, "output_dir": str(out)}))
    subtask = out / "subtasks" / "0"
    for point in ("expert-0", "iteration-2", "artifact-write"):
        proc = distill_subprocess(cfg, kill_at=point)
        assert proc.returncode == -signal.SIGKILL, (point, proc.stderr[-2000:])
        assert not (out / "artifact").exists(), point
        if point == "expert-0":
            assert (subtask / "experts" / "expert_0.safetensors").exists()
            assert not (subtask / "experts" / "expert_1.safetensors").exists()
        if point == "iteration-2":  # died after iteration 2, before its checkpoint
            assert read_checkpoint(str(subtask))["iteration"] == 1
    assert temporaries(out), "the artifact-write kill leaves its temporary folder behind"
    proc = distill_subprocess(cfg)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "finished earlier" in proc.stderr  # the subtask artifact survived the last kill
    assert not temporaries(out)
    assert_same_weights(weights(out), weights(reference))
    # killed after iteration 2's metrics line and before its checkpoint: the line was redone once
    assert_whole_record(out, 0, RUN["iterations"], RUN["num_experts"], RUN["expert_epochs_total"])


def test_killed_two_process_run_resumes_on_three_processes_to_the_one_process_result(tmp_path, fresh_accelerate_state):
    """Resume with another world size, more processes than subtasks: each subtask is dealt to
    whichever process claims it and resumes from its checkpoint in the shared output folder."""
    reference = tmp_path / "reference"
    settings = {**SUBTASK_RUN, "checkpoint_every": 1, "log_every": 1, "report_to": "tensorboard"}
    (tmp_path / "ref.yaml").write_text(yaml.safe_dump({**settings, "output_dir": str(reference)}))
    assert main(["distill", str(tmp_path / "ref.yaml")]) == 0

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**settings, "output_dir": str(tmp_path / "out")}))
    # Both ranks die at iteration 2 only once both are there, so each has its iteration-1
    # checkpoint whichever rank is faster.
    killed = launch_two_processes(tmp_path, str(cfg), "--cpu",
                                  program=(KILL_RUN, "iteration-2", f"{tmp_path / 'rendezvous'}:2"))
    assert killed.returncode != 0
    for k in (0, 1):
        assert read_checkpoint(str(tmp_path / "out" / "subtasks" / str(k)))["iteration"] == 1
    resumed = launch_two_processes(tmp_path, str(cfg), "--cpu", "--ddp_timeout", "60", processes=3)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Process 2 of 3" in resumed.stderr
    assert resumed.stderr.count("resuming at iteration 1") == 2
    assert_same_weights(weights(tmp_path / "out"), weights(reference))
    for k in (0, 1):  # each process logged its own subtask under its own tags
        assert_whole_record(tmp_path / "out", k, settings["iterations"], 1, settings["expert_epochs_total"])


def test_checked_files_detect_truncation_and_changes(tmp_path):
    path = str(tmp_path / "state")
    write_checked(path, b"payload" * 100)
    assert read_checked(path) == b"payload" * 100
    data = open(path, "rb").read()
    for damaged in (data[:-10], data[:-1] + b"x"):
        with open(path, "wb") as f:
            f.write(damaged)
        with pytest.raises(CorruptFileError, match="checksum"):
            read_checked(path)


def test_corrupt_checkpoint_and_expert_file_are_redone_not_trusted(tmp_path, capsys, fresh_accelerate_state):
    out = tmp_path / "out"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**RUN, "output_dir": str(out), "iterations": 2}))
    assert main(["distill", str(cfg)]) == 0
    first = weights(out)
    subtask = out / "subtasks" / "0"
    os.remove(subtask / "finished.json")
    checkpoint = subtask / CHECKPOINT_NAME
    checkpoint.write_bytes(checkpoint.read_bytes()[:-100])
    expert = subtask / "experts" / "expert_1.safetensors"
    expert.write_bytes(expert.read_bytes()[:-8] + b"\0" * 8)
    capsys.readouterr()
    assert main(["distill", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert "does not match its checksum" in err and "starting this task from iteration 0" in err
    assert "expert_1.safetensors does not match its recorded checksum" in err
    assert_same_weights(weights(out), first)
    assert read_checkpoint(str(subtask))["iteration"] == 2
