"""A seconds-long run of the benchmark grid: builds, cells, cache, resume, report and recovery."""

import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys

import numpy as np
import pytest

from benchmarks import grid, recover_cells
from benchmarks.grid import report as report_module


def record_names(mode) -> list[str]:
    """The cells' records in a grid's results folder (beside the checkpoints of cells in progress)."""
    return sorted(n for n in os.listdir(mode.cells_dir) if n.endswith(".json"))


@pytest.mark.integration
def test_smoke_grid_runs_caches_and_reports(tmp_path, capsys, fresh_accelerate_state):
    grid.main(["--smoke", "--out", str(tmp_path)])
    cells = sorted(c for c in os.listdir(tmp_path / "results" / "grid-smoke") if c.endswith(".json"))
    assert cells == sorted(f"digits_ipc10_{m}_seed0_P-noaug_convnet.json"
                           for m in ("d3", "d3-mmd-only", "d3-prototypes", "dm", "herding", "random"))
    report = (tmp_path / "RESULTS-smoke.md").read_text()
    assert "| d3hf (D3) |" in report and "| D3, MMD term only |" in report and "| herding |" in report
    assert "| prototype images, D3's MTT + MMD objective |" in report
    assert "P-noaug[epochs=2]" in report
    # Paths are named from the checkout the report is in, wherever the code ran from.
    assert f"`{tmp_path.name}/results/grid-smoke/`" in report and "../" not in report
    mtimes = {c: os.stat(tmp_path / "results" / "grid-smoke" / c).st_mtime_ns for c in cells}
    grid.main(["--smoke", "--out", str(tmp_path)])  # everything cached: nothing is recomputed
    assert mtimes == {c: os.stat(tmp_path / "results" / "grid-smoke" / c).st_mtime_ns for c in cells}

    # Changed distillation or DM settings re-score those cells from new builds; the others stay.
    changed = dataclasses.replace(grid.SMOKE, out=str(tmp_path), methods=("d3", "random", "herding", "dm"),
                                  d3_overrides={**grid.SMOKE.d3_overrides, "iterations": 3},
                                  dm_iterations=grid.SMOKE.dm_iterations + 1)
    grid.run_grid(changed, max_minutes=None)
    after = {c: os.stat(tmp_path / "results" / "grid-smoke" / c).st_mtime_ns for c in cells}
    assert [c for c in cells if after[c] != mtimes[c]] == [f"digits_ipc10_{m}_seed0_P-noaug_convnet.json"
                                                           for m in ("d3", "dm")]
    assert len([b for b in os.listdir(tmp_path / "results" / "grid-smoke" / "builds") if "_dm_seed0_" in b]) == 2
    # Under the smoke settings those two records are stale: the report shows them marked (no
    # current record of their group) and does not count them; the grid scores them anew from the
    # builds it kept.
    smoke = dataclasses.replace(grid.SMOKE, out=str(tmp_path))
    report = grid.write_report(smoke, "cmd")
    assert "2 records were scored under settings that have changed" in report
    assert "4 of the 6 cells this grid defines are scored" in report
    assert "| digits_ipc10_dm_seed0_P-noaug[epochs=2]_convnet † |" in report
    assert re.search(r"\| DM \(in-project\) \| [0-9.]+ \(1\) † \|", report)  # marked, and never in bold
    grid.run_grid(smoke, max_minutes=None)
    report = grid.write_report(smoke, "cmd")
    assert "changed since" not in report and "†" not in report
    assert len([b for b in os.listdir(tmp_path / "cache" / "grid-smoke" / "builds") if "_d3_seed0_" in b]) == 2
    # D3, its variants and the prototype ablation trained one set of experts between them.
    assert os.listdir(tmp_path / "cache" / "grid-smoke" / "experts") == ["digits_ipc10_seed0"]
    # Cell records live apart from the cache, beside the D3 weights and the learned image sets:
    # with the cache gone the report is unchanged, and cells scored anew distil nothing.
    results = tmp_path / "results" / "grid-smoke"
    kept = sorted(os.listdir(results / "builds"))
    assert len([b for b in kept if "_d3_seed0_" in b]) == 2 and not any("_random_" in b for b in kept)
    assert sorted(os.listdir(results / "builds" / next(b for b in kept if "_d3-mmd-only_" in b))) == \
        ["config.json", "model.safetensors", "summary.json"]
    assert any(b.startswith("digits_ipc10_dm_seed0") and b.endswith(".npz") for b in kept)
    report = grid.write_report(dataclasses.replace(grid.SMOKE, out=str(tmp_path)), "cmd")
    shutil.rmtree(tmp_path / "cache")
    assert grid.write_report(dataclasses.replace(grid.SMOKE, out=str(tmp_path)), "cmd") == report
    rescored = [f"digits_ipc10_{m}_seed0_P-noaug_convnet.json" for m in ("d3-mmd-only", "herding")]
    before = {c: json.loads((results / c).read_text()) for c in rescored}
    for c in rescored:
        (results / c).unlink()
    grid.run_grid(dataclasses.replace(grid.SMOKE, out=str(tmp_path), methods=("d3-mmd-only", "herding")), None)
    assert not (tmp_path / "cache" / "grid-smoke" / "builds").exists()  # nothing was distilled or selected again
    for c in rescored:
        after = json.loads((results / c).read_text())
        assert after["accuracy"] == before[c]["accuracy"] and after["storage_scalars"] == before[c]["storage_scalars"]
    report = grid.write_report(dataclasses.replace(grid.SMOKE, out=str(tmp_path)), "cmd")
    assert report.count("| digits_ipc10_") == 6
    cpu = grid.machine()["cpu"]
    assert sum(line.startswith("| digits_ipc10_") and line.endswith(f" | {cpu} |") for line in report.splitlines()) == 6
    # A D3 record scored under the earlier prior draw is shown, marked, counted as missing and
    # scored anew from its kept build.
    d3_cell = results / "digits_ipc10_d3_seed0_P-noaug_convnet.json"
    record = json.loads(d3_cell.read_text())
    assert record["prior_draw"] == grid.PRIOR_DRAW and "prior_draw" not in json.loads((results / rescored[1]).read_text())
    d3_cell.write_text(json.dumps({**record, "prior_draw": grid.EARLIER_PRIOR_DRAW}))
    marked = grid.write_report(dataclasses.replace(grid.SMOKE, out=str(tmp_path)), "cmd")
    assert "| digits_ipc10_d3_seed0_P-noaug[epochs=2]_convnet * |" in marked and "1 D3 cells were scored under" in marked
    assert "5 of the 6 cells this grid defines are scored" in marked
    grid.run_grid(dataclasses.replace(grid.SMOKE, out=str(tmp_path), methods=("d3",)), None)
    assert json.loads(d3_cell.read_text())["prior_draw"] == grid.PRIOR_DRAW
    # A run narrowed to some methods reports the grid its mode defines: every ablation row stays.
    narrowed = grid.write_report(dataclasses.replace(grid.SMOKE, out=str(tmp_path), methods=("herding",)), "cmd")
    ablations = narrowed.split("### digits ablations, P-noaug[epochs=2] convnet")[1].split("###")[0]
    assert "| D3, MMD term only |" in ablations and "| prototype images, D3's MTT + MMD objective |" in ablations

    # The report can be read back into the records it was written from, with or without the CPU
    # column (reports before it had none). Written anew: the d3 cell was re-scored since.
    report = grid.write_report(dataclasses.replace(grid.SMOKE, out=str(tmp_path)), "cmd")
    recovered = recover_cells.parse_report(report)
    without_cpu = recover_cells.parse_report(report.replace(f" | {cpu} |", " |"))

    def by_name(rs):
        return {grid.cell_name(r["dataset"], r["ipc_budget"], r["method"], r["seed"], r["protocol"], r["arch"]): r
                for r in rs}

    recovered = by_name(recovered)
    assert by_name(without_cpu) == recovered
    records = by_name(grid.load_results(dataclasses.replace(grid.SMOKE, out=str(tmp_path))))
    assert recovered.keys() == records.keys()
    assert "6 of the 6 cells this grid defines are scored" in report
    assert all(r["machine"]["cpu_capability"] and r["machine"]["torch_threads"] >= 1 for r in records.values())
    for name, r in records.items():
        back = recovered[name]
        assert back["accuracy"] == pytest.approx(r["accuracy"], abs=1e-12), name  # exact: 360 test images
        assert back["storage_scalars"] == r["storage_scalars"] and back["notes"] == r["notes"]
        assert back["eval_seconds"] == round(r["eval_seconds"]) and back["build_seconds"] == round(r["build_seconds"])


