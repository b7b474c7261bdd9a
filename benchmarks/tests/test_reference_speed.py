"""benchmarks/reference_speed.py without the official checkout: the generated data, the expert
conversion, the timing split and the report from fake measurements; the measuring processes in
the integration lane (the official one only where D3_OFFICIAL names a checkout of it)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmarks import reference_speed as rs
from d3hf import load_image_classification
from d3hf.distill.experts import ExpertSettings, build_expert_buffer
from d3hf.distill.runner import build_config
from d3hf.modeling.decoders import family_spec
from d3hf.nn.networks import ConvNet

SMOKE = rs.PROFILES["smoke"]


def test_generated_images_are_fixed_by_the_seed_and_balanced():
    x, y = rs.generate_images((3, 32, 32), 200)
    x2, y2 = rs.generate_images((3, 32, 32), 200)
    assert x.dtype == np.uint8 and x.shape == (200, 3, 32, 32) and y.shape == (200,)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.array_equal(x, rs.generate_images((3, 32, 32), 200, seed=1)[0])
    assert np.bincount(y).tolist() == [20] * 10
    # The classes are told apart by their pattern: class means differ far more than noise.
    means = np.stack([x[y == c].astype(float).mean(0) for c in range(10)])
    assert np.abs(means[0] - means[1]).mean() > 10
    gray, _ = rs.generate_images((1, 28, 28), 30)
    assert gray.shape == (30, 1, 28, 28)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_both_sides_read_the_same_pixels(tmp_path, shape):
    info = rs.write_data(str(tmp_path), shape, 60, 20)
    assert info["shape"] == list(shape) and info["train_images"] == 60
    arrays = np.load(tmp_path / "arrays.npz")  # what the official side is given
    data = load_image_classification(str(tmp_path / "dataset"))  # what d3hf reads
    assert tuple(data.image_shape) == shape and len(data.labels()) == 60
    assert np.array_equal(data.images_uint8(np.arange(60)), arrays["train_x"])
    assert np.array_equal(data.labels(), arrays["train_y"])
    assert np.array_equal(data.images_uint8(np.arange(20), split="test"), arrays["test_x"])
    mean, std = rs.pixel_mean_std(arrays["train_x"])
    assert np.allclose(mean, data.normalization()[0], atol=1e-6) and np.allclose(std, data.normalization()[1], atol=1e-6)
    # Read as the official loop reads a torchvision dataset: normalised float image, int label.
    image, label = rs.GeneratedImages(arrays["train_x"], arrays["train_y"], mean, std)[3]
    assert image.shape == shape and label == int(arrays["train_y"][3])
    assert torch.allclose(image, (torch.from_numpy(arrays["train_x"][3]).float() / 255 - torch.tensor(mean).view(-1, 1, 1))
                          / torch.tensor(std).view(-1, 1, 1))


def test_the_d3hf_decoder_has_about_the_official_decoders_parameters(tmp_path):
    assert rs.official_decoder_parameters((3, 32, 32)) == 210_227  # the official code prints this count
    assert rs.official_decoder_parameters((1, 32, 32)) == 210_227 - 3 * 16 * 9 - 3 + 16 * 9 + 1
    for shape in ((3, 32, 32), (1, 28, 28)):
        width = rs.d3hf_decoder_width(shape)
        assert abs(family_spec(list(shape), rs.Z_DIM, width).num_parameters() / rs.official_decoder_parameters(shape)
                   - 1) < 0.03
    rs.write_data(str(tmp_path), (3, 32, 32), 40, 10)
    data = load_image_classification(str(tmp_path / "dataset"))
    for setting in (rs.SETTINGS["rgb32_w128_lpc1"], rs.SETTINGS["rgb32_w128_lpc10"]):
        args = rs.d3hf_arguments(setting, SMOKE, str(tmp_path / "dataset"))
        config = build_config(args, data)  # within its budget
        assert config.priors_per_class == setting.lpc and config.z_dim == rs.Z_DIM
        assert args.matching.samples_per_class == setting.lpc and args.matching.mmd_samples == 30
        assert args.matching.syn_steps == 10 and args.matching.expert_epochs == 2
        assert args.experts.student_width == setting.width


def test_official_names_and_folders():
    assert rs.official_model_name(128) == "ConvNet" and rs.official_model_name(32) == "ConvNetW32"
    assert rs.official_expert_dir("/b", (3, 32, 32), 32) == os.path.join("/b", "CIFAR10_NO_ZCA", "ConvNetW32")
    assert rs.official_expert_dir("/b", (1, 28, 28), 128) == os.path.join("/b", "MNIST", "ConvNet")
    assert rs.official_im_size((1, 28, 28)) == (32, 32) and rs.official_im_size((3, 32, 32)) == (32, 32)
    argv = rs.official_argv(rs.SETTINGS["rgb32_w128_lpc10"], 2, 8, "/b")
    assert argv[argv.index("--Iteration") + 1] == "9"  # the loop runs Iteration + 1 iterations
    assert argv[argv.index("--lpc") + 1] == "10" and "--load_all" in argv and argv[argv.index("--num_eval") + 1] == "0"


def test_experts_convert_to_the_official_per_tensor_lists(tmp_path):
    rs.write_data(str(tmp_path / "data"), (3, 32, 32), 40, 10)
    data = load_image_classification(str(tmp_path / "data" / "dataset"))
    settings = ExpertSettings(num_experts=2, epochs=4, keep_epochs=4, batch_size=16, depth=3, width=4)
    buffer = build_expert_buffer(data, settings, str(tmp_path / "experts"), show_progress=False)
    net = ConvNet(data.image_shape, 10, 3, 4)
    shapes = [s for _, s in rs.named_shapes(net)]
    trajectories = rs.convert_buffer(buffer, shapes)
    assert len(trajectories) == 2 and all(len(t) == 5 for t in trajectories)  # epochs 0..4, as buffer.py saves
    for e in range(2):
        for epoch in range(5):
            tensors = trajectories[e][epoch]
            assert [tuple(t.shape) for t in tensors] == shapes
            assert torch.equal(torch.cat([t.reshape(-1) for t in tensors]), buffer.snapshot(e, epoch))
    with pytest.raises(ValueError, match="does not fill"):
        rs.split_flat(torch.zeros(10), [(2, 3)])

    class Gappy:  # a buffer that keeps only some epochs cannot be given to the official loop
        kept_epochs = [0, 1, 4]

        def final_epoch(self):
            return 4

    with pytest.raises(ValueError, match="every epoch"):
        rs.convert_buffer(Gappy(), shapes)


def test_layout_differences_name_each_tensor_and_convolution():
    a = ConvNet((1, 28, 28), 10, 3, 8)
    b = ConvNet((1, 32, 32), 10, 3, 8)
    assert rs.layout_differences(rs.named_shapes(a), rs.named_shapes(a)) == []
    lines = rs.layout_differences(rs.named_shapes(b), rs.named_shapes(a))
    assert lines == ["tensor 12: official classifier.weight [10, 128], d3hf classifier.weight [10, 72]"]
    assert rs.layout_differences(rs.named_shapes(a)[:-1], rs.named_shapes(a))[0].startswith("tensor 13: official none")
    b.features[0].padding = (3, 3)
    assert rs.conv_differences(b, a) == ["convolution 0: official padding (3, 3), d3hf padding (1, 1)"]


def _events(*marks):
    """Marks at the given (wall, cpu) times: ("name", wall, cpu)."""
    return [tuple(m) for m in marks]


def test_d3hf_iterations_split_into_parts():
    events = _events(("iteration>", 0, 0), ("mtt>", 0.1, 0.1), ("mtt<", 1.1, 1.0), ("mmd>", 1.1, 1.0),
                     ("mmd<", 1.6, 1.5), ("backward>", 1.7, 1.6), ("backward<", 3.7, 3.5), ("iteration<", 4.0, 3.8),
                     ("iteration>", 4.0, 3.8), ("mtt>", 4.0, 3.8), ("mtt<", 5.0, 4.8), ("iteration<", 5.5, 5.0))
    first, second = rs.d3hf_iterations(events)
    assert first["wall_s"] == pytest.approx(4.0) and first["cpu_s"] == pytest.approx(3.8)
    assert first["mtt_forward_cpu_s"] == pytest.approx(0.9) and first["mmd_forward_cpu_s"] == pytest.approx(0.5)
    assert first["backward_cpu_s"] == pytest.approx(1.9) and first["other_cpu_s"] == pytest.approx(0.5)
    assert second["mmd_forward_wall_s"] == 0 and second["other_wall_s"] == pytest.approx(0.5)
    assert rs.medians([first, second])["cpu_s"] == pytest.approx((3.8 + 1.2) / 2)


def test_official_iterations_split_between_its_logs_and_backward_passes():
    one = [("iteration>", 0, 0), ("student>", 0.1, 0.1), ("student<", 0.3, 0.3), ("backward>", 1.3, 1.2),
           ("backward<", 2.3, 2.0), ("mtt_logged", 2.4, 2.1), ("backward>", 3.4, 3.0), ("backward<", 4.4, 3.9)]
    events = _events(*one, *[(n, w + 5, c + 5) for n, w, c in one], ("run<", 10.0, 9.5))
    first, second = rs.official_iterations(events)
    assert first["wall_s"] == pytest.approx(5.0) and second["cpu_s"] == pytest.approx(4.5)
    assert first["mtt_forward_wall_s"] == pytest.approx(1.0)  # from the new student to the MTT backward
    assert first["mmd_forward_wall_s"] == pytest.approx(1.0)  # from the MTT update's log to the MMD backward
    assert first["backward_wall_s"] == pytest.approx(2.0)
    assert first["other_wall_s"] == pytest.approx(1.0)  # student, optimiser steps, the end of the iteration
    assert second["other_cpu_s"] == pytest.approx(4.5 - 0.9 - 0.9 - 1.7)


def fake_record(setting, side, repeat, cpu):
    its = [{**{f"{p}_{k}_s": cpu / 4 for p in rs.PARTS for k in ("cpu", "wall")}, "cpu_s": cpu, "wall_s": cpu * 1.1}
           for _ in range(4)]
    record = {"side": side, "setting": setting, "repeat": repeat, "warmup": 1, "timed": 3, "allocator": "native",
              "iterations": [{**its[0], "cpu_s": 99.0}] + its[1:], "median": rs.medians(its[1:]),
              "peak_rss_mb": 1000.0 + 500 * (side == "d3hf") + repeat, "rss_before_loop_mb": 300.0,
              "load_average_at_start": 0.1, "train_images": 4000, "torch_threads": 1,
              "decoder": {"what": f"{side} decoder", "params": 210_227 if side == "official" else 207_155,
                          "mflops_per_image": 6.2 if side == "official" else 48.1},
              "student": {"params": 320_010, "mflops_per_image": 101.5}}
    if side == "official":
        record |= {"patches": ["`torch.Tensor.cuda` returns the tensor itself"], "instrumentation": ["timers"],
                   "argv": ["--lpc", "1", "--buffer_path", os.path.join(rs.REPO, "benchmarks", "cache", "x")],
                   "official_commit": "aebb309",
                   "experts": {"official": [["features_a.0.weight", [8]]], "d3hf": [["features.0.weight", [8]]],
                               "differences": [] if not setting.startswith("gray") else ["tensor 12: official ..."],
                               "max_logit_difference": 0.0, "experts": "converted"}}
    else:
        record |= {"checkpoint_steps": False, "d3hf_settings": {"mmd_kernel_scale": "median", "lr_priors": 1.0}}
    return record


MACHINE = {"cpu": "Test CPU 9000", "cores": 2, "torch": "2.x", "cpu_capability": "AVX2", "torch_threads": 1}


def test_summary_from_fake_records():
    cells = {}
    for name in rs.SETTINGS:
        for repeat in range(2):
            for side, cpu in (("official", 4.0 + repeat), ("d3hf", 2.0)):
                cells.setdefault((name, side), []).append(fake_record(name, side, repeat, cpu))
    for record in cells[("rgb32_w32_lpc1", "d3hf")]:
        record["peak_rss_mb"] = 900.0  # below every official run's: this setting reaches the goal
    text = rs.summary(cells, "python benchmarks/reference_speed.py --official PATH", MACHINE)
    assert "- 32x32x3, width 128, 1 prior per class: NOT reached (ratio 0.44; peak RSS above the official's)" in text
    assert "- 32x32x3, width 32, 1 prior per class: reached (ratio 0.44; peak RSS at most the official's)" in text
    assert "Test CPU 9000 (AVX2), 2 cores" in text and "aebb309" in text
    # Pooled median of the timed iterations: official 4.0 and 5.0 (3 each) -> 4.5; warm-ups left out.
    assert "| 32x32x3, width 128, 1 prior per class | 4.50 | 2.00 | 0.44 (4.00-5.00 / 2.00) | 4.95 / 2.20 | " \
           "1000-1001 / 1500-1501 | 300 / 300 |" in text
    assert "| 28x28x1, width 128, 1 prior per class |" in text
    assert "| 32x32x3, width 32, 1 prior per class | official | 1.12 | 1.12 | 1.12 | 1.12 | 4.50 |" in text
    assert "| 210,227 / 207,155 | 6.2 / 48.1 |" in text
    assert "identical logits" in text and "differ: tensor 12" in text
    assert "- `torch.Tensor.cuda` returns the tensor itself" in text
    assert "--buffer_path benchmarks/cache/x" in text  # repository paths shown relative
    assert text.count("| 32x32x3, width 128, 10 priors per class |") == 4  # speed, parts of each side, models
    assert "## What differs between the two runs" in text and "`--allocator native`" in text


def test_summary_waits_for_both_sides():
    cells = {("rgb32_w32_lpc1", "d3hf"): [fake_record("rgb32_w32_lpc1", "d3hf", 0, 1.0)]}
    assert "No setting has both sides measured yet" in rs.summary(cells, "cmd", MACHINE)


def cache_cells(tmp_path, run_tag: str, setting, d3hf_extra: dict | None = None) -> None:
    """Data, both sides' experts and one cell per side of ``setting``, as a finished run leaves them."""
    paths = rs.Paths(str(tmp_path), rs.PROFILES["full"], run_tag)
    os.makedirs(paths.data(setting.data_key), exist_ok=True)
    (tmp_path / "full" / "data" / setting.data_key / "info.json").write_text("{}")
    for side, marker in (("d3hf", "settings.json"), ("official", "layout.json")):
        os.makedirs(os.path.join(paths.experts(setting.experts_key), side), exist_ok=True)
        open(os.path.join(paths.experts(setting.experts_key), side, marker), "w").close()
    for side, cpu in (("official", 3.0), ("d3hf", 1.0)):
        os.makedirs(os.path.dirname(paths.cell(setting.name, side, 0)), exist_ok=True)
        with open(paths.cell(setting.name, side, 0), "w") as f:
            json.dump(fake_record(setting.name, side, 0, cpu) | (d3hf_extra or {} if side == "d3hf" else {}), f)


