"""The scale and decoder-family benchmarks: their commands and reports (the cells are measurements)."""

from benchmarks import decoder_family, scale


def test_decoder_family_cells_run_the_recipe_on_a_validation_split():
    cmd = decoder_family.command("ipc10", "transpose", 2, eval_seeds=3)
    assert cmd[1] == "distill" and cmd[2].endswith("recipes/mnist5k/ipc10.yaml")
    flags = dict(zip(cmd[3::2], cmd[4::2]))
    assert flags["--decoder_family"] == "transpose" and flags["--validation_size"] == "0.25"
    assert flags["--seed"] == "2" and flags["--eval_seeds"] == "3"
    assert flags["--output_dir"].endswith("ipc10_transpose_seed2")


def test_decoder_family_report_has_one_row_per_cell():
    record = {"recipe": "ipc1", "family": "transpose", "seed": 0, "split": "validation", "accuracies": [0.9, 0.92],
              "channels": [16, 8, 4, 2, 2], "lpc": 4, "ledger": {"ipc_equivalent": 0.955}, "decoder_mflops": 0.1,
              "s_per_iteration": 1.2, "warm_start_s": 90, "total_s": 900, "cpu": "AMD EPYC", "command": "d3hf ..."}
    text = decoder_family.report([record, {**record, "family": "nearest", "accuracies": [0.95]}])
    assert "| ipc1 | transpose | 0 | [16, 8, 4, 2, 2] | 4 | 0.955 | 0.10 | 1.20 | 90 | 900 | 91.0 +- 1.0 |" in text
    assert "| ipc1 | nearest |" in text and "95.0 +- 0.0" in text


def test_scale_report_shows_each_figure_and_its_growth():
    small = {"cpu": "AMD EPYC", "torch_threads": 2, "rows": 4000, "load_cold_s": 2.0, "s_per_iteration": 1.0,
             "peak_rss_mb": 1000.0}
    large = {**small, "rows": 60000, "load_cold_s": 6.0, "s_per_iteration": 1.1, "peak_rss_mb": 1500.0}
    text = scale.report({"mnist5k": small, "fashion_mnist": large})
    assert "| train rows | 4,000 | 60,000 | 15x |" in text
    assert "| one matching iteration (s) | 1.00 | 1.10 | 1.1x |" in text
    assert "| one DM iteration, 10 per class (s) | n/a | n/a |" in text