def test_ablations_run_under_the_headline_protocol_only():
    mode = grid.Mode(name="t", datasets=("digits",), ipcs=(1,), methods=("d3", "d3-mtt-only", "d3-prototypes"),
                     seeds=2)
    keys = list(grid.cells(mode))
    d3 = [k for k in keys if k[2] == "d3"]
    assert len(d3) == 2 * len(mode.protocols) * len(mode.archs) == 8
    for method in ("d3-mtt-only", "d3-prototypes"):
        ablation = [k for k in keys if k[2] == method]
        assert {(k[4], k[5]) for k in ablation} == {("P-noaug", "convnet")} and len(ablation) == 2


def test_fashion_mnist_has_its_own_rows_ablations_under_p_dsa_and_a_shorter_all_real_bound():
    from benchmarks.grid.modes import FULL_EPOCHS

    keys = list(grid.cells(grid.Mode(name="full", datasets=("fashion_mnist",))))
    methods = {k[2] for k in keys}
    assert methods == {"d3", "d3-random-init", "d3-vae-only", "d3-mtt-only", "d3-mmd-only", "d3-both-terms", "random",
                       "herding", "kcenter", "dm", "full"}
    assert {(k[4], k[5]) for k in keys if k[2] == "d3-mtt-only"} == {("P-noaug", "convnet"), ("P-dsa", "convnet")}
    assert {(k[4], k[5]) for k in keys if k[2] == "full"} == {("P-noaug", "convnet"), ("P-dsa", "convnet")}
    assert {k[1] for k in keys if k[2] == "d3"} == {1, 10} and len([k for k in keys if k[2] == "d3"]) == 3 * 2 * 2 * 2
    mode = grid.Mode(name="full")
    full = mode.protocol("P-dsa", "convnet", "fashion_mnist", "full")
    assert full.epochs == FULL_EPOCHS["fashion_mnist"] and full.name == f"P-dsa[epochs={FULL_EPOCHS['fashion_mnist']}]"
    assert mode.protocol("P-dsa", "convnet", "mnist5k", "full").name == "P-dsa"
    assert mode.protocol("P-dsa", "convnet", "fashion_mnist", "d3").name == "P-dsa"
    mnist = {k[2] for k in grid.cells(grid.Mode(name="full", datasets=("mnist5k",)))}
    assert {"d3-prototypes", "d3-lpc1"} <= mnist  # the other datasets keep every row
    digest = grid.build_digest(None, "fashion_mnist", 1, "full", 0, mode)
    assert digest
    with pytest.MonkeyPatch.context() as m:  # another epoch count makes the recorded bound stale
        m.setitem(FULL_EPOCHS, "fashion_mnist", FULL_EPOCHS["fashion_mnist"] + 10)
        assert grid.build_digest(None, "fashion_mnist", 1, "full", 0, mode) != digest