def test_the_default_mode_reads_cached_cells_and_writes_the_summary(tmp_path, monkeypatch):
    """Every cell cached: no process is started, no official checkout is needed."""
    setting = rs.SETTINGS["rgb32_w32_lpc1"]
    cache_cells(tmp_path, "w1-t3-native", setting)
    monkeypatch.setattr(rs, "in_fresh_process", lambda *a, **k: pytest.fail("a cached step ran again"))
    monkeypatch.setattr(rs, "machine", lambda: MACHINE)
    out = tmp_path / "summary.md"
    rs.main(["--cache", str(tmp_path), "--settings", setting.name, "--warmup", "1", "--timed", "3", "--repeats", "1",
             "--out", str(out)])
    text = out.read_text()
    assert "| 32x32x3, width 32, 1 prior per class | 3.00 | 1.00 | 0.33 |" in text
    assert "--settings rgb32_w32_lpc1" in text and "--warmup 1" in text
    with pytest.raises(SystemExit, match="--official PATH is needed"):  # a missing official cell needs the checkout
        rs.main(["--cache", str(tmp_path), "--settings", setting.name, "--warmup", "1", "--timed", "3", "--repeats",
                 "2", "--out", str(out)])
    with pytest.raises(SystemExit, match="unknown setting"):
        rs.main(["--cache", str(tmp_path), "--settings", "rgb32_w7_lpc1"])


