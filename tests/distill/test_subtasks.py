"""Subtask decomposition: partition, budget shares, per-subtask runs, aggregation, accelerate."""

import os

import numpy as np
import pytest
import torch

from d3hf import D3Model
from d3hf.commands.cli import main
from d3hf.data.image_data import PixelMoments
from d3hf.distill.aggregation import AggregationError, aggregate, aggregate_directories
from d3hf.distill.budget import BudgetError, plan_subtasks
from d3hf.distill.subtasks import assigned_subtasks, check_partition, partition_classes, subtask_seed
from tests import helpers
from tests.helpers import ACCELERATE_CONFIGS, SUBTASK_RUN, assert_same_weights, launch_two_processes, weights


def write_config(path, output_dir, **overrides) -> str:
    return helpers.write_config(path, output_dir, base=SUBTASK_RUN, **overrides)


# ----------------------------------------------------------------------------- partition


def test_default_partition_is_balanced_seeded_and_covers_every_class():
    groups = partition_classes(10, 3, seed=0)
    assert sorted(c for g in groups for c in g) == list(range(10))
    assert sorted(len(g) for g in groups) == [3, 3, 4]
    assert groups == partition_classes(10, 3, seed=0)
    assert any(partition_classes(10, 2, seed=s) != [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]] for s in range(3))
    assert partition_classes(10, 1) == [list(range(10))]


def test_partition_errors_name_the_problem():
    with pytest.raises(ValueError, match="larger than the number of classes"):
        partition_classes(3, 4)
    with pytest.raises(ValueError, match=r"missing \[2\]"):
        check_partition([[0], [1]], 3)
    with pytest.raises(ValueError, match=r"repeated \[1\]"):
        check_partition([[0, 1], [1, 2]], 3)
    with pytest.raises(ValueError, match="at least one class"):
        check_partition([[0, 1, 2], []], 3)


def test_subtask_seeds_and_assignment_do_not_depend_on_the_process():
    assert len({subtask_seed(0, k) for k in range(8)}) == 8
    assert assigned_subtasks(5, 0, 2) == [0, 2, 4] and assigned_subtasks(5, 1, 2) == [1, 3]
    assert assigned_subtasks(2, 2, 3) == []


def test_each_subtask_must_fit_its_share_of_the_budget():
    plan = plan_subtasks(10, [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], (1, 8, 8))
    share = 10 * 5 * 64
    for spec in plan.decoder_specs:
        assert spec.num_parameters() + 5 * plan.lpc * 2 * plan.z_dim <= share
    with pytest.raises(BudgetError, match=r"Subtask \d \(1 classes\) gets 64 scalars"):
        plan_subtasks(1, [[c] for c in range(10)], (1, 8, 8))


def test_explicit_partition_over_budget_is_refused_with_the_numbers(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "out", subtasks=[[0], [1, 2, 3, 4, 5, 6, 7, 8, 9]],
                       decoder="4")
    assert main(["distill", cfg]) == 2
    err = capsys.readouterr().err
    assert "subtask 0 (1 classes)" in err and "its share 640" in err
    assert not os.path.exists(tmp_path / "out")


# ----------------------------------------------------------------------------- data views


def test_pixel_moments_of_disjoint_rows_add_up_to_the_whole(digits):
    rows = [np.concatenate([digits.class_rows[c] for c in group]) for group in ([0, 3, 5], [1, 2, 4, 6, 7, 8, 9])]
    parts = sum((digits.pixel_moments(r) for r in rows), PixelMoments.zero(1))
    assert parts == digits.pixel_moments()
    assert parts.mean_std() == digits.normalization()


def test_a_subtask_view_reads_only_its_own_pixels(digits, monkeypatch):
    view = digits.subset([2, 7])
    view._stats = None
    read = []
    original = type(digits).images_uint8
    monkeypatch.setattr(type(digits), "images_uint8",
                        lambda self, idx, split="train": read.append((self, len(idx))) or original(self, idx, split))
    view.set_normalization(view.pixel_moments())
    view.sample_class(1, 4, np.random.default_rng(0))
    assert read and all(owner is view for owner, _ in read)
    assert sum(n for _, n in read) == len(digits.class_rows[2]) + len(digits.class_rows[7]) + 4
    assert set(view.labels().tolist()) == {0, 1}


# ----------------------------------------------------------------------------- runs and aggregation


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """A 1-process, 1-thread run of two subtasks: the tensors other runs must reproduce."""
    from accelerate.state import AcceleratorState

    tmp = tmp_path_factory.mktemp("subtasks")
    cfg = write_config(tmp / "cfg.yaml", tmp / "out")
    AcceleratorState._reset_state(reset_partial_state=True)
    assert main(["distill", cfg]) == 0
    return {"cfg": cfg, "out": tmp / "out"}


def test_aggregated_artifact_covers_each_class_once_with_one_decoder_per_subtask(reference_run):
    model = D3Model.from_pretrained(str(reference_run["out"] / "artifact"))
    partition = model.config.subtasks
    assert len(model.decoders) == 2 and partition == partition_classes(10, 2, seed=0)
    assert sorted(c for g in partition for c in g) == list(range(10))
    for d, group in enumerate(partition):
        part = D3Model.from_pretrained(str(reference_run["out"] / "subtasks" / str(d) / "artifact"))
        assert part.config.class_names == [model.config.class_names[c] for c in group]
        for local, c in enumerate(group):
            rows = list(model.priors_of_class(c))
            assert model.prior_decoders[rows].tolist() == [d] * len(rows)
            assert torch.equal(model.prior_means[rows], part.prior_means[list(part.priors_of_class(local))])
        ids = torch.tensor([rows[0] for rows in map(model.priors_of_class, group)])
        noise = torch.randn(len(ids), model.config.z_dim)
        with torch.no_grad():
            torch.testing.assert_close(model(ids, noise), part.decoders[0](model.reparameterize(ids, noise)))
    images, labels = model.sample(3, seed=1)
    assert labels.tolist() == [c for c in range(10) for _ in range(3)]