def test_variants_change_only_their_settings(digits):
    base = grid.d3_arguments(digits, "digits", 10, "d3", 0, grid.QUICK)
    mmd_only = grid.d3_arguments(digits, "digits", 10, "d3-mmd-only", 0, grid.QUICK)
    assert mmd_only.matching.mtt_weight == 0 and mmd_only.experts.buffer_dir == base.experts.buffer_dir
    assert grid.settings_digest(mmd_only) != grid.settings_digest(base)
    # Where files go and how often to log do not change what is computed.
    assert grid.settings_digest(base.replace(log_every=1, num_threads=2)) == grid.settings_digest(base)
    # Nor does a setting the variant never reads: a recipe that matches with more inner steps
    # re-keys D3 and MTT only, not the warm start or MMD only.
    for method, reads in (("d3", True), ("d3-mtt-only", True), ("d3-vae-only", False), ("d3-mmd-only", False)):
        args = grid.d3_arguments(digits, "digits", 10, method, 0, grid.QUICK)
        changed = args.replace(syn_steps=args.matching.syn_steps + 1)
        assert (grid.settings_digest(changed) != grid.settings_digest(args)) == reads, method
    half = grid.d3_arguments(digits, "digits", 10, "d3-half-decoder", 0, grid.QUICK)
    from d3hf.distill.runner import build_config

    width = build_config(base, digits).decoder_specs()[0].channels[-1]
    assert half.representation.decoder == str(width // 2) and build_config(half, digits).priors_per_class > \
        build_config(base, digits).priors_per_class
    # One prior per class gives the freed scalars to the decoder even though the recipe fixes its width.
    lpc1 = build_config(grid.d3_arguments(digits, "digits", 10, "d3-lpc1", 0, grid.QUICK), digits)
    assert lpc1.priors_per_class == 1 and lpc1.decoder_specs()[0].channels[-1] > width
    # At digits ipc 1 the recipe itself has one prior per class: that variant does not exist there,
    # and halving the decoder gives the budget's rest to more priors than the recipe's one.
    with pytest.raises(grid.NotApplicable):
        grid.d3_arguments(digits, "digits", 1, "d3-lpc1", 0, grid.QUICK)
    half = grid.d3_arguments(digits, "digits", 1, "d3-half-decoder", 0, grid.QUICK)
    base = grid.d3_arguments(digits, "digits", 1, "d3", 0, grid.QUICK)
    assert base.representation.lpc == "1" and build_config(half, digits).priors_per_class > 1


def test_a_variant_is_skipped_exactly_when_it_resolves_to_the_recipe(digits, monkeypatch):
    import d3hf.commands.distill

    parse = d3hf.commands.distill.parse_distill_args

    def recipe_with(**settings):
        monkeypatch.setattr(d3hf.commands.distill, "parse_distill_args",
                            lambda argv: parse(argv).replace(**settings))

    # One prior per class with a fixed narrow decoder: the lpc-1 row widens the decoder, so it exists.
    recipe_with(lpc="1", decoder="2")
    lpc1 = grid.d3_arguments(digits, "digits", 10, "d3-lpc1", 0, grid.QUICK)
    assert (lpc1.representation.lpc, lpc1.representation.decoder) == ("1", "auto")
    # The recipe is the variant already: nothing is left to vary.
    recipe_with(lpc="1", decoder="auto")
    with pytest.raises(grid.NotApplicable):
        grid.d3_arguments(digits, "digits", 10, "d3-lpc1", 0, grid.QUICK)
    # A recipe without the MMD term is its own MTT-only row; the rows that keep the term (MMD
    # only, both terms) run it at the weight it was dropped from, and compute what the recipe did
    # before it dropped the term.
    recipe_with(mmd_weight=0.0)
    with pytest.raises(grid.NotApplicable):
        grid.d3_arguments(digits, "digits", 10, "d3-mtt-only", 0, grid.QUICK)
    dropped = grid.modes.MMD_WHEN_DROPPED["mmd_weight"]
    mmd_only = grid.d3_arguments(digits, "digits", 10, "d3-mmd-only", 0, grid.QUICK).matching
    both = grid.d3_arguments(digits, "digits", 10, "d3-both-terms", 0, grid.QUICK)
    assert (mmd_only.mtt_weight, mmd_only.mmd_weight) == (0, dropped)
    assert (both.matching.mtt_weight, both.matching.mmd_weight) == (1, dropped)
    recipe_with(mmd_weight=dropped)
    assert grid.settings_digest(both) == grid.settings_digest(grid.d3_arguments(digits, "digits", 10, "d3", 0, grid.QUICK))
    # With both terms in the recipe, the both-terms row is the recipe.
    with pytest.raises(grid.NotApplicable, match="own settings"):
        grid.d3_arguments(digits, "digits", 10, "d3-both-terms", 0, grid.QUICK)
    recipe_with(mmd_weight=1.0)
    assert grid.d3_arguments(digits, "digits", 10, "d3-mmd-only", 0, grid.QUICK).matching.mmd_weight == 1
    # A recipe without the MTT term has no MTT-only row: it would keep no term at all, which d3hf refuses.
    recipe_with(mtt_weight=0.0, mmd_weight=1.0)
    with pytest.raises(grid.NotApplicable, match="both 0"):
        grid.d3_arguments(digits, "digits", 10, "d3-mtt-only", 0, grid.QUICK)
    # A recipe that chose no matching phase: it is its own warm-start row, the rows that vary the
    # matching do not exist, and the representation's rows still do. A mode that shortens the
    # matching (QUICK: 100 iterations) does not turn it on.
    recipe_with(iterations=0)
    assert grid.d3_arguments(digits, "digits", 10, "d3", 0, grid.QUICK).matching.iterations == 0
    with pytest.raises(grid.NotApplicable, match="own settings"):
        grid.d3_arguments(digits, "digits", 10, "d3-vae-only", 0, grid.QUICK)
    for method in ("d3-random-init", "d3-mtt-only", "d3-mmd-only", "d3-both-terms", "d3-prototypes"):
        with pytest.raises(grid.NotApplicable, match="no matching phase"):
            grid.builds.distill_arguments(digits, "digits", 10, method, 0, grid.QUICK)
    assert grid.d3_arguments(digits, "digits", 10, "d3-half-decoder", 0, grid.QUICK).matching.iterations == 0


def test_only_seeds_splits_a_run_over_streams():
    mode = grid.Mode(name="t", datasets=("digits",), ipcs=(1,), methods=("d3", "random"), seeds=3,
                     protocols=("P-noaug",), archs=("convnet",))
    streams = [list(grid.cells(dataclasses.replace(mode, only_seeds=picks))) for picks in ((0, 1), (2,))]
    assert sorted(streams[0] + streams[1]) == sorted(grid.cells(mode))
    assert {k[3] for k in streams[1]} == {2}


def test_the_upper_bound_is_scored_once_whatever_the_budgets():
    for ipcs in ((1, 10), (10,), (10, 50)):
        mode = grid.Mode(name="t", datasets=("digits",), ipcs=ipcs, methods=("full", "random"), seeds=1,
                         protocols=("P-noaug",), archs=("convnet",))
        keys = list(grid.cells(mode))
        assert [k for k in keys if k[2] == "full"] == [("digits", grid.FULL_IPC, "full", 0, "P-noaug", "convnet")]
        # The methods after it keep their own budgets.
        assert [k[1] for k in keys if k[2] == "random"] == list(ipcs)


def test_the_upper_bound_records_its_test_curve_and_the_report_shows_it(tmp_path, digits):
    mode = dataclasses.replace(grid.SMOKE, out=str(tmp_path), methods=("full",))
    record = grid.run_cell(digits, "digits", grid.FULL_IPC, "full", 0, "P-noaug", "convnet", mode)
    assert [e for e, _ in record["test_curve"]] == [1, 2] and record["test_curve"][-1][1] == record["accuracy"]
    assert "test_curve" not in grid.run_cell(digits, "digits", 10, "random", 0, "P-noaug", "convnet", mode)
    assert report_module._curve_text([(10, 0.9012), (20, 0.92)]) == \
        "; test accuracy after 10 / 20 epochs: 90.1 / 92.0 %"
    assert report_module._curve_text(None) == ""


def fake_build(artifact_dir: str, summary_dir: str, content: str | None = None) -> None:
    """A finished D3 build's files (each holding ``content``, or its own name) and its summary:
    123 scalars, 4.5 s."""
    os.makedirs(artifact_dir)
    for file in grid.KEPT_ARTIFACT_FILES:
        with open(os.path.join(artifact_dir, file), "w") as f:
            f.write(content or file)
    with open(os.path.join(summary_dir, "summary.json"), "w") as f:
        json.dump({"ledger": {"total_scalars": 123}, "timings": {"subtasks_s": 4.5}, "subtasks": []}, f)


def test_coverage_counts_scored_missing_and_cells_that_do_not_exist(tmp_path):
    mode = grid.Mode(name="t", datasets=("digits",), ipcs=(1,), methods=("d3", "d3-lpc1", "random"), seeds=1,
                     protocols=("P-noaug",), archs=("convnet",), out=str(tmp_path))
    # At digits ipc 1 the recipe has one prior per class already: the lpc-1 cell is recorded as
    # not existing, without building anything, and a record scored under an older recipe goes.
    os.makedirs(mode.cells_dir)
    (tmp_path / "results" / "grid-t" / "digits_ipc1_d3-lpc1_seed0_P-noaug_convnet.json").write_text("{}")
    grid.run_grid(dataclasses.replace(mode, methods=("d3-lpc1",)), max_minutes=None)
    assert os.listdir(mode.cells_dir) == ["digits_ipc1_d3-lpc1_seed0_P-noaug_convnet" + grid.SKIPPED]
    assert not os.path.exists(mode.cache) or not os.listdir(mode.cache)
    assert grid.load_results(mode) == []
    record = {"dataset": "digits", "ipc_budget": 1, "method": "d3", "seed": 0, "protocol": "P-noaug",
              "arch": "convnet", "accuracy": 0.5,
              "settings_digest": grid.build_digest(grid.load_data("digits"), "digits", 1, "d3", 0, mode)}
    (tmp_path / "results" / "grid-t" / "digits_ipc1_d3_seed0_P-noaug_convnet.json").write_text(json.dumps(record))
    text = "\n".join(grid.coverage(mode))
    assert "1 of the 2 cells this grid defines are scored under the current settings and prior draw, besides 1 that do not exist" in text
    assert "| digits | 1 | random real | 0 | 1 |" in text and "| digits | 1 | d3hf (D3) |" not in text


def test_a_build_is_made_by_one_stream_at_a_time(tmp_path):
    path = str(tmp_path / "builds" / "digits_ipc1_dm_seed0")
    with grid.exclusive(path):
        assert open(path + ".lock").read() == str(os.getpid())
        with pytest.raises(grid.Busy, match="in use by process"):
            with grid.exclusive(path):
                pass
    assert not os.path.exists(path + ".lock")
    # The lock of a process that is gone (killed mid-build) is taken over.
    import subprocess

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with open(path + ".lock", "w") as f:
        f.write(dead.stdout.strip())
    with grid.exclusive(path):
        assert open(path + ".lock").read() == str(os.getpid())
    # The grid leaves a cell whose build another stream is making for a later run.
    mode = dataclasses.replace(grid.SMOKE, out=str(tmp_path), methods=("random",))
    with grid.exclusive(os.path.join(mode.cache, "builds", "digits_ipc10_random_seed0")):
        grid.run_grid(mode, max_minutes=None)
    assert record_names(mode) == []


def test_a_cell_killed_mid_training_resumes_where_it_stopped(tmp_path, monkeypatch):
    import d3hf.evaluation.training

    mode = dataclasses.replace(grid.SMOKE, out=str(tmp_path / "a"), methods=("random",), eval_epochs=3)
    grid.run_grid(dataclasses.replace(mode, out=str(tmp_path / "b")), max_minutes=None)  # uninterrupted
    real_source = d3hf.evaluation.training.fixed_source
    epochs_run = []

    class Killed(Exception):
        pass

    def source_killed_at_epoch_2(images, labels):
        def source(epoch):
            epochs_run.append(epoch)
            if epoch == 2 and epochs_run.count(2) == 1:
                raise Killed
            return real_source(images, labels)(epoch)
        return source

    monkeypatch.setattr(d3hf.evaluation.training, "CHECKPOINT_SECONDS", 0.0)
    monkeypatch.setattr(d3hf.evaluation.training, "fixed_source", source_killed_at_epoch_2)
    other = {**d3hf.evaluation.training.measured_on("cpu"), "device_name": "Another CPU"}
    with monkeypatch.context() as patch, pytest.raises(Killed):  # killed on another machine
        patch.setattr(d3hf.evaluation.training, "measured_on", lambda device: other)
        grid.run_grid(mode, max_minutes=None)
    assert record_names(mode) == [] and os.listdir(mode.scoring_dir)  # no record, a checkpoint
    grid.run_grid(mode, max_minutes=None)
    assert epochs_run == [0, 1, 2, 2]  # the second run trained epoch 2 only
    (name,) = record_names(mode)
    with open(os.path.join(mode.cells_dir, name)) as f, \
            open(os.path.join(tmp_path, "b", "results", "grid-smoke", name)) as g:
        resumed, uninterrupted = json.load(f), json.load(g)
    assert resumed["accuracy"] == uninterrupted["accuracy"] and "resumed_from_epoch" not in uninterrupted
    assert resumed["resumed_from_epoch"] == 2 and resumed["cell_seconds"] >= resumed["seconds_before_resume"] > 0
    assert os.listdir(mode.scoring_dir) == []  # the checkpoint goes with the record
    assert resumed["checkpointed_on"] == [other] and "checkpointed_on" not in uninterrupted
    grid.write_report(mode, "cmd")
    with open(mode.report) as f:
        assert f"| {grid.machine()['cpu']} (resumed from Another CPU (cpu), torch" in f.read()


def test_a_cell_another_stream_is_scoring_is_left_to_it(tmp_path):
    mode = dataclasses.replace(grid.SMOKE, out=str(tmp_path), methods=("random",))
    (key,) = grid.cells(mode)
    with grid.exclusive(os.path.join(mode.scoring_dir, grid.cell_name(*key))):
        grid.run_grid(mode, max_minutes=None)
    assert record_names(mode) == []
    grid.run_grid(mode, max_minutes=None)
    assert record_names(mode) == [grid.cell_name(*key) + ".json"]


def test_a_stream_that_locks_a_build_another_just_finished_uses_it_instead_of_making_it_again(tmp_path, monkeypatch):
    mode = dataclasses.replace(grid.SMOKE, out=str(tmp_path))
    data = grid.load_data("digits")
    path = os.path.join(mode.cache, "builds", grid.build_name("digits", 10, "random", 0, None) + ".npz")
    real_lock = grid.exclusive

    @contextlib.contextmanager
    def lock_after_the_other_stream_finished(build):
        # Between this stream's first look and its lock, the other stream saves the set.
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez_compressed(path, images=np.zeros((100, 1, 8, 8), np.float32), labels=np.repeat(np.arange(10), 10),
                            seconds=1.5)
        with real_lock(build):
            yield

    def never(*args, **kwargs):
        raise AssertionError("the build was made a second time")

    monkeypatch.setattr(grid.builds, "exclusive", lock_after_the_other_stream_finished)
    monkeypatch.setattr(grid.builds, "_make_image_set", never)
    images, facts = grid.build_image_set(data, "digits", "random", 10, 0, mode)
    assert facts["build_seconds"] == 1.5 and images.images.shape == (100, 1, 8, 8)


def test_a_stream_that_locks_a_d3_build_another_just_finished_keeps_it_instead_of_distilling(tmp_path,
                                                                                              monkeypatch):
    import d3hf.distill.runner

    mode = dataclasses.replace(grid.SMOKE, out=str(tmp_path))
    data = grid.load_data("digits")
    args = grid.d3_arguments(data, "digits", 10, "d3", 0, mode)
    name = grid.build_name("digits", 10, "d3", 0, grid.settings_digest(args))
    out = os.path.join(mode.cache, "builds", name)
    artifact_dir = os.path.join(out, d3hf.distill.runner.ARTIFACT_DIR)
    real_lock = grid.exclusive

    @contextlib.contextmanager
    def lock_after_the_other_stream_finished(build):
        # Between this stream's first look and its lock, the other stream finishes the distillation.
        fake_build(artifact_dir, out)
        with real_lock(build):
            yield

    def never(*args, **kwargs):
        raise AssertionError("the build was distilled a second time")

    monkeypatch.setattr(grid.builds, "exclusive", lock_after_the_other_stream_finished)
    monkeypatch.setattr(d3hf.distill.runner, "run_distillation", never)
    artifact, facts = grid.build_d3(data, "digits", 10, "d3", 0, mode)
    assert artifact == artifact_dir
    assert facts["storage_scalars"] == 123 and facts["build_seconds"] == 4.5
    # ... and keeps it in the tracked results like a build of its own.
    kept = os.path.join(mode.cells_dir, "builds", name)
    assert sorted(os.listdir(kept)) == sorted([*grid.KEPT_ARTIFACT_FILES, "summary.json"])


def test_a_row_that_now_has_another_rows_settings_takes_its_record_and_build(tmp_path, monkeypatch, digits):
    import d3hf.commands.distill
    import d3hf.distill.runner

    parse = d3hf.commands.distill.parse_distill_args
    mode = grid.Mode(name="t", datasets=("digits",), ipcs=(10,), methods=("d3", "d3-mtt-only", "d3-both-terms"),
                     seeds=1, protocols=("P-noaug",), archs=("convnet",), out=str(tmp_path))

    def scored(method: str, accuracy: float) -> str:
        """A record and a kept build of ``method`` under the recipe of the moment; its digest."""
        digest = grid.build_digest(digits, "digits", 10, method, 0, mode)
        kept = os.path.join(mode.cells_dir, "builds", grid.build_name("digits", 10, method, 0, digest))
        fake_build(kept, kept, content=method)
        record = {"dataset": "digits", "ipc_budget": 10, "method": method, "seed": 0, "protocol": "P-noaug",
                  "arch": "convnet", "accuracy": accuracy, "settings_digest": digest, "prior_draw": grid.PRIOR_DRAW}
        with open(os.path.join(mode.cells_dir, grid.cell_name("digits", 10, method, 0, "P-noaug", "convnet") + ".json"),
                  "w") as f:
            json.dump(record, f)
        return digest

    def recipe_with(**settings):
        monkeypatch.setattr(d3hf.commands.distill, "parse_distill_args", lambda argv: parse(argv).replace(**settings))

    # Scored while the recipe ran both terms: D3 and its MTT-only row. Then the recipe drops the MMD term.
    recipe_with(mmd_weight=grid.modes.MMD_WHEN_DROPPED["mmd_weight"])
    both_digest, mtt_digest = scored("d3", 0.8), scored("d3-mtt-only", 0.9)
    recipe_with(mmd_weight=0.0)

    def never(*args, **kwargs):
        raise AssertionError("a cell with another row's settings was scored again")

    monkeypatch.setattr(sys.modules["benchmarks.grid.run"], "run_cell", never)
    monkeypatch.setattr(d3hf.distill.runner, "run_distillation", never)
    # D3's row first, alone: the record it replaces is set aside, where the both-terms row, run later, finds it.
    grid.run_grid(dataclasses.replace(mode, methods=("d3",)), max_minutes=None)
    assert os.listdir(os.path.join(mode.cells_dir, "superseded")) == [
        f"digits_ipc10_d3_seed0_P-noaug_convnet_{both_digest}.json"]
    grid.run_grid(mode, max_minutes=None)
    records = {r["method"]: r for r in grid.load_results(mode)}
    # D3 is now the MTT-only row's settings, the both-terms row D3's earlier ones: each takes that record.
    assert (records["d3"]["accuracy"], records["d3"]["settings_digest"]) == (0.9, mtt_digest)
    assert records["d3"]["same_as"] == "digits_ipc10_d3-mtt-only_seed0_P-noaug_convnet"
    assert (records["d3-both-terms"]["accuracy"], records["d3-both-terms"]["settings_digest"]) == (0.8, both_digest)
    assert "d3-mtt-only" not in records  # it is the recipe now: the D3 row scores it
    # ... and the builds behind them are kept under the rows' own names.
    for method, digest, made_by in (("d3", mtt_digest, "d3-mtt-only"), ("d3-both-terms", both_digest, "d3")):
        kept = os.path.join(mode.cells_dir, "builds", grid.build_name("digits", 10, method, 0, digest))
        with open(os.path.join(kept, grid.KEPT_ARTIFACT_FILES[0])) as f:
            assert f.read() == made_by
    assert grid.split_stale(mode, grid.load_results(mode))[1] == []


def test_the_report_names_every_ablation_that_scores_as_well_as_the_whole_method():
    cell = lambda mean: {"mean": mean, "std": 0.0, "n": 3, "storage": 1}  # noqa: E731
    panel = ("mnist5k", "P-noaug", "convnet")
    summary = {(*panel, "d3", 10): cell(0.963), (*panel, "d3-vae-only", 10): cell(0.969),
               (*panel, "d3-mtt-only", 10): cell(0.95), (*panel, "random", 10): cell(0.91),
               (*panel, "d3", 1): cell(0.945), (*panel, "d3-mmd-only", 1): cell(0.945)}
    text = "\n".join(grid.report._verdicts(summary))
    section = text.split("Ablations level with or ahead of the whole method:")[1]
    assert "ipc_budget 10: D3 warm start only (VAE fit, no MTT/MMD) 96.9 +- 0.0 (3) against D3 96.3" in section
    assert "ipc_budget 1: D3, MMD term only 94.5" in section and "MTT term only" not in section
    alone = "\n".join(grid.report._verdicts({(*panel, "d3", 10): cell(0.963), (*panel, "d3-vae-only", 10): cell(0.96)}))
    assert alone.split("Ablations level with or ahead of the whole method:")[1].strip() == "- none so far."


def test_the_report_judges_the_matching_phase_against_its_ablations_seed_by_seed():
    def cell(*accuracies):
        import numpy as np

        return {"mean": float(np.mean(accuracies)), "std": float(np.std(accuracies)), "n": len(accuracies),
                "storage": 1, "by_seed": dict(enumerate(accuracies))}

    fashion, mnist = ("fashion_mnist", "P-dsa", "convnet"), ("mnist5k", "P-noaug", "convnet")
    summary = {(*fashion, "d3", 1): cell(0.82, 0.81, 0.83), (*fashion, "d3-vae-only", 1): cell(0.80, 0.80, 0.80),
               (*fashion, "d3-mtt-only", 1): cell(0.79, 0.78, 0.79), (*fashion, "d3-mmd-only", 1): cell(0.79),
               (*fashion, "d3", 10): cell(0.84, 0.84, 0.84), (*fashion, "d3-vae-only", 10): cell(0.80, 0.80, 0.80),
               (*mnist, "d3", 1): cell(0.94, 0.95, 0.93), (*mnist, "d3-vae-only", 1): cell(0.95, 0.95, 0.94),
               (*mnist, "d3", 10): cell(0.97, 0.97, 0.97)}
    both = frozenset({"mtt", "mmd"})
    lines = grid.report._matching_verdicts(
        summary, lambda dataset, ipc: both if dataset == "fashion_mnist" or ipc == 1 else frozenset())
    by_panel = {line.split(":")[0]: line for line in lines if line.startswith("- ")}
    ipc1 = by_panel["- fashion_mnist, P-dsa, convnet, ipc_budget 1"]
    # +2.0 over the warm start but the spreads (0.82 +- 0.008 against 0.80 +- 0) hold it: met.
    assert "warm start only (VAE fit, no MTT/MMD) 80.0 +- 0.0 (3): +2.0, spreads apart by 1.18, seed by seed +2.0 / +1.0 / +3.0" in ipc1
    assert "(needed: +1.5 and spreads apart): met" in ipc1
    assert "MTT term only 78.7 +- 0.5 (3): +3.3" in ipc1 and "(needed: spreads apart): met" in ipc1
    assert "MMD term only 79.0 +- 0.0 (1): +3.0" in ipc1 and "not decided (1 of 3 seeds)" in ipc1
    ipc10 = by_panel["- fashion_mnist, P-dsa, convnet, ipc_budget 10"]
    assert "+4.0, spreads apart by 4.00" in ipc10 and ipc10.count("not scored yet") == 2
    # MNIST-5k asks only that D3 not fall below its warm start; its ipc 10 recipe has no matching.
    assert "-0.7, seed by seed -1.0 / +0.0 / -1.0 (needed: not below): MISSED" in by_panel["- mnist5k, P-noaug, convnet, ipc_budget 1"]
    assert "no matching phase at this budget" in by_panel["- mnist5k, P-noaug, convnet, ipc_budget 10"]
    # Overlapping spreads miss even with a lead in the mean.
    summary[(*fashion, "d3-mmd-only", 1)] = cell(0.80, 0.82, 0.83)
    ipc1 = "\n".join(grid.report._matching_verdicts(summary, lambda *_: both))
    assert "MMD term only 81.7 +- 1.2 (3): +0.3, spreads overlapping by 1.73" in ipc1 and "): MISSED" in ipc1
    # A recipe that dropped the MMD term: D3 is its MTT-only row (no verdict against itself), and the
    # terms together are judged on the both-terms row against it.
    lines = grid.report._matching_verdicts(summary, lambda dataset, ipc: frozenset({"mtt"}))
    ipc10 = next(line for line in lines if line.startswith("- fashion_mnist, P-dsa, convnet, ipc_budget 10"))
    assert "runs the MTT term alone" in ipc10 and "Against D3, MTT term only" not in ipc10
    assert "The terms together (D3, both terms (MTT + MMD)) against MTT alone: not scored yet." in ipc10
    summary[(*fashion, "d3-both-terms", 10)] = cell(0.835, 0.84, 0.83)
    ipc10 = "\n".join(grid.report._matching_verdicts(summary, lambda dataset, ipc: frozenset({"mtt"})))
    assert ("The terms together: D3, both terms (MTT + MMD) 83.5 +- 0.4 (3) against d3hf (D3) 84.0 +- 0.0 (3): -0.5, "
            "spreads overlapping by 0.91, seed by seed -0.5 / +0.0 / -1.0 (needed: spreads apart): MISSED.") in ipc10
    # A grid without those panels (a quick run on digits) has no such section.
    assert grid.report._matching_verdicts({("digits", "P-noaug", "convnet", "d3", 1): cell(0.9)}, lambda *_: both) == []


def test_the_targets_cover_fashion_mnist_under_the_published_protocol():
    cell = {"mean": 0.84, "std": 0.004, "n": 3, "storage": 1, "by_seed": {}}
    summary = {("fashion_mnist", "P-dsa", "convnet", "d3", 10): cell,
               ("fashion_mnist", "P-dsa", "convnet", "dm", 10): {**cell, "mean": 0.805}}
    text = "\n".join(grid.report._verdicts(summary, datasets=("fashion_mnist",)))
    assert ("fashion_mnist, P-dsa, convnet, ipc_budget 10: D3 84.0 +- 0.4 (3). Target >= 90 %: MISSED. "
            "Ahead of every baseline: met") in text
    assert "ipc_budget 1: D3 not scored under the current settings yet; target >= 85 %" in text
    assert "mnist5k" not in text.split("Panels where")[0]


def test_at_a_glance_sets_methods_side_by_side_and_bolds_the_best_stored_set():
    cell = lambda mean, n=3: {"mean": mean, "std": 0.01, "n": n, "storage": 1}  # noqa: E731
    summary = {("mnist5k", "P-noaug", "convnet", "d3", 1): cell(0.945),
               ("mnist5k", "P-noaug", "convnet", "dm", 1): cell(0.853),
               ("mnist5k", "P-noaug", "convnet", "full", grid.FULL_IPC): cell(0.984, n=1),
               ("mnist5k", "P-dsa", "resnet", "d3", 1): cell(0.90),
               ("mnist5k", "P-dsa", "resnet", "dm", 1): cell(0.92),
               ("mnist5k", "P-noaug", "convnet", "d3-vae-only", 1): cell(0.95)}
    text = "\n".join(grid.report._at_a_glance(summary, ["mnist5k"], [1]))
    table = text.split("### mnist5k, ipc_budget 1")[1].split("###")[0]
    assert "| method | P-noaug convnet | P-dsa resnet |" in table  # headline panel first
    assert "| d3hf (D3) | **94.5** +- 1.0 (3) | 90.0 +- 1.0 (3) |" in table
    assert "| DM (in-project) | 85.3 +- 1.0 (3) | **92.0** +- 1.0 (3) |" in table
    # The upper bound is shown (without a std of one seed), never bolded as the best stored set.
    assert "| all real train images | 98.4 (1) | - |" in table
    ablations = text.split("### mnist5k ablations, P-noaug convnet")[1]
    assert "| D3 warm start only (VAE fit, no MTT/MMD) | **95.0** +- 1.0 (3) |" in ablations
    assert "| d3hf (D3) | 94.5 +- 1.0 (3) |" in ablations and "| D3, MTT term only | - |" in ablations


def test_a_setting_added_later_keeps_the_digests_while_it_means_as_before():
    from d3hf.distill.config import ADDED_SETTINGS, DistillArguments

    base = DistillArguments(dataset="digits", decoder_family="nearest")
    before = {k: v for k, v in base.run_identity().items() if k not in ADDED_SETTINGS}  # as d3hf 0.1 wrote it
    from benchmarks.grid.builds import _digest

    assert grid.settings_digest(base) == _digest({**before, "iterations": base.matching.iterations})
    assert grid.settings_digest(base.replace(expert_epoch_rows=4000)) != grid.settings_digest(base)
    assert grid.settings_digest(base.replace(decoder_family="transpose")) != grid.settings_digest(base)


def test_the_peer_rows_are_found_beside_the_checkout_written_into_not_the_one_run_from(tmp_path):
    # A run from a worktree elsewhere (the code's checkout) writing into a checkout's benchmarks/
    # defines the same cells as a run from that checkout.
    out = tmp_path / "checkout" / "benchmarks"
    peer = tmp_path / "shared" / "peer-baselines"
    peer.mkdir(parents=True)
    (peer / "dm_digits_ipc1.npz").write_bytes(b"")
    mode = grid.Mode(name="t", datasets=("digits",), ipcs=(1, 10), methods=("peer",), seeds=1,
                     protocols=("P-noaug",), archs=("convnet",), out=str(out))
    assert mode.peer_dir == str(peer)
    assert [k[1] for k in grid.cells(mode)] == [1]  # only the budget whose images are there
    assert list(grid.cells(dataclasses.replace(mode, out=str(tmp_path / "deeper" / "checkout" / "benchmarks")))) == []