def test_d3hf_settings_changed_are_cached_apart_and_named_in_the_summary(tmp_path, monkeypatch):
    assert rs.parse_settings("mixed_precision=bf16, checkpoint_steps=true", "--d3hf") == {
        "mixed_precision": "bf16", "checkpoint_steps": "true"}
    with pytest.raises(SystemExit, match="--d3hf: 'bf16' is not KEY=VALUE"):
        rs.parse_settings("bf16", "--d3hf")
    setting = rs.SETTINGS["rgb32_w32_lpc1"]
    cache_cells(tmp_path, "w1-t3-native-mixed_precision-bf16", setting,
                {"overrides": {"mixed_precision": "bf16"}, "mmd_chunk_classes": 6})
    monkeypatch.setattr(rs, "in_fresh_process", lambda *a, **k: pytest.fail("a cached step ran again"))
    monkeypatch.setattr(rs, "machine", lambda: MACHINE)
    out = tmp_path / "summary.md"
    args = ["--cache", str(tmp_path), "--settings", setting.name, "--warmup", "1", "--timed", "3", "--repeats", "1",
            "--out", str(out)]
    rs.main(args + ["--d3hf", "mixed_precision=bf16"])  # the cells of its own run tag, none started
    text = out.read_text()
    assert "d3hf runs with `mixed_precision: bf16` (the official code as always)" in text
    assert "--d3hf mixed_precision=bf16" in text and "(32x32x3, width 32, 1 prior per class: 6)" in text
    with pytest.raises(SystemExit, match="--official PATH is needed"):  # the plain run's cells are not these
        rs.main(args)