def test_subtasks_run_separately_then_aggregated_equal_one_run(reference_run, tmp_path, capsys,
                                                               fresh_accelerate_state):
    for k in (0, 1):
        cfg = write_config(tmp_path / f"cfg{k}.yaml", tmp_path / f"run{k}", subtask_ids=str(k))
        assert main(["distill", cfg]) == 0
        assert "merge with d3hf aggregate" in capsys.readouterr().out
        assert not os.path.exists(tmp_path / f"run{k}" / "artifact")
    assert main(["aggregate", str(tmp_path / "run0"), str(tmp_path / "run1"), "--output_dir",
                 str(tmp_path / "merged" / "artifact")]) == 0
    assert_same_weights(weights(tmp_path / "merged"), weights(reference_run["out"]))

    assert main(["aggregate", str(tmp_path / "run0"), str(tmp_path / "run0"), "--output-dir",
                 str(tmp_path / "bad")]) == 2
    assert "exactly once" in capsys.readouterr().err
    with pytest.raises(AggregationError, match=r"missing \[1\]"):
        aggregate_directories([str(tmp_path / "run0")])
    with pytest.raises(AggregationError, match="not a subtask artifact"):
        aggregate([D3Model.from_pretrained(str(reference_run["out"] / "artifact"))])


def test_a_stopped_run_resumes_each_subtask_and_skips_finished_ones(reference_run, tmp_path, capsys,
                                                                    fresh_accelerate_state):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "out", checkpoint_every=1)
    # "Killed" after 2 of 3 iterations of both subtasks: their checkpoints are at iteration 2.
    assert main(["distill", cfg, "--iterations", "2"]) == 0
    for k in (0, 1):
        os.remove(tmp_path / "out" / "subtasks" / str(k) / "finished.json")
    capsys.readouterr()
    assert main(["distill", cfg]) == 0
    err = capsys.readouterr().err
    assert err.count("resuming at iteration 2") == 2
    assert_same_weights(weights(tmp_path / "out"), weights(reference_run["out"]))

    finished = tmp_path / "out" / "subtasks" / "0" / "artifact" / "model.safetensors"
    mtime = finished.stat().st_mtime_ns
    os.remove(tmp_path / "out" / "subtasks" / "1" / "finished.json")
    assert main(["distill", cfg]) == 0
    err = capsys.readouterr().err
    assert "Subtask 0: finished earlier" in err and "Subtask 1: resuming at iteration 3" in err
    assert finished.stat().st_mtime_ns == mtime

    os.remove(finished)  # a finished subtask whose artifact was lost is written again from its checkpoint
    assert main(["distill", cfg]) == 0
    assert "distilling it again (from its checkpoint" in capsys.readouterr().err
    assert_same_weights(weights(tmp_path / "out"), weights(reference_run["out"]))
    finished.write_bytes(finished.read_bytes()[:100])  # cut short, as by a full disk
    assert main(["distill", cfg]) == 0
    assert "distilling it again (from its checkpoint" in capsys.readouterr().err
    assert_same_weights(weights(tmp_path / "out"), weights(reference_run["out"]))


# ----------------------------------------------------------------------------- accelerate


def test_accelerate_configs_load_with_accelerates_own_loader():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"cpu_2proc.yaml": ("MULTI_GPU", 2, 1), "single_gpu.yaml": ("NO", 1, 1),
                "multi_gpu.yaml": ("MULTI_GPU", 4, 1), "multi_node.yaml": ("MULTI_GPU", 8, 2)}
    assert sorted(os.listdir(ACCELERATE_CONFIGS)) == sorted(expected)
    for name, (kind, processes, machines) in expected.items():
        config = load_config_from_file(os.path.join(ACCELERATE_CONFIGS, name))
        assert (str(config.distributed_type).split(".")[-1], config.num_processes, config.num_machines) == \
            (kind, processes, machines), name


@pytest.mark.skipif(torch.cuda.is_available(), reason="the trap exists on machines without GPUs")
@pytest.mark.integration
def test_a_launch_whose_processes_run_as_world_size_one_is_refused(reference_run, tmp_path):
    """Without the script's --cpu, each launched process would believe it is alone."""
    proc = launch_two_processes(tmp_path, reference_run["cfg"], "--output_dir", str(tmp_path / "out"))
    assert proc.returncode != 0
    assert "started 2 processes, but this one runs as world size 1" in proc.stderr
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.integration
def test_two_processes_equal_one_process(reference_run, tmp_path):
    """accelerate launch, 2 gloo processes, one output folder per rank: same tensors as 1 process."""
    proc = launch_two_processes(tmp_path, reference_run["cfg"], "--cpu", "--output_dir",
                                str(tmp_path / "rank{process_index}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Process 1 of 2" in proc.stderr
    # Each rank claimed one subtask (whichever it reached first) in its own folder, handed over
    # through the process group's store; only rank 0 holds the artifact.
    ran = [os.listdir(tmp_path / f"rank{r}" / "subtasks") for r in (0, 1)]
    assert sorted(ran) == [["0"], ["1"]], ran
    assert not os.path.exists(tmp_path / "rank1" / "artifact")
    assert_same_weights(weights(tmp_path / "rank0"), weights(reference_run["out"]))
    for r in (0, 1):  # each rank saved the subtask it distilled, whole: a relaunch loads it from there
        (k,) = ran[r]
        assert {"config.json", "model.safetensors"} <= set(os.listdir(tmp_path / f"rank{r}" / "subtasks" / k / "artifact"))
