"""benchmarks/recipe_sweep.py: variants, cell names and the report (no distillation run)."""

import json

import pytest

from benchmarks import recipe_sweep
from benchmarks.cells import parse_settings


def test_variants_are_distill_keys_and_the_sweep_keeps_its_own():
    def parse(text):
        return parse_settings(text, "--variants", recipe_sweep.SET_BY_THE_SWEEP)

    assert parse("syn_steps=20, expert_epoch_rows=0") == {"syn_steps": "20", "expert_epoch_rows": "0"}
    assert parse("") == {}
    for bad in ("nonsense=1", "syn_steps"):
        with pytest.raises(SystemExit, match="is not KEY=VALUE with a distillation key"):
            parse(bad)
    for bad in ("seed=3", "output_dir=x"):
        with pytest.raises(SystemExit, match="set by the benchmark itself"):
            parse(bad)
    assert recipe_sweep.sweep_variants("syn_steps=20;iterations=0") == [{}, {"syn_steps": "20"}, {"iterations": "0"}]
    assert recipe_sweep.sweep_variants("iterations=0", variants_only=True) == [{"iterations": "0"}]
    with pytest.raises(SystemExit, match="needs at least one variant"):
        recipe_sweep.sweep_variants(" ", variants_only=True)
    assert recipe_sweep.cell_name({}, 0, 0.1, 2) == "recipe_seed0_val0.1_eval2"
    assert recipe_sweep.cell_name({"b": "2", "a": "1"}, 1, 0.25, 1) == "a=1,b=2_seed1_val0.25_eval1"


def test_a_cell_names_the_threads_its_run_used_not_the_machines_cores(tmp_path):
    on = {"device_name": "Intel(R) Xeon(R) Processor", "torch_threads": 1}
    assert recipe_sweep.threads_text(on) == "Intel(R) Xeon(R) Processor, 1 thread"
    assert recipe_sweep.threads_text({**on, "torch_threads": 2}) == "Intel(R) Xeon(R) Processor, 2 threads"
    # A finished run's folder, as `d3hf distill` leaves it, read by the cell (the command is a no-op).
    run = tmp_path / "run"
    (run / "artifact").mkdir(parents=True)
    row = {"method": "d3hf artifact", "split": "validation", "accuracies": [0.8], "notes": "P-noaug",
           "measured_on": {**on, "torch_threads": 3}}
    (run / "summary.json").write_text(json.dumps({
        "evaluation": {"results": [row]}, "ledger": {"ipc_equivalent": 0.955},
        "subtasks": [{"timings": {"experts_s": 1.0}}], "timings": {"total_s": 2.0}}))
    (run / "artifact" / "config.json").write_text(json.dumps(
        {"priors_per_class": 4, "z_dim": 8, "decoders": [{"channels": [16, 8]}]}))
    record = recipe_sweep.run_cell(["true", "--output_dir", str(run)], str(tmp_path / "cell.log"))
    assert record["cpu"] == "Intel(R) Xeon(R) Processor, 3 threads" and record["accuracies"] == [0.8]


def test_a_recipe_whose_settings_change_is_a_sweep_of_its_own(tmp_path, monkeypatch):
    recipe = tmp_path / "ipc1.yaml"
    recipe.write_text("# header\ndataset: digits\nsyn_steps: 5\n")
    first = recipe_sweep.sweep_name(str(recipe))
    recipe.write_text("# another header\ndataset: digits\nsyn_steps: 5\n")
    assert recipe_sweep.sweep_name(str(recipe)) == first  # comments do not count
    recipe.write_text("dataset: digits\nsyn_steps: 6\n")
    assert recipe_sweep.sweep_name(str(recipe)) != first and first.startswith("digits_ipc1_")
    changed = recipe_sweep.sweep_name(str(recipe))
    monkeypatch.setitem(recipe_sweep.ADDED_SINCE_FIRST_SWEEP, "eval_every", 5)  # as if it were added at 5
    assert recipe_sweep.sweep_name(str(recipe)) != changed  # a later setting leaves the digest only at its old value