@pytest.mark.integration
def test_stubs_stand_in_for_missing_imports_only():
    code = (
        "import sys, inspect, importlib\n"
        "from benchmarks import reference_speed as rs\n"
        "missing = [m for m in rs.OPTIONAL_IMPORTS if importlib.util.find_spec(m.split('.')[0]) is None]\n"
        "patches = rs.install_stubs()\n"
        "assert len(patches) == len(missing), (patches, missing)\n"
        "from torchvision import datasets, transforms\n"
        "import torchvision.utils, kornia\n"
        "from einops import rearrange\n"
        "from einops.layers.torch import Rearrange\n"
        "from scipy.ndimage.interpolation import rotate\n"
        "inspect.getmodule(rs)  # walks sys.modules: stubs must not answer __file__\n"
        "if 'torchvision' in ' '.join(patches):\n"
        "    try:\n"
        "        datasets.CIFAR10('x')\n"
        "        raise SystemExit('a stub was usable')\n"
        "    except RuntimeError as err:\n"
        "        assert 'stub' in str(err)\n"
        "print('ok', len(patches))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=rs.REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")


@pytest.mark.integration
def test_a_d3hf_measurement_runs_in_a_fresh_process(tmp_path):
    setting = rs.SETTINGS["rgb32_w32_lpc1"]
    paths = rs.Paths(str(tmp_path), SMOKE, "w1-t1-native")
    flags = ["--smoke", "--warmup", "1", "--timed", "1", "--cache", str(tmp_path)]
    rs.ensure_data(paths, setting, SMOKE)
    rs.in_fresh_process(["--experts", "d3hf", setting.name], flags, str(tmp_path / "experts.log"))
    out = rs.in_fresh_process(["--cell", "d3hf", setting.name, "0"], flags, str(tmp_path / "cell.log"))
    record = json.loads(out.strip().splitlines()[-1])
    assert record["side"] == "d3hf" and record["torch_threads"] == 1 and len(record["iterations"]) == 2
    assert record["decoder"]["params"] == family_spec([3, 32, 32], rs.Z_DIM, rs.d3hf_decoder_width((3, 32, 32))) \
        .num_parameters()
    assert "4x4 stride-2 transposed conv" in record["decoder"]["what"]  # the default family, described as built
    it = record["iterations"][1]
    assert it["cpu_s"] > 0 and it["mtt_forward_cpu_s"] > 0 and it["mmd_forward_cpu_s"] > 0 and it["backward_cpu_s"] > 0
    assert sum(it[f"{p}_wall_s"] for p in rs.PARTS) == pytest.approx(it["wall_s"])
    assert record["peak_rss_mb"] >= record["rss_before_loop_mb"] > 0


@pytest.mark.integration
@pytest.mark.skipif(not os.environ.get("D3_OFFICIAL"), reason="D3_OFFICIAL names no checkout of the official code")
def test_both_sides_run_on_the_official_checkout(tmp_path):
    out = tmp_path / "summary.md"
    rs.main(["--smoke", "--official", os.environ["D3_OFFICIAL"], "--settings", "rgb32_w32_lpc1", "--warmup", "1",
             "--timed", "1", "--cache", str(tmp_path), "--out", str(out)])
    text = out.read_text()
    assert "| 32x32x3, width 32, 1 prior per class |" in text and "identical logits" in text
    assert "`torch.Tensor.cuda` returns the tensor itself" in text
