"""Bad input through `d3hf distill`: exit code 2, one message naming the problem and the fix,
no traceback (unless --debug), and nothing half-written in output_dir."""

import io
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
import yaml
from PIL import Image

from d3hf.commands.cli import main
from tests.helpers import TINY


def image_bytes(rng, size=8, mode="L") -> dict:
    arr = rng.integers(0, 256, size=(size, size) if mode == "L" else (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode=None).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def save_dataset(path, images, labels, image_feature=None, label_feature=None) -> str:
    features = datasets.Features({"image": image_feature or datasets.Image(),
                                  "label": label_feature or datasets.ClassLabel(names=["a", "b", "c"])})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(str(path))
    return str(path)


def small_dataset(tmp_path, rng, n=30, **kwargs) -> str:
    labels = [i % 3 for i in range(n)]
    return save_dataset(tmp_path / "data", [image_bytes(rng) for _ in labels], labels, **kwargs)


def run(tmp_path, capsys, dataset, **overrides):
    """``d3hf distill`` on ``dataset`` with tiny settings; returns (exit code, stderr)."""
    out = tmp_path / "out"
    settings = {**TINY, "dataset": dataset, "output_dir": str(out), "ipc_budget": 10, "decoder": "1",
                "test_size": 0.3, "iterations": 2, **overrides}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(settings))
    code = main(["distill", str(cfg)])
    err = capsys.readouterr().err
    return code, err, out


def assert_refused(code, err, out, *fragments):
    assert code == 2
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if line.startswith("d3hf distill: error:")]
    assert len(message) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not out.exists() or not any(out.iterdir()), "a refused run must not leave output behind"


def test_unknown_dataset(tmp_path, capsys):
    assert_refused(*run(tmp_path, capsys, "no-such-dataset-anywhere"), "no-such-dataset-anywhere")


def test_missing_label_column(tmp_path, capsys, rng):
    data = small_dataset(tmp_path, rng)
    assert_refused(*run(tmp_path, capsys, data, label_column="target"), "no column 'target'", "label_column")


def test_label_column_of_floats(tmp_path, capsys, rng):
    labels = [float(i % 3) for i in range(30)]
    data = save_dataset(tmp_path / "data", [image_bytes(rng) for _ in labels], labels,
                        label_feature=datasets.Value("float32"))
    assert_refused(*run(tmp_path, capsys, data), "must hold integers or a ClassLabel")


def test_class_without_training_rows(tmp_path, capsys, rng):
    labels = [i % 2 for i in range(30)]  # ClassLabel names a, b, c: no row of "c"
    data = save_dataset(tmp_path / "data", [image_bytes(rng) for _ in labels], labels)
    assert_refused(*run(tmp_path, capsys, data), "['c'] have no training rows")


def test_class_without_training_rows_in_a_subtask(tmp_path, capsys, rng):
    labels = [i % 2 for i in range(30)]
    data = save_dataset(tmp_path / "data", [image_bytes(rng) for _ in labels], labels)
    assert_refused(*run(tmp_path, capsys, data, subtasks=[[0, 1], [2]]), "['c'] have no training rows")


def test_corrupt_image_bytes(tmp_path, capsys, rng):
    images = [image_bytes(rng) for _ in range(30)]
    images[7] = {"bytes": b"\x89PNG not really an image", "path": None}
    data = save_dataset(tmp_path / "data", images, [i % 3 for i in range(30)])
    assert_refused(*run(tmp_path, capsys, data, test_size=0.0), "Row 7 of the train split", "not a readable image")


def test_non_finite_pixel_values(tmp_path, capsys, rng):
    images = rng.random((30, 8, 8)).astype(np.float32)
    images[3, 2, 2] = np.nan
    data = save_dataset(tmp_path / "data", list(images), [i % 3 for i in range(30)],
                        image_feature=datasets.Array2D(shape=(8, 8), dtype="float32"))
    assert_refused(*run(tmp_path, capsys, data, test_size=0.0), "NaN or infinite")


def test_mixed_sizes_and_channels_are_resized_to_the_first_image(tmp_path, capsys, rng):
    """Documented behaviour: converted to the first training image's channels and size."""
    images = [image_bytes(rng) for _ in range(30)]
    images[4] = image_bytes(rng, size=12, mode="RGB")
    data = save_dataset(tmp_path / "data", images, [i % 3 for i in range(30)])
    code, err, out = run(tmp_path, capsys, data, test_size=0.0, eval_epochs=0)
    assert code == 0, err
    assert (out / "artifact" / "config.json").exists()


def test_budget_too_small_for_any_decoder(tmp_path, capsys):
    assert_refused(*run(tmp_path, capsys, "digits", ipc_budget=0.05, decoder="auto"), "smallest decoder",
                   "Raise ipc_budget")


def test_more_subtasks_than_classes(tmp_path, capsys):
    assert_refused(*run(tmp_path, capsys, "digits", num_subtasks=11), "num_subtasks (11) is larger")


@pytest.mark.parametrize("partition, problem", [([[0, 1, 2, 3, 4], [5, 6, 7, 8]], "missing [9]"),
                                                ([[0, 1, 2, 3, 4, 5], [5, 6, 7, 8, 9]], "repeated [5]")])
def test_explicit_partition_must_cover_each_class_once(tmp_path, capsys, partition, problem):
    assert_refused(*run(tmp_path, capsys, "digits", subtasks=partition), problem)


def test_unknown_key_and_wrong_type(tmp_path, capsys):
    assert_refused(*run(tmp_path, capsys, "digits", learning_rate=0.1), "Unknown config key(s) in", "learning_rate")
    assert_refused(*run(tmp_path, capsys, "digits", iterations="many"), "iterations")
    assert_refused(*run(tmp_path, capsys, "digits", init="pretrained"), "'init' must be one of ['vae', 'random']")
    assert_refused(*run(tmp_path, capsys, "digits", min_start_epoch=2, max_start_epoch=2),
                   "Need 0 <= min_start_epoch < max_start_epoch; got 2 and 2")


def test_output_location_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    code, err, _ = run(tmp_path, capsys, "digits", output_dir=str(blocker / "out"))
    assert code == 2 and "Traceback" not in err and "blocker" in err
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE + SIGXFSZ semantics")
@pytest.mark.integration
def test_full_disk_fails_cleanly_without_a_half_written_artifact(tmp_path):
    """A file-size limit makes every write past 64 KB fail with EFBIG, as a full disk fails with ENOSPC."""
    import resource
    import signal

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    out = tmp_path / "out"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "output_dir": str(out), "iterations": 2, "eval_epochs": 0}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "d3hf", "distill", str(cfg)], env=env, capture_output=True,
                          text=True, timeout=120, preexec_fn=limit_file_size)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "File too large" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "artifact").exists()
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".tmp-")]
    assert not leftovers


def test_test_label_never_seen_in_train(tmp_path, capsys, rng):
    def split(labels):
        return datasets.Dataset.from_dict({"image": [image_bytes(rng) for _ in labels], "label": labels},
                                          features=datasets.Features({"image": datasets.Image(),
                                                                      "label": datasets.Value("int64")}))

    # Integer labels that are not 0..n-1 are mapped through the train split's values; 8 is not one.
    data = datasets.DatasetDict({"train": split([5, 7, 9] * 10), "test": split([5, 7, 8])})
    data.save_to_disk(str(tmp_path / "data"))
    assert_refused(*run(tmp_path, capsys, str(tmp_path / "data"), test_size=0),
                   "Label value(s) [8] in column 'label' never occur in the train split")