def test_the_report_pools_seeds_per_variant_and_names_paths_from_the_root():
    record = {"recipe": "recipes/x/ipc1.yaml", "variant": "recipe", "seed": 0, "validation_size": 0.1,
              "accuracies": [0.8, 0.82], "lpc": 4, "channels": [[16, 8]], "ipc_equivalent": 0.955, "experts_s": 60.0,
              "warm_start_s": 80.0, "s_per_iteration": 1.4, "evaluate_s": 300.0, "total_s": 1200.0,
              "cpu": "AMD EPYC, 2 threads",
              "command": "d3hf distill r.yaml --output_dir /somewhere/repo/benchmarks/cache/recipe_sweep/x/runs/a"}
    text = recipe_sweep.report({"x_ipc1_abc": [record, {**record, "seed": 1, "accuracies": [0.84]},
                                               {**record, "variant": "iterations=0", "accuracies": [0.7]}]})
    assert "| recipe | 0, 1 | 82.00 +- 1.63 |" in text and "| iterations=0 | 0 | 70.00 +- 0.00 |" in text
    assert "--output_dir benchmarks/cache/recipe_sweep/x/runs/a" in text and "/somewhere" not in text


def test_sections_of_the_earlier_report_without_records_here_are_kept_as_written():
    record = {"recipe": "recipes/x/ipc1.yaml", "variant": "recipe", "seed": 0, "validation_size": 0.1,
              "accuracies": [0.9], "lpc": 4, "channels": [[16, 8]], "ipc_equivalent": 0.955, "cpu": "c",
              "command": "d3hf distill r.yaml"}
    earlier = recipe_sweep.report({"a_ipc1_1": [{**record, "accuracies": [0.5]}], "c_ipc1_3": [record]})
    text = recipe_sweep.merged(recipe_sweep.report({"b_ipc1_2": [record], "a_ipc1_1": [record]}), earlier)
    assert text.index("## a_ipc1_1") < text.index("## b_ipc1_2") < text.index("## c_ipc1_3")  # by name
    assert text.count("## ") == 3 and text.count("Command: `python benchmarks/recipe_sweep.py") == 1
    assert "| recipe | 0 | 90.00 +- 0.00 |" in text.split("## b_ipc1_2")[0]  # a section with records is redrawn
    assert text.rstrip().endswith("(see its docstring).")
    assert recipe_sweep.merged(text, text) == text and recipe_sweep.merged(text, None) == text


def test_a_cell_with_a_validation_curve_is_listed_and_drawn(tmp_path):
    record = {"recipe": "recipes/x/ipc1.yaml", "variant": "eval_every=250,iterations=500", "seed": 0,
              "validation_size": 0.1, "accuracies": [0.8], "lpc": 4, "channels": [[16, 8]], "ipc_equivalent": 0.955,
              "cpu": "AMD EPYC, 2 threads", "command": "d3hf distill r.yaml",
              "curve": [[0, 0.75, 0.99, 0.95], [250, 0.78, 0.97, 0.95], [500, 0.801, 0.96, 0.94]]}
    text = recipe_sweep.report({"x_ipc1_abc": [record]})
    assert "- eval_every=250,iterations=500 seed 0: 0: 75.0 (0.990 / 0.950), 250: 78.0" in text
    assert "500: 80.1 (0.960 / 0.940)" in text and "recipe_sweep_x_ipc1_abc.png" in text
    png = recipe_sweep.plot_curves("x_ipc1_abc", [record], str(tmp_path / "c.png"))
    assert png and (tmp_path / "c.png").stat().st_size > 1000
    assert recipe_sweep.plot_curves("x", [{**record, "curve": []}], str(tmp_path / "none.png")) is None


def test_a_variant_with_a_validation_curve_is_parsed_with_the_sweeps_validation_split(tmp_path):
    recipe = tmp_path / "ipc1.yaml"
    recipe.write_text("dataset: digits\n")
    cmd = recipe_sweep.command(str(recipe), {"eval_every": "50"}, 0, str(tmp_path), 0.1, 2)  # refused without it
    assert cmd[cmd.index("--eval_every") + 1] == "50" and cmd[cmd.index("--validation_size") + 1] == "0.1"


