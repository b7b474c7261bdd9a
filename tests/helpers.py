"""What several test modules share: tiny settings, tiny artifacts, two-process launches."""

import os
import socket
import subprocess
import sys

import datasets
import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from d3hf import D3Config, D3Model, family_spec
from d3hf.distill.config import DistillArguments
from d3hf.distill.distiller import Distiller
from d3hf.distill.runner import build_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCELERATE_CONFIGS = os.path.join(REPO, "recipes", "accelerate_configs")

# ----------------------------------------------------------------------------- settings

# A tiny distillation on digits (8x8 grayscale, 10 classes): two short experts, three unrolled steps.
TINY = dict(
    dataset="digits",
    ipc_budget=10.0,
    decoder="2",
    num_experts=2,
    expert_epochs_total=4,
    max_start_epoch=2,
    expert_epochs=1,
    student_depth=2,
    student_width=8,
    syn_steps=3,
    samples_per_class=2,
    mmd_samples=4,
    iterations=50,
    init_steps=40,
    eval_epochs=0,
    checkpoint_every=0,
    log_every=0,
)

# TINY for the command line: the iteration count left to each test, one CPU thread, a brief
# evaluation and a checkpoint every iteration.
CLI_TINY = {k: v for k, v in TINY.items() if k != "iterations"} | dict(
    ipc_budget=10,
    num_experts=1,
    expert_epochs_total=3,
    max_start_epoch=1,
    syn_steps=2,
    eval_epochs=2,
    eval_num_per_class=5,
    eval_seeds=1,
    cpu=True,
    num_threads=1,
    checkpoint_every=1,
    log_every=1,
)

# Two subtasks of 5 digits classes each; decoder width 1 fits each subtask's share of ipc 10.
SUBTASK_RUN = {**TINY, "num_subtasks": 2, "decoder": "1", "num_experts": 1, "expert_epochs_total": 3,
               "max_start_epoch": 1, "syn_steps": 2, "iterations": 3, "num_threads": 1}


def tiny_args(**overrides) -> DistillArguments:
    return DistillArguments(**{**TINY, **overrides})


def write_config(path, output_dir, base: dict = CLI_TINY, **overrides) -> str:
    """A recipe file at ``path``: ``base`` (CLI_TINY) with ``output_dir`` and ``overrides``."""
    path.write_text(yaml.safe_dump({**base, "output_dir": str(output_dir), **overrides}))
    return str(path)


# ----------------------------------------------------------------------------- artifacts

CLASS_NAMES = [f"digit{i}" for i in range(10)]


def tiny_config(**overrides) -> D3Config:
    """Digits-shaped config: 10 classes of 1x8x8, z 4, 2 priors per class, a width-4 decoder."""
    kw = dict(
        class_names=CLASS_NAMES,
        image_shape=[1, 8, 8],
        z_dim=4,
        priors_per_class=2,
        decoders=[family_spec([1, 8, 8], 4, 4).to_dict()],
        normalization_mean=[0.3],
        normalization_std=[0.37],
        source={"source": "digits", "split_rule": "test rule"},
        distillation={"seed": 0},
    )
    kw.update(overrides)
    return D3Config(**kw)


def make_model(seed=0, **overrides) -> D3Model:
    """An untrained ``tiny_config`` artifact, its initialisation seeded."""
    torch.manual_seed(seed)
    return D3Model(tiny_config(**overrides)).eval()


def make_distiller(data, buffer, args, **kwargs) -> Distiller:
    """A Distiller for ``args`` on ``data`` with ``buffer``'s experts, as the runner builds one."""
    config = build_config(args, data)
    torch.manual_seed(args.run.seed)
    return Distiller(D3Model(config), data, buffer, args.matching, seed=args.run.seed, **kwargs)


def weights(output_dir) -> dict[str, torch.Tensor]:
    """The tensors of the artifact a run wrote into ``output_dir``."""
    return load_file(os.path.join(output_dir, "artifact", "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_processes(tmp_path, *args: str, program=("-m", "d3hf"), processes: int = 2) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``d3hf distill ARGS`` on two (or ``processes``) CPU processes
    (``program``: how the command is started, e.g. a script path and its own arguments)."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TQDM_DISABLE": "1"}
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    return subprocess.run(
        [accelerate, "launch", "--config_file", os.path.join(ACCELERATE_CONFIGS, "cpu_2proc.yaml"),
         "--num_processes", str(processes), "--main_process_port", str(_free_port()), *program, "distill", *args],
        env=env, capture_output=True, text=True, timeout=240,
    )


# ----------------------------------------------------------------------------- datasets

IMAGE_LABEL = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})


def labelled_images(rng, n_per_class=10, shape=(8, 8), classes=3):
    """Random uint8 images, ``n_per_class`` of each class, and their labels."""
    images = rng.integers(0, 256, (n_per_class * classes, *shape), dtype=np.uint8)
    labels = np.repeat(np.arange(classes), n_per_class)
    return images, labels


def image_dataset(images, labels, features=IMAGE_LABEL):
    """A ``datasets.Dataset`` of the images with a ``row_id`` column naming each row's source index."""
    return datasets.Dataset.from_dict(
        {"image": list(images), "label": labels, "row_id": np.arange(len(labels))},
        features=datasets.Features({**features, "row_id": datasets.Value("int64")}),
    )


def as_chw(images):
    """(N, H, W) or (N, H, W, C) images as (N, C, H, W)."""
    return images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)


def check_rows_match(data, images, split="train"):
    """Every loaded row decodes to the original image of its ``row_id``."""
    table = data.train if split == "train" else data.test
    rows = np.asarray(table["row_id"])
    np.testing.assert_array_equal(data.images_uint8(np.arange(len(rows)), split), as_chw(images)[rows])