def test_the_matching_summary_reads_the_last_fifth_and_the_final_drift():
    rows = [{"phase": "distill", "iteration": i, "mtt": 1.0 if i <= 80 else 0.5, "mmd": 0.01, "step_size": 0.01 * i,
             "prior_std_mean": 0.4, "drift_prior_means": i / 100, "drift_decoder": i / 200, "grad_norm_mtt": 2.0,
             "grad_norm_mmd": 1.0} for i in range(20, 101, 20)]
    summary = recipe_sweep.matching_summary([{"phase": "curve", "iteration": 0}, *rows])
    assert summary == {"iterations": 100, "mtt": 0.5, "mmd": 0.01, "step_size": 1.0, "prior_std": 0.4,
                       "drift_prior_means": 1.0, "drift_decoder": 0.5, "grad_ratio": 2.0}
    assert recipe_sweep.matching_summary([]) is None


def test_a_cell_is_rescored_on_its_own_validation_split_and_never_on_test(tmp_path, monkeypatch):
    from d3hf.distill.config import DataArguments
    from d3hf.distill.runner import load_data
    from d3hf.evaluation.protocols import named_protocol
    from d3hf.evaluation.training import evaluate, model_source
    from tests.helpers import make_model

    root = tmp_path / "sweep"
    run = root / "runs" / "recipe_seed0_val0.25_eval1"
    model = make_model(distillation={"seed": 3, "dataset": "digits", "validation_size": 0.25})
    model.save_pretrained(str(run / "artifact"))
    record = {"variant": "recipe", "seed": 0, "accuracies": [0.5],
              "command": f"d3hf distill r.yaml --output_dir {run}"}
    got = recipe_sweep.rescore(str(run), "P-dsa", 1, epochs=2)
    assert got["split"] == "validation" and got["protocol"] == "P-dsa[epochs=2]" and got["network"] == 1
    # the split the run carved (its seed, its share), the network its own evaluation numbers 1
    data = load_data(DataArguments(dataset="digits", validation_size=0.25), seed=3)
    protocol = named_protocol("P-dsa", epochs=2)
    expected = evaluate(lambda s: model_source(model, protocol.num_per_class, s), data, protocol, 2)
    assert got["accuracies"] == expected["accuracies"][1:]
    kept = tmp_path / "kept"
    first = recipe_sweep.rescore_record(str(root), str(kept), record, "P-noaug", 0, epochs=1)
    # a cell per protocol as trained: its changed fields are in the name
    assert (kept / "rescored" / "recipe_seed0_val0.25_eval1__P-noaug[epochs=1]__net0.json").exists()
    assert len(first["accuracies"]) == 1 and first["variant"] == "recipe"
    # its training's finished state goes once the record is kept
    assert list((root / "rescoring").rglob("*.pt")) == []
    monkeypatch.setattr(recipe_sweep, "rescore", lambda *a, **k: pytest.fail("a scored network is scored again"))
    assert recipe_sweep.rescore_record(str(root), str(kept), record, "P-noaug", 0, epochs=1) == first
    text = recipe_sweep.report({"x": [{**record, "validation_size": 0.25, "lpc": 2, "channels": [[4]],
                                       "ipc_equivalent": 1.0, "cpu": "c"}]},
                               {"x": [{**record, **got, "accuracies": [0.6, 0.7]}]})
    assert "The same artifacts under P-dsa[epochs=2]" in text and "| recipe | 0 | 2 | 65.00 +- 5.00 |" in text
    monkeypatch.undo()
    bracketed = recipe_sweep.rescore_record(str(root), str(kept), record, "P-noaug[epochs=1,num_per_class=3]", 0)
    assert bracketed["protocol"] == "P-noaug[epochs=1,num_per_class=3]" and bracketed != first
    assert (kept / "rescored" / "recipe_seed0_val0.25_eval1__P-noaug[epochs=1,num_per_class=3]__net0.json").exists()
    with pytest.raises(SystemExit):  # refused before anything is distilled
        recipe_sweep.main(["recipes/digits/quick.yaml", "--protocol", "P-noaug[epoch=1]", "--out", str(tmp_path)])
    no_validation = tmp_path / "test_only"
    make_model(distillation={"seed": 0, "dataset": "digits"}).save_pretrained(str(no_validation / "artifact"))
    with pytest.raises(SystemExit, match="never scores on test"):
        recipe_sweep.rescore(str(no_validation), "P-dsa", 0, epochs=1)
