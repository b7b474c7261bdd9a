"""The official D3 code (github sunnytqin/D3, measured at commit aebb309) and d3hf, side by side:
CPU and wall seconds per distillation iteration, where they go, and peak memory.

Both sides run on the same generated data (made here with a fixed seed, no download: 10 classes of
class-dependent smooth patterns plus noise, 32x32x3 or 28x28x1) and the same expert snapshots
(trained once by d3hf's ``build_expert_buffer`` and converted to the official ``replay_buffer_0.pt``
format after checking that both ConvNets have the same parameter layout; where they do not, as at
28x28x1, each side gets experts trained with the same settings and seed on its own layout). Each
measurement is one fresh process with one torch thread; the two sides alternate (official, d3hf,
official, d3hf, ...). A process runs ``warmup + timed`` iterations; the medians of the timed ones
are reported, with each iteration split into the MTT forward (the unrolled student steps), the
MMD forward, the backward passes and the rest.

The official code is never copied here: ``--official PATH`` names a checkout of it
(``git clone https://github.com/sunnytqin/D3``), whose ``distill_distribution.py`` runs unmodified
as ``__main__`` in the measuring process, with only what must change to run here on CPU patched
at run time; each patch is listed in the record of every official measurement and in the report.
d3hf's loop is driven directly: ``Distiller(...).step()``.

Cells are cached in benchmarks/cache/reference_speed/ (git-ignored), so a stopped run resumes
where it stopped; the summary is benchmarks/reference_speed.md.

    python benchmarks/reference_speed.py --official /path/to/D3      # every missing cell, then the summary
    python benchmarks/reference_speed.py --official PATH --d3hf mixed_precision=bf16   # d3hf with settings changed
    python benchmarks/reference_speed.py --smoke --official PATH --settings rgb32_w32_lpc1   # seconds-long check
    python benchmarks/reference_speed.py --cell d3hf rgb32_w32_lpc1 0  # one measurement, prints JSON
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file: the repo root
from benchmarks import synthetic  # noqa: E402
from benchmarks.cells import parse_settings  # noqa: E402

T0 = time.perf_counter()  # this process's start, for the setup time of a measurement
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_CACHE = os.path.join(HERE, "cache", "reference_speed")
SUMMARY = os.path.join(HERE, "reference_speed.md")
OFFICIAL_COMMIT = "aebb309"
OFFICIAL_URL = "https://github.com/sunnytqin/D3"
SIDES = ("official", "d3hf")
GOAL_RATIO = 0.5  # d3hf CPU seconds per iteration over the official code's: twice as fast
NUM_CLASSES = 10
DATA_SEED = 0

# What both sides share in every setting: the unroll, the expert segment, the MMD batch and the
# official small decoder's size (TinyVAE, kernel_num 128, z 64: 210,227 parameters at 32x32x3).
SYN_STEPS, EXPERT_EPOCHS, MAX_START_EPOCH, MMD_SAMPLES = 10, 2, 2, 30
Z_DIM, KERNEL_NUM = 64, 128
EXPERT_EPOCHS_TOTAL = MAX_START_EPOCH + EXPERT_EPOCHS  # snapshots 0..4: every matched segment and the final one
# The official run's learning rates: those of its README's distillation command (they do not change the cost).
OFFICIAL_LRS = ["--lr_latent", "3e-4", "--lr_lr", "1e-6", "--lr_teacher", "1e-2", "--lr_decode", "3e-4"]


@dataclass(frozen=True)
class Setting:
    name: str
    shape: tuple[int, int, int]  # C, H, W
    width: int  # student (and expert) ConvNet-3 channels
    lpc: int  # latent priors per class

    @property
    def data_key(self) -> str:
        c, h, w = self.shape
        return f"{'rgb' if c == 3 else 'gray'}{h}"

    @property
    def experts_key(self) -> str:
        return f"{self.data_key}_w{self.width}"

    def describe(self) -> str:
        c, h, w = self.shape
        return f"{h}x{w}x{c}, width {self.width}, {self.lpc} prior{'s' if self.lpc > 1 else ''} per class"


SETTINGS = {s.name: s for s in (
    Setting("rgb32_w128_lpc1", (3, 32, 32), 128, 1),
    Setting("rgb32_w128_lpc10", (3, 32, 32), 128, 10),
    Setting("rgb32_w32_lpc1", (3, 32, 32), 32, 1),
    Setting("gray28_w128_lpc1", (1, 28, 28), 128, 1),
)}


@dataclass(frozen=True)
class Profile:
    name: str
    train_images: int
    test_images: int
    experts: int
    warmup: int
    timed: int
    repeats: int


PROFILES = {
    "full": Profile("full", 4000, 500, 2, warmup=2, timed=8, repeats=2),
    # Proves that both sides run: a small data set (the iteration's cost does not depend on it), one expert.
    "smoke": Profile("smoke", 500, 100, 1, warmup=2, timed=2, repeats=1),
}

# ----------------------------------------------------------------------------- where things live


class Paths:
    def __init__(self, cache: str, profile: Profile, run_tag: str):
        self.root = os.path.join(cache, profile.name)
        self.run_tag = run_tag

    def data(self, key: str) -> str:
        return os.path.join(self.root, "data", key)

    def experts(self, key: str) -> str:
        return os.path.join(self.root, "experts", key)

    def cell(self, setting: str, side: str, repeat: int) -> str:
        return os.path.join(self.root, "cells", self.run_tag, f"{setting}__{side}__r{repeat}.json")

    def log(self, name: str) -> str:
        return os.path.join(self.root, "logs", self.run_tag, name + ".log")


# ----------------------------------------------------------------------------- the data


def generate_images(shape, n: int, seed: int = DATA_SEED) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images (N, C, H, W) of the benchmark's 10 classes and their labels
    (``benchmarks.synthetic.generate_images``)."""
    return synthetic.generate_images(shape, n, NUM_CLASSES, seed)


def write_data(folder: str, shape, train_images: int, test_images: int, seed: int = DATA_SEED) -> dict:
    """The generated data twice over, the same pixels: ``dataset/`` (a ``datasets.DatasetDict``
    written by ``save_to_disk``, PNG images, as d3hf reads any image dataset) and ``arrays.npz``
    (uint8 arrays, what the official side is given); ``info.json`` describes them."""
    from d3hf.utils.io import atomic_write_json

    images, labels = generate_images(shape, train_images + test_images, seed)
    split = {"train": slice(0, train_images), "test": slice(train_images, None)}
    os.makedirs(folder, exist_ok=True)
    synthetic.save_image_dataset(os.path.join(folder, "dataset"), images, labels, split, NUM_CLASSES)
    np.savez(os.path.join(folder, "arrays.npz"), train_x=images[split["train"]], train_y=labels[split["train"]],
             test_x=images[split["test"]], test_y=labels[split["test"]])
    import hashlib

    info = {"shape": list(shape), "train_images": train_images, "test_images": test_images, "seed": seed,
            "sha256": hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()[:16]}
    atomic_write_json(os.path.join(folder, "info.json"), info)
    return info


def ensure_data(paths: Paths, setting: Setting, profile: Profile) -> str:
    folder = paths.data(setting.data_key)
    if not os.path.exists(os.path.join(folder, "info.json")):
        write_data(folder, setting.shape, profile.train_images, profile.test_images)
    return folder


# ----------------------------------------------------------------------------- decoders and arguments


def official_decoder_parameters(shape, kernel_num: int = KERNEL_NUM, z_dim: int = Z_DIM) -> int:
    """Parameters of the official small decoder (TinyVAE) for 32x32 output with ``shape``'s channels:
    Linear z -> 4k, four ConvTranspose2d(4, stride 2) + BatchNorm stages k -> k/2 -> k/4 -> k/8 -> k/8
    and a 3x3 conv to the image (the count is checked against the official code's in its run)."""
    c, k = shape[0], kernel_num
    n = z_dim * 4 * k + 4 * k
    for cin, cout in ((k, k // 2), (k // 2, k // 4), (k // 4, k // 8), (k // 8, k // 8)):
        n += cin * cout * 16 + cout + 2 * cout
    return n + (k // 8) * c * 9 + c


UPSAMPLING = {"nearest": "nearest-upsampling + 3x3 conv", "transpose4": "4x4 stride-2 transposed conv",
              "transpose3": "3x3 stride-2 transposed conv"}


def d3hf_decoder_width(shape) -> int:
    """The width of d3hf's default decoder family whose parameter count is closest to the
    official decoder's."""
    from d3hf.modeling.decoders import family_spec

    target = official_decoder_parameters(shape)
    return min(range(1, 129), key=lambda w: abs(family_spec(list(shape), Z_DIM, w).num_parameters() - target))


def d3hf_arguments(setting: Setting, profile: Profile, dataset: str, iterations: int = 1):
    """d3hf's settings for ``setting``: the shared values above, d3hf's defaults for the rest."""
    from d3hf.distill.config import DistillArguments
    from d3hf.modeling.decoders import family_spec
    from d3hf.modeling.storage import prior_scalars

    width = d3hf_decoder_width(setting.shape)
    c, h, w = setting.shape
    needed = family_spec(list(setting.shape), Z_DIM, width).num_parameters() + setting.lpc * sum(
        prior_scalars(NUM_CLASSES, Z_DIM, 0).values())
    return DistillArguments(
        dataset=dataset, ipc_budget=float(-(-needed // (NUM_CLASSES * c * h * w))), decoder=str(width),
        lpc=str(setting.lpc), z_dim=str(Z_DIM), init="random", num_experts=profile.experts,
        expert_epochs_total=EXPERT_EPOCHS_TOTAL, student_depth=3, student_width=setting.width,
        syn_steps=SYN_STEPS, expert_epochs=EXPERT_EPOCHS, min_start_epoch=0, max_start_epoch=MAX_START_EPOCH,
        samples_per_class=setting.lpc, mmd_samples=MMD_SAMPLES, iterations=iterations, eval_epochs=0, seed=0,
        checkpoint_every=0, log_every=0)


# ----------------------------------------------------------------------------- the official code, importable


def official_model_name(width: int) -> str:
    """The official ``--model`` for a ConvNet-3 of ``width`` (``ConvNet`` is width 128)."""
    return "ConvNet" if width == 128 else f"ConvNetW{width}"


def official_dataset_name(shape) -> str:
    """The official ``--dataset``: it names the expert folder only (``get_dataset`` is replaced)."""
    return "CIFAR10" if shape[0] == 3 else "MNIST"


def official_expert_dir(buffer_path: str, shape, width: int) -> str:
    """Where ``distill_distribution.py`` looks for ``replay_buffer_<n>.pt`` (its rule, for
    CIFAR10 without ZCA and for other names)."""
    name = official_dataset_name(shape)
    return os.path.join(buffer_path, name + ("_NO_ZCA" if name in ("CIFAR10", "CIFAR100") else ""),
                        official_model_name(width))


def official_im_size(shape) -> tuple[int, int]:
    """The ``im_size`` the official code is told. It knows 32, 64, 128 and 256 pixels only
    (``get_default_convnet_setting``, TinyVAE's ``decoder_config``); for 28x28 it is (32, 32), and
    its ConvNet pads one-channel input by 3 in the first convolution (as its code does for MNIST)."""
    return (32, 32) if shape[1:] == (28, 28) else tuple(shape[1:])


# Modules the official code imports that this environment may lack, and the names it takes from
# them; a stub stands in only where the import fails, and only names unused on the measured path.
OPTIONAL_IMPORTS = {
    "torchvision": ("datasets", "transforms", "utils"),
    "kornia": ("enhance",),
    "einops": ("rearrange", "repeat"),
    "einops.layers.torch": ("Rearrange",),
    "scipy.ndimage.interpolation": ("rotate",),
}
STUB_USES = {
    "torchvision": "CIFAR10 loading and transforms in get_dataset (replaced), image grids in the saving block (not "
                   "reached)",
    "kornia": "ZCA whitening (off)",
    "einops": "the ViT model (not used)",
    "einops.layers.torch": "the ViT model (not used)",
    "scipy.ndimage.interpolation": "rotation augmentation of buffer.py's expert training (not used)",
}


def _unusable(name: str):
    def fail(*args, **kwargs):
        raise RuntimeError(f"{name} is a stub of benchmarks/reference_speed.py: the measured path should not use it")

    return fail


def _stub_getattr(module: str):
    """A stub module's ``__getattr__``: every public name is unusable; dunder names (``__file__``,
    which ``inspect`` asks every module for) stay missing."""
    def getattr_(item: str):
        if item.startswith("__"):
            raise AttributeError(item)
        return _unusable(f"{module}.{item}")

    return getattr_


def install_stubs() -> list[str]:
    """Stubs for the missing optional imports (see ``OPTIONAL_IMPORTS``); the patches they make."""
    patches = []
    for module, names in OPTIONAL_IMPORTS.items():
        try:
            importlib.import_module(module)
            continue
        except ImportError:
            pass
        parts = module.split(".")
        for i in range(1, len(parts) + 1):  # the module and every missing parent
            name = ".".join(parts[:i])
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                if i > 1:
                    setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], sys.modules[name])
        mod = sys.modules[module]
        for attr in names:
            if attr in ("datasets", "transforms", "utils", "enhance"):
                sub = types.ModuleType(f"{module}.{attr}")
                sub.__getattr__ = _stub_getattr(sub.__name__)
                sys.modules[sub.__name__] = sub
                setattr(mod, attr, sub)
            else:
                setattr(mod, attr, _unusable(f"{module}.{attr}"))
        patches.append(f"`{module}` is not installed here: a stub module stands in (used by {STUB_USES[module]})")
    if "tqdm" not in sys.modules:
        try:
            importlib.import_module("tqdm")
        except ImportError:
            sys.modules["tqdm"] = types.ModuleType("tqdm")
            sys.modules["tqdm"].tqdm = lambda iterable=None, *a, **k: iterable
            patches.append("`tqdm` is not installed here: a stub passes iterables through (progress bars of the setup)")
    return patches


@contextlib.contextmanager
def official_modules(path: str):
    """The official code's modules importable (its folder first on ``sys.path``), stubs installed;
    yields the patches made."""
    if not os.path.exists(os.path.join(path, "distill_distribution.py")):
        raise SystemExit(f"{path} is not a checkout of {OFFICIAL_URL} (no distill_distribution.py)")
    patches = install_stubs()
    sys.path.insert(0, os.path.abspath(path))
    try:
        yield patches
    finally:
        sys.path.remove(os.path.abspath(path))


def official_commit(path: str) -> str:
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


# ----------------------------------------------------------------------------- timing


class Timeline:
    """Marks with the wall and CPU (process) time at which they happened."""

    def __init__(self):
        self.events: list[tuple[str, float, float]] = []
        self.rss_before_loop_mb: float | None = None

    def mark(self, name: str) -> None:
        if name == "iteration>" and self.rss_before_loop_mb is None:
            self.rss_before_loop_mb = peak_rss_mb()
        self.events.append((name, time.perf_counter(), time.process_time()))

    def timed(self, name: str, fn):
        """``fn`` wrapped between the marks ``name>`` and ``name<``."""
        def wrapper(*args, **kwargs):
            self.mark(name + ">")
            try:
                return fn(*args, **kwargs)
            finally:
                self.mark(name + "<")

        return wrapper


@contextlib.contextmanager
def timed_backward(timeline: Timeline):
    """``Tensor.backward`` between the marks ``backward>`` and ``backward<`` (instrumentation only)."""
    import torch

    original = torch.Tensor.backward
    torch.Tensor.backward = timeline.timed("backward", original)
    try:
        yield
    finally:
        torch.Tensor.backward = original


PARTS = ("mtt_forward", "mmd_forward", "backward", "other")


def _split(events) -> list[list[tuple[str, float, float]]]:
    """Events grouped by iteration: each group starts at ``iteration>`` and ends with the event
    that closes it (the next ``iteration>``, or ``iteration<`` / ``run<``)."""
    groups, current = [], None
    for event in events:
        if event[0] == "iteration>":
            if current is not None:
                groups.append(current + [event])
            current = [event]
        elif current is not None:
            current.append(event)
            if event[0] in ("iteration<", "run<"):
                groups.append(current)
                current = None
    return groups


def _durations(group, name: str, k: int) -> list[tuple[float, float]]:
    """(start, end) of each ``name>`` ... ``name<`` pair in ``group``, time index ``k`` (1 wall, 2 CPU)."""
    spans, start = [], None
    for event in group:
        if event[0] == name + ">":
            start = event[k]
        elif event[0] == name + "<" and start is not None:
            spans.append((start, event[k]))
            start = None
    return spans


def d3hf_iterations(events) -> list[dict]:
    """Per iteration, wall and CPU seconds of the whole step and of each part: ``mtt_term``,
    the MMD chunks, the backward passes, and the rest (optimiser steps, checks, bookkeeping)."""
    out = []
    for group in _split(events):
        it = {}
        for k, clock in ((1, "wall"), (2, "cpu")):
            total = group[-1][k] - group[0][k]
            parts = {p: sum(b - a for a, b in _durations(group, p, k)) for p in ("mtt", "mmd", "backward")}
            it[f"{clock}_s"] = total
            it[f"mtt_forward_{clock}_s"] = parts["mtt"]
            it[f"mmd_forward_{clock}_s"] = parts["mmd"]
            it[f"backward_{clock}_s"] = parts["backward"]
            it[f"other_{clock}_s"] = total - sum(parts.values())
        out.append(it)
    return out


def official_iterations(events) -> list[dict]:
    """Per iteration of the official loop (from one ``wandb.log({"Progress": it})`` to the next):
    the MTT forward from the new student network to the MTT backward; the MMD forward from the
    MTT update's log to the MMD backward; both backward passes; the rest (the student's
    construction, the optimiser steps, logging, the end-of-iteration loops)."""
    out = []
    for group in _split(events):
        it = {}
        for k, clock in ((1, "wall"), (2, "cpu")):
            total = group[-1][k] - group[0][k]
            backward = _durations(group, "backward", k)
            student_built = max((e[k] for e in group if e[0] == "student<"), default=group[0][k])
            mtt_logged = next((e[k] for e in group if e[0] == "mtt_logged"), None)
            mtt = backward[0][0] - student_built if backward else 0.0
            mmd = backward[-1][0] - mtt_logged if len(backward) > 1 and mtt_logged is not None else 0.0
            spent = sum(b - a for a, b in backward)
            it[f"{clock}_s"] = total
            it[f"mtt_forward_{clock}_s"] = mtt
            it[f"mmd_forward_{clock}_s"] = mmd
            it[f"backward_{clock}_s"] = spent
            it[f"other_{clock}_s"] = total - mtt - mmd - spent
        out.append(it)
    return out


def medians(iterations: list[dict]) -> dict:
    keys = iterations[0].keys() if iterations else ()
    return {k: statistics.median(it[k] for it in iterations) for k in keys}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def forward_mflops(module, x) -> float:
    """Forward MFLOP of ``module(x)`` as ``torch.utils.flop_counter`` counts them (convolutions and
    matrix products; normalisation and activations are not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops() / 1e6


def apply_allocator(side: str, allocator: str) -> bool:
    """glibc's allocator as ``allocator`` says for ``side``: ``native`` (d3hf as its command line
    runs, with ``keep_freed_memory``; the official code with glibc's defaults), ``keep`` (both kept)
    or ``default`` (neither). The official side loads the function from its file, so that it
    imports nothing of d3hf."""
    if allocator == "default" or (allocator == "native" and side == "official"):
        return False
    import importlib.util

    spec = importlib.util.spec_from_file_location("_allocator", os.path.join(REPO, "d3hf", "utils", "allocator.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.keep_freed_memory()


def machine() -> dict:
    import torch

    from d3hf.utils.environment import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- the measurements


def run_d3hf(setting: Setting, profile: Profile, paths: Paths, allocator: str, warmup: int, timed: int,
             overrides: dict[str, str] | None = None) -> dict:
    """``warmup + timed`` iterations of d3hf's ``Distiller.step()`` in this process, with the
    settings ``overrides`` changed (``mixed_precision: bf16`` autocasts as the command line does)."""
    import torch

    allocator_applied = apply_allocator("d3hf", allocator)
    torch.set_num_threads(1)
    from d3hf.data.image_data import load_image_classification
    from d3hf.distill.distiller import Distiller
    from d3hf.distill.experts import ExpertBuffer
    from d3hf.distill.runner import build_config
    from d3hf.modeling.modeling_d3 import D3Model

    folder = os.path.join(paths.data(setting.data_key), "dataset")
    data = load_image_classification(folder)
    data.keep_train_in_memory()  # as the runner does: the train split decoded once into uint8 (2 GB allowed)
    args = d3hf_arguments(setting, profile, folder, iterations=warmup + timed).replace(**(overrides or {}))
    config = build_config(args, data)
    buffer = ExpertBuffer(os.path.join(paths.experts(setting.experts_key), "d3hf"))
    torch.manual_seed(args.run.seed)
    model = D3Model(config)
    autocast = None
    if args.run.mixed_precision == "bf16":  # what accelerate's autocast is on the CPU
        def autocast():
            return torch.autocast("cpu", dtype=torch.bfloat16)
    distiller = Distiller(model, data, buffer, args.matching, seed=args.run.seed, autocast=autocast)
    timeline = Timeline()
    distiller.mtt_term = timeline.timed("mtt", distiller.mtt_term)  # instance attributes: step() calls these
    distiller._mmd_chunk = timeline.timed("mmd", distiller._mmd_chunk)  # once per chunk of classes
    with timed_backward(timeline):
        for _ in range(warmup + timed):
            timeline.mark("iteration>")
            distiller.step()
            timeline.mark("iteration<")
    iterations = d3hf_iterations(timeline.events)
    peak = peak_rss_mb()
    decoder = model.decoders[0]
    spec = decoder.spec
    return {
        "side": "d3hf", "peak_rss_mb": peak, "rss_before_loop_mb": timeline.rss_before_loop_mb,
        "setup_wall_s": timeline.events[0][1] - T0, "iterations": iterations,
        "median": medians(iterations[warmup:]), "allocator_keeps_freed_memory": allocator_applied,
        "checkpoint_steps": bool(distiller.checkpoint_steps), "mmd_chunk_classes": distiller.mmd_chunk_classes,
        "overrides": overrides or {},
        "decoder": {"what": f"d3hf family_spec width {int(spec.channels[-1])}: Linear stem, {len(spec.channels) - 1} "
                            f"{UPSAMPLING[spec.upsample]} stages {spec.channels}, GroupNorm(1), sigmoid",
                    "params": sum(p.numel() for p in decoder.parameters()),
                    "mflops_per_image": forward_mflops(decoder.eval(), torch.zeros(1, Z_DIM))},
        "student": {"params": sum(p.numel() for p in distiller.student.parameters()),
                    "mflops_per_image": forward_mflops(distiller.student, torch.zeros(1, *setting.shape))},
        "d3hf_settings": {k: v for k, v in args.to_dict().items() if k in (
            "ipc_budget", "decoder", "lpc", "z_dim", "samples_per_class", "mmd_samples", "mmd_kernel_scale",
            "mmd_bandwidths", "lr_priors", "lr_decoder", "lr_step_size", "init_step_size", "checkpoint_steps",
            "mixed_precision")},
    }


def official_argv(setting: Setting, warmup: int, timed: int, buffer_path: str) -> list[str]:
    """The official script's command line for ``setting``. Evaluation and image saving never run:
    ``--num_eval 0``, ``--eval_it`` beyond the run, and ``--checkpoint_it 1`` (the loop counts
    from 1, so the saving block of iteration 0, which calls ``.cuda()``, is not entered)."""
    return ["distill_distribution.py", "--dataset", official_dataset_name(setting.shape),
            "--model", official_model_name(setting.width), "--lpc", str(setting.lpc),
            "--syn_steps", str(SYN_STEPS), "--expert_epochs", str(EXPERT_EPOCHS),
            "--max_start_epoch", str(MAX_START_EPOCH), "--mmd_samples", str(MMD_SAMPLES),
            "--decoder_size", "small", "--kernel_num", str(KERNEL_NUM), "--z_dim", str(Z_DIM),
            "--Iteration", str(warmup + timed - 1), "--checkpoint_it", "1", "--eval_it", str(10**9),
            "--num_eval", "0", "--load_all", "--buffer_path", buffer_path, "--data_path", "unused",
            *OFFICIAL_LRS]


class GeneratedImages:
    """The generated train or test split as the official loop reads a torchvision dataset:
    ``(normalised float image, label)`` per index, normalised when read (ToTensor + Normalize)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std):
        import torch

        self.images, self.labels = torch.from_numpy(images), labels
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return (self.images[index].float() / 255 - self.mean) / self.std, int(self.labels[index])


def pixel_mean_std(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images in [0, 1] units (what d3hf normalises with)."""
    x = images.astype(np.float64) / 255
    return x.mean(axis=(0, 2, 3)).tolist(), x.std(axis=(0, 2, 3)).tolist()


def run_official(setting: Setting, paths: Paths, official: str, allocator: str, warmup: int, timed: int) -> dict:
    """The official ``distill_distribution.py`` as ``__main__`` in this process, patched only as
    listed in the record, for ``warmup + timed`` iterations."""
    import runpy

    import torch

    allocator_applied = apply_allocator("official", allocator)
    torch.set_num_threads(1)
    arrays = np.load(os.path.join(paths.data(setting.data_key), "arrays.npz"))
    mean, std = pixel_mean_std(arrays["train_x"])
    timeline = Timeline()
    instrumentation = [
        "`wandb` is replaced by a stub (the script logs with mode='disabled'): `wandb.config` returns the script's "
        "arguments, and `wandb.log` records the time of the `Progress` (iteration start) and `MTT_Loss` (MTT update "
        "done) logs; nothing is logged",
        "`torch.Tensor.backward` and `utils.get_network` (the student built each iteration) are wrapped by timers",
    ]
    patches = []
    with official_modules(official) as stub_patches:
        patches += stub_patches
        sys.modules["wandb"] = wandb_stub(timeline)
        utils = importlib.import_module("utils")
        decoder = importlib.import_module("decoder")
        im_size = official_im_size(setting.shape)
        c = setting.shape[0]

        def get_dataset(dataset, data_path, batch_size=1, subset="imagenette", args=None):
            train = GeneratedImages(arrays["train_x"], arrays["train_y"], mean, std)
            test = GeneratedImages(arrays["test_x"], arrays["test_y"], mean, std)
            testloader = torch.utils.data.DataLoader(test, batch_size=128, shuffle=False, num_workers=0)
            class_map = {x: x for x in range(NUM_CLASSES)}
            return (c, im_size, NUM_CLASSES, [f"class{i}" for i in range(NUM_CLASSES)], mean, std, train, test,
                    testloader, None, class_map, None)

        utils.get_dataset = get_dataset
        patches.append("`utils.get_dataset` returns the generated data (normalised with its own per-channel mean and "
                       "std, as torchvision's ToTensor + Normalize would) instead of downloading CIFAR-10")
        utils.get_network = timeline.timed("student", utils.get_network)
        if not torch.cuda.is_available():
            torch.Tensor.cuda = lambda self, *args, **kwargs: self
            patches.append("`torch.Tensor.cuda` returns the tensor itself (no GPU here): `TinyVAE.z` calls `.cuda()` on "
                           "its noise whenever `self._is_on_cuda` is truthy, and it is a method, so always; nothing "
                           "else on the measured path calls it")
        if setting.shape[1:] == (28, 28):
            decoder.TinyVAE = cropped_tiny_vae(decoder.TinyVAE)
            patches.append("28x28x1 only: the official code has no 28x28 path (`get_default_convnet_setting` and "
                           "TinyVAE's `decoder_config` know 32/64/128/256), so `get_dataset` reports im_size (32, 32) "
                           "while the images stay 28x28 (its ConvNet pads one-channel input by 3, 28 -> 32 maps, as it "
                           "does for MNIST), and the 32x32 TinyVAE gets a 2-pixel centre crop appended (no parameters)")
        buffer_path = os.path.join(paths.experts(setting.experts_key), "official")
        layout = read_json(os.path.join(buffer_path, "layout.json"))
        argv = official_argv(setting, warmup, timed, buffer_path)
        script = os.path.join(official, "distill_distribution.py")
        saved_argv, saved_cwd = sys.argv, os.getcwd()
        with tempfile.TemporaryDirectory() as cwd, contextlib.redirect_stdout(sys.stderr), timed_backward(timeline):
            sys.argv = argv
            os.chdir(cwd)  # whatever the script writes (nothing, with these arguments) goes to a temporary folder
            try:
                runpy.run_path(script, run_name="__main__")
            finally:
                sys.argv = saved_argv
                os.chdir(saved_cwd)
        iterations = official_iterations(timeline.events)
        peak = peak_rss_mb()
        vae = decoder.TinyVAE("test", im_size[0], c, kernel_num=KERNEL_NUM, z_size=Z_DIM).eval()
        student = utils.get_network(official_model_name(setting.width), c, NUM_CLASSES, im_size, dist=False)
        record = {
            "side": "official", "peak_rss_mb": peak, "rss_before_loop_mb": timeline.rss_before_loop_mb,
            "setup_wall_s": timeline.events[0][1] - T0, "iterations": iterations,
            "median": medians(iterations[warmup:]), "allocator_keeps_freed_memory": allocator_applied,
            "decoder": {"what": f"official TinyVAE ('small'), kernel_num {KERNEL_NUM}, z {Z_DIM}: Linear, 4 "
                                "ConvTranspose2d(4, stride 2) + BatchNorm stages, 3x3 conv, tanh",
                        "params": sum(p.numel() for p in vae.parameters()),
                        "mflops_per_image": forward_mflops(vae, torch.zeros(1, Z_DIM, 2))},
            "student": {"params": sum(p.numel() for p in student.parameters()),
                        "mflops_per_image": forward_mflops(student.eval(), torch.zeros(1, *setting.shape))},
            "argv": argv[1:], "patches": patches, "instrumentation": instrumentation, "experts": layout,
            "official_commit": official_commit(official),
        }
    return record


def wandb_stub(timeline: Timeline) -> types.ModuleType:
    """A ``wandb`` module for the official script: ``init`` keeps the arguments as ``config``
    (the script reads them back from ``wandb.config._items``), ``log`` marks the iteration's start
    and the end of its MTT update, ``finish`` the end of the run."""
    wandb = types.ModuleType("wandb")

    def init(config=None, **kwargs):
        wandb.config = types.SimpleNamespace(_items=dict(vars(config)) if config is not None else {})
        wandb.run = types.SimpleNamespace(name="reference_speed")

    def log(values, step=None, **kwargs):
        if "Progress" in values:
            timeline.mark("iteration>")
        elif "MTT_Loss" in values:
            timeline.mark("mtt_logged")

    wandb.init, wandb.log, wandb.finish = init, log, lambda *a, **k: timeline.mark("run<")
    wandb.Histogram = wandb.Image = lambda *a, **k: None
    return wandb


def cropped_tiny_vae(tiny_vae):
    """TinyVAE built for 32x32 with a centre crop to 28x28 appended to its decoder."""
    import torch

    class CentreCrop28(torch.nn.Module):
        def forward(self, x):
            return x[..., 2:30, 2:30]

    def build(label, image_size, channel_num, kernel_num, z_size):
        vae = tiny_vae(label, image_size, channel_num, kernel_num, z_size)
        vae.decoder.append(CentreCrop28())
        return vae

    return build


# ----------------------------------------------------------------------------- experts for both sides


def build_d3hf_experts(setting: Setting, profile: Profile, paths: Paths) -> None:
    """d3hf's expert buffer for ``setting``'s data and width (``build_expert_buffer``)."""
    import torch

    torch.set_num_threads(1)
    from d3hf.data.image_data import load_image_classification
    from d3hf.distill.experts import build_expert_buffer
    from d3hf.distill.runner import expert_settings

    folder = os.path.join(paths.data(setting.data_key), "dataset")
    data = load_image_classification(folder)
    data.keep_train_in_memory()
    settings = expert_settings(d3hf_arguments(setting, profile, folder), data.image_shape)
    build_expert_buffer(data, settings, os.path.join(paths.experts(setting.experts_key), "d3hf"), show_progress=False)


def named_shapes(module) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(p.shape)) for name, p in module.named_parameters()]


def layout_differences(official: list, d3hf: list) -> list[str]:
    """What differs between two parameter lists, position by position (names aside)."""
    lines = []
    for i in range(max(len(official), len(d3hf))):
        a = official[i] if i < len(official) else None
        b = d3hf[i] if i < len(d3hf) else None
        if a is None or b is None or a[1] != b[1]:
            lines.append(f"tensor {i}: official {a[0] + ' ' + str(list(a[1])) if a else 'none'}, "
                         f"d3hf {b[0] + ' ' + str(list(b[1])) if b else 'none'}")
    return lines


def conv_differences(official, d3hf) -> list[str]:
    """Kernel, stride and padding of the two networks' convolutions, in order, where they differ
    (what parameter shapes do not show)."""
    import torch

    convs = [[m for m in net.modules() if isinstance(m, torch.nn.Conv2d)] for net in (official, d3hf)]
    lines = []
    for i, (a, b) in enumerate(zip(*convs)):
        for attr in ("kernel_size", "stride", "padding"):
            if getattr(a, attr) != getattr(b, attr):
                lines.append(f"convolution {i}: official {attr} {tuple(getattr(a, attr))}, d3hf {attr} "
                             f"{tuple(getattr(b, attr))}")
    if len(convs[0]) != len(convs[1]):
        lines.append(f"{len(convs[0])} convolutions in the official network, {len(convs[1])} in d3hf's")
    return lines


def split_flat(flat, shapes: list[tuple[int, ...]]) -> list:
    """A flat parameter vector as the official per-tensor list (``[p for p in net.parameters()]``)."""
    out, offset = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        out.append(flat[offset : offset + n].reshape(shape).clone())
        offset += n
    if offset != flat.numel():
        raise ValueError(f"a flat vector of {flat.numel()} values does not fill shapes totalling {offset}")
    return out


def convert_buffer(buffer, shapes: list[tuple[int, ...]]) -> list[list[list]]:
    """d3hf's buffer as the official ``replay_buffer`` list: expert -> epoch 0..final -> tensors."""
    epochs = buffer.kept_epochs
    if epochs != list(range(buffer.final_epoch() + 1)):
        raise ValueError(f"the official buffer lists every epoch; this d3hf buffer keeps {epochs}")
    return [[split_flat(buffer.snapshot(e, epoch), shapes) for epoch in epochs] for e in range(len(buffer))]


def build_official_experts(setting: Setting, profile: Profile, paths: Paths, official: str) -> dict:
    """The official ``replay_buffer_0.pt`` for ``setting``: d3hf's snapshots converted when both
    ConvNets have the same layout (same tensors in the same order, and the same logits from the
    same parameters), else experts of the official layout trained with d3hf's expert settings,
    seed and batch order. Writes and returns ``layout.json``."""
    import torch

    from d3hf.data.image_data import load_image_classification
    from d3hf.distill.experts import ExpertBuffer
    from d3hf.nn.networks import ConvNet

    torch.set_num_threads(1)
    folder = os.path.join(paths.data(setting.data_key), "dataset")
    data = load_image_classification(folder)
    data.keep_train_in_memory()
    buffer = ExpertBuffer(os.path.join(paths.experts(setting.experts_key), "d3hf"))
    with official_modules(official) as patches:
        utils = importlib.import_module("utils")
        c = setting.shape[0]

        def official_net():
            return utils.get_network(official_model_name(setting.width), c, NUM_CLASSES,
                                     official_im_size(setting.shape), dist=False)

        net = official_net()
    ours = ConvNet(setting.shape, NUM_CLASSES, buffer.settings.depth, buffer.settings.width)
    official_shapes, d3hf_shapes = named_shapes(net), named_shapes(ours)
    differences = layout_differences(official_shapes, d3hf_shapes) + conv_differences(net, ours)
    mean, std = data.normalization_tensors()
    x = (data.images(np.arange(16)) - mean) / std
    layout = {"official": [[n, list(s)] for n, s in official_shapes], "d3hf": [[n, list(s)] for n, s in d3hf_shapes],
              "differences": differences, "stubs": patches}
    if not differences:
        flat = buffer.snapshot(0, buffer.final_epoch())
        with torch.no_grad():
            for p, t in zip(net.parameters(), split_flat(flat, [s for _, s in official_shapes])):
                p.copy_(t)
            ours.load_state_dict({n: t for (n, _), t in zip(d3hf_shapes, split_flat(flat, [s for _, s in
                                                                                         d3hf_shapes]))})
            diff = float((net.eval()(x) - ours.eval()(x)).abs().max())
        layout["max_logit_difference"] = diff
        if diff > 1e-4:
            differences.append(f"the same parameters give logits {diff:.3g} apart: the networks compute differently")
    if not differences:
        trajectories = convert_buffer(buffer, [s for _, s in official_shapes])
        layout["experts"] = "d3hf's snapshots, converted (the same experts on both sides)"
    else:
        trajectories = train_official_layout_experts(official_net, data, buffer.settings)
        layout["experts"] = ("trained apart for each side (the layouts differ): the same settings, seed and batch "
                             "order, d3hf's training step, on each side's own ConvNet")
    target = official_expert_dir(os.path.join(paths.experts(setting.experts_key), "official"), setting.shape,
                                 setting.width)
    os.makedirs(target, exist_ok=True)
    torch.save(trajectories, os.path.join(target, "replay_buffer_0.pt"))
    from d3hf.utils.io import atomic_write_json

    atomic_write_json(os.path.join(paths.experts(setting.experts_key), "official", "layout.json"), layout)
    return layout


def train_official_layout_experts(make_net, data, settings) -> list[list[list]]:
    """Experts of the official ConvNet, trained as d3hf's ``train_one_expert`` trains its own:
    the same seed stream, batch order, optimiser and epochs; every epoch's snapshot kept."""
    import torch

    from d3hf.nn.sgd import train_epoch
    from d3hf.utils.seeding import EXPERT_STREAM, class_seed

    mean, std = data.normalization_tensors()
    labels = data.labels()
    trajectories = []
    for index in range(settings.num_experts):
        seed = class_seed(settings.seed, EXPERT_STREAM, index)
        rng = np.random.default_rng(seed)
        net = make_net()  # get_network seeds torch from the clock: initialise again from the expert's seed
        torch.manual_seed(seed)
        for module in net.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        opt = torch.optim.SGD(net.parameters(), lr=settings.lr, momentum=settings.momentum,
                              weight_decay=settings.weight_decay)
        snapshots = [[p.detach().clone() for p in net.parameters()]]

        def batches(order):
            for start in range(0, len(order), settings.batch_size):
                idx = np.sort(order[start : start + settings.batch_size])
                yield (data.images(idx) - mean) / std, torch.from_numpy(labels[idx])

        for _ in range(settings.epochs):
            train_epoch(net, opt, batches(rng.permutation(len(labels))))
            snapshots.append([p.detach().clone() for p in net.parameters()])
        trajectories.append(snapshots)
    return trajectories


# ----------------------------------------------------------------------------- orchestration


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def in_fresh_process(mode: list[str], flags: list[str], log: str) -> str:
    """``reference_speed.py MODE FLAGS`` in a new process with one thread; its standard output
    (its standard error goes to ``log``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "w") as err:
        done = subprocess.run([sys.executable, os.path.abspath(__file__), *mode, *flags], env=env,
                              stdout=subprocess.PIPE, stderr=err, text=True)
    if done.returncode:
        with open(log) as f:
            tail = "".join(f.readlines()[-30:])
        raise SystemExit(f"{' '.join(mode)} failed (exit {done.returncode}); the end of {log}:\n{tail}")
    return done.stdout


def need_official(a) -> str:
    if not a.official:
        raise SystemExit(f"--official PATH is needed to measure the official code: a checkout of {OFFICIAL_URL} "
                         f"(git clone {OFFICIAL_URL}; measured at commit {OFFICIAL_COMMIT}).")
    return os.path.abspath(a.official)


def cached_cell(a, paths: Paths, setting: Setting, side: str, repeat: int, flags: list[str]) -> dict:
    path = paths.cell(setting.name, side, repeat)
    if not os.path.exists(path):
        from d3hf.utils.io import atomic_write_json

        if side == "official":
            need_official(a)
        load = os.getloadavg()[0]
        out = in_fresh_process(["--cell", side, setting.name, str(repeat)], flags,
                               paths.log(f"{setting.name}__{side}__r{repeat}"))
        record = {**json.loads(out.strip().splitlines()[-1]), "setting": setting.name, "repeat": repeat,
                  "load_average_at_start": load, "warmup": a.warmup, "timed": a.timed, "allocator": a.allocator}
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_json(path, record)
    return read_json(path)


def prepare(a, paths: Paths, setting: Setting, profile: Profile, flags: list[str]) -> None:
    """The data and both sides' experts of ``setting``, each made once (in a fresh process)."""
    ensure_data(paths, setting, profile)
    experts = paths.experts(setting.experts_key)
    if not os.path.exists(os.path.join(experts, "d3hf", "settings.json")):
        in_fresh_process(["--experts", "d3hf", setting.name], flags, paths.log(f"experts_{setting.experts_key}_d3hf"))
    if not os.path.exists(os.path.join(experts, "official", "layout.json")):
        need_official(a)
        in_fresh_process(["--experts", "official", setting.name], flags,
                         paths.log(f"experts_{setting.experts_key}_official"))


def fmt_range(values: list[float], digits: int = 2) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.{digits}f}" if f"{lo:.{digits}f}" == f"{hi:.{digits}f}" else f"{lo:.{digits}f}-{hi:.{digits}f}"


def pooled(cells: list[dict], key: str) -> float:
    """The median of ``key`` over the timed iterations of every repeat."""
    return statistics.median(it[key] for c in cells for it in c["iterations"][c["warmup"]:])


def shown(value: str) -> str:
    """A path inside this repository as a relative one (the report is read on other machines)."""
    return os.path.relpath(value, REPO) if os.path.isabs(value) and value.startswith(REPO + os.sep) else value


def summary(cells: dict, command: str, machine_info: dict) -> str:
    """The report from the cell records: ``cells[(setting, side)]`` is the list of its repeats."""
    names = [s for s in SETTINGS if (s, "official") in cells and (s, "d3hf") in cells]
    rows, parts_rows, model_rows, layout_rows, patches, instrumentation, notes = [], [], [], [], [], [], []
    verdicts = []
    seen_layouts = set()
    for name in names:
        s, off, ours = SETTINGS[name], cells[(name, "official")], cells[(name, "d3hf")]
        cpu_o, cpu_d = pooled(off, "cpu_s"), pooled(ours, "cpu_s")
        reps = len(off)
        per_rep = (f" ({fmt_range([c['median']['cpu_s'] for c in off])} / "
                   f"{fmt_range([c['median']['cpu_s'] for c in ours])})") if reps > 1 else ""
        rows.append(f"| {s.describe()} | {cpu_o:.2f} | {cpu_d:.2f} | {cpu_d / cpu_o:.2f}{per_rep} | "
                    f"{pooled(off, 'wall_s'):.2f} / {pooled(ours, 'wall_s'):.2f} | "
                    f"{fmt_range([c['peak_rss_mb'] for c in off], 0)} / {fmt_range([c['peak_rss_mb'] for c in ours], 0)} | "
                    f"{fmt_range([c['rss_before_loop_mb'] for c in off], 0)} / "
                    f"{fmt_range([c['rss_before_loop_mb'] for c in ours], 0)} |")
        faster = cpu_d / cpu_o <= GOAL_RATIO
        leaner = max(c["peak_rss_mb"] for c in ours) <= min(c["peak_rss_mb"] for c in off)
        verdicts.append(f"{s.describe()}: {'reached' if faster and leaner else 'NOT reached'} (ratio {cpu_d / cpu_o:.2f}"
                        f"{'' if faster else ' > ' + str(GOAL_RATIO)}; peak RSS {'at most' if leaner else 'above'} "
                        "the official's)")
        for side, group in (("official", off), ("d3hf", ours)):
            parts = " | ".join(f"{pooled(group, f'{p}_cpu_s'):.2f}" for p in PARTS)
            parts_rows.append(f"| {s.describe()} | {side} | {parts} | {pooled(group, 'cpu_s'):.2f} |")
        do, dd = off[0]["decoder"], ours[0]["decoder"]
        so, sd = off[0]["student"], ours[0]["student"]
        model_rows.append(f"| {s.describe()} | {do['params']:,} / {dd['params']:,} | "
                          f"{do['mflops_per_image']:.1f} / {dd['mflops_per_image']:.1f} | "
                          f"{so['params']:,} / {sd['params']:,} | {so['mflops_per_image']:.1f} / "
                          f"{sd['mflops_per_image']:.1f} | {'on' if ours[0]['checkpoint_steps'] else 'off'} |")
        layout = off[0]["experts"]
        if s.experts_key not in seen_layouts:
            seen_layouts.add(s.experts_key)
            if layout["differences"]:
                what = "differ: " + "; ".join(layout["differences"])
            else:
                diff = layout["max_logit_difference"]
                what = (f"the same {len(layout['d3hf'])} tensors in the same order and shapes (names differ, e.g. "
                        f"`{layout['official'][0][0]}` / `{layout['d3hf'][0][0]}`), the same convolutions; the same "
                        "parameters give " + ("identical logits" if diff == 0 else f"logits at most {diff:.1g} apart"))
            c, h, w = s.shape
            layout_rows.append(f"| {h}x{w}x{c}, width {s.width} | {what} | {layout['experts']} |")
        for c in off:
            for p in c["patches"]:
                if p not in patches:
                    patches.append(p)
            for p in c["instrumentation"]:
                if p not in instrumentation:
                    instrumentation.append(p)
        if off[0]["official_commit"] not in notes:
            notes.append(off[0]["official_commit"])
    if not names:
        return "# The official D3 code and d3hf, side by side\n\nNo setting has both sides measured yet.\n"
    first_o, first_d = cells[(names[0], "official")][0], cells[(names[0], "d3hf")][0]
    loads = [c["load_average_at_start"] for v in cells.values() for c in v]
    allocator = first_o.get("allocator", "native")
    settings_d3hf = first_d["d3hf_settings"]
    chunks = "; ".join(f"{SETTINGS[n].describe()}: {cells[(n, 'd3hf')][0]['mmd_chunk_classes']}"
                       for n in names if "mmd_chunk_classes" in cells[(n, "d3hf")][0]) or "`mmd_chunk_classes: auto`"
    overrides = first_d.get("overrides") or {}
    differs = [
        "**Objective.** The official loop backpropagates the MTT loss and steps the latents, the learning rate and "
        "the decoder, then backpropagates the MMD loss and steps the latents and the decoder again: two backward "
        "passes and two updates per iteration. d3hf backpropagates the MTT loss, then the MMD loss (chunk by chunk "
        "of classes), and takes one step of each optimiser on the summed gradients.",
        "**Student.** The official loop builds a fresh random ConvNet and `ReparamModule` every iteration and runs "
        "it on views of a flat parameter vector; d3hf builds its student once and runs it with "
        "`torch.func.functional_call`.",
        f"**Decoder.** Official: {first_o['decoder']['what']}, in training mode (batch statistics). d3hf: "
        f"{first_d['decoder']['what']}; decoded images are normalised with the data's mean and std before the "
        "student (the official loop feeds the tanh output as it is). Parameters and FLOPs are in the table below.",
        "**MTT batches.** Both decode one sample of every prior per inner step (10 x priors per class images): the "
        f"official `batch_syn` default, d3hf `samples_per_class` = priors per class; {SYN_STEPS} steps, segments of "
        f"{EXPERT_EPOCHS} expert epochs starting at epoch 0 or 1.",
        f"**MMD.** Both compare {MMD_SAMPLES} decoded and {MMD_SAMPLES} real images per class in the feature space of "
        "the expert's final snapshot, with RBF bandwidths 1, 2, 4, 8, 16. The official loop runs one forward per "
        f"class for each, on raw squared distances, and backpropagates all classes at once; d3hf decodes, embeds and "
        f"backpropagates a chunk of classes at a time ({chunks}), distances in units of the real features' median "
        f"(`mmd_kernel_scale: {settings_d3hf.get('mmd_kernel_scale')}`); its real side is embedded once.",
        "**Real images.** The official loop keeps the normalised train split as one float tensor; d3hf keeps it "
        "decoded once as uint8 (`keep_train_in_memory`) and normalises each batch.",
        "**Expert snapshots.** The official loop holds every trajectory in memory (`--load_all`) as per-layer "
        "tensors and concatenates two of them each iteration; d3hf reads two flat vectors from safetensors files "
        "each iteration (and builds its MMD feature network once).",
        "**Bookkeeping.** The official loop ends each iteration with `for _ in student_params: del _`, which walks "
        "the student's flat parameter vector one 0-d tensor at a time (in 'other'), and calls `wandb.log` (a stub "
        "here); d3hf checks every parameter for non-finite values after each update.",
        f"**Allocator.** `--allocator {allocator}`: " + {
            "native": "d3hf runs with `keep_freed_memory()` as its command line does; the official code with glibc's "
                      "defaults.",
            "keep": "both run with d3hf's `keep_freed_memory()`.",
            "default": "both run with glibc's default malloc."}[allocator],
        "**Unroll memory.** d3hf's `checkpoint_steps: auto` recomputes the inner steps in the backward pass when the "
        "plain unroll would take over a quarter of the free memory (the table below says where it did); the official "
        "unroll is always plain.",
        "**Learning rates** (no effect on the cost): official `" + " ".join(OFFICIAL_LRS) + "` (its README's); d3hf "
        f"its defaults (`lr_priors {settings_d3hf.get('lr_priors')}`, `lr_decoder {settings_d3hf.get('lr_decoder')}`, "
        f"`lr_step_size {settings_d3hf.get('lr_step_size')}`, `init_step_size {settings_d3hf.get('init_step_size')}`).",
        "**28x28x1.** The official ConvNet pads the first convolution by 3 for one-channel input (28 -> 32, 16, 8, 4 "
        "maps; a 2048-feature classifier) where d3hf's pads by 1 (28, 14, 7, 3; 1152 features), hence the different "
        "student FLOPs and experts trained apart; the official decoder is the 32x32 one, cropped (see the patches).",
    ]
    m = machine_info
    threads = sorted({c.get("torch_threads") for v in cells.values() for c in v}, key=str)
    text = [
        "# The official D3 code and d3hf, side by side", "",
        f"Command: `{command}`, PATH a checkout of the official code (`--cell` measurements, one fresh process "
        "each, one torch thread: `OMP_NUM_THREADS=1` and `torch.set_num_threads(1)`; torch threads the processes "
        f"reported: {', '.join(map(str, threads))}). Machine: "
        f"{m['cpu']} ({m['cpu_capability']}), {m['cores']} cores, torch {m['torch']}; the official code at commit "
        f"{', '.join(notes)} ({OFFICIAL_URL}). 1-minute load average when a measurement started: "
        f"{min(loads):.1f} to {max(loads):.1f} (above 1: another job shared the cores, and wall seconds suffer).", "",
        f"Both sides distil the same generated data ({first_d.get('train_images', 'see info.json')} train images of "
        f"10 classes, made by `generate_images` with seed {DATA_SEED}; no download) against the same expert "
        f"snapshots (below): student ConvNet-3, syn_steps {SYN_STEPS}, expert_epochs {EXPERT_EPOCHS}, MMD with "
        f"{MMD_SAMPLES} samples per class, decoders of about 210k parameters. Each measurement runs "
        f"{first_o['warmup']} warm-up and {first_o['timed']} timed iterations; runs alternate official, d3hf, "
        f"official, d3hf ({len(cells[(names[0], 'official')])} of each per setting). Seconds are medians over the "
        "timed iterations of every run (the range of the runs' own medians in brackets); peak RSS is each process's "
        "maximum resident memory (the range over its runs), and 'before the loop' its maximum when the first "
        "iteration started (imports, data, experts, models)." + (
            " d3hf runs with " + ", ".join(f"`{k}: {v}`" for k, v in overrides.items()) + " (the official code "
            "as always)." if overrides else ""), "",
        "| setting | official CPU s/it | d3hf CPU s/it | d3hf / official | wall s/it official / d3hf | "
        "peak RSS MB official / d3hf | RSS before the loop MB |",
        "|---|---:|---:|---:|---:|---:|---:|", *rows, "",
        f"The goal: a ratio of at most {GOAL_RATIO} (twice as fast) with a peak RSS no higher than the official's "
        "(every d3hf run's peak at most every official run's).", "", *[f"- {v}" for v in verdicts], "",
        "## Where an iteration goes (CPU s, medians)", "",
        "MTT forward: the unrolled student steps (official: from the new student network to the MTT backward; "
        "d3hf: `mtt_term`). MMD forward: official from the MTT update to the MMD backward, d3hf its MMD chunks. "
        "Backward: every `Tensor.backward` (two per iteration on both sides). Other: the rest (optimiser "
        "steps, the official student's construction, bookkeeping). Medians of each part, so the parts need not add "
        "up to the whole.", "",
        "| setting | side | MTT forward | MMD forward | backward | other | whole |",
        "|---|---|---:|---:|---:|---:|---:|", *parts_rows, "",
        "## Decoders and students (official / d3hf)", "",
        "FLOPs per image of one forward pass, as `torch.utils.flop_counter` counts them (convolutions and matrix "
        "products; normalisation and activations not counted).", "",
        "| setting | decoder parameters | decoder MFLOP/image | student parameters | student MFLOP/image | "
        "d3hf unroll checkpointing |",
        "|---|---:|---:|---:|---:|---|", *model_rows, "",
        "## Expert snapshots", "",
        "d3hf trains the experts (`build_expert_buffer`: ConvNet-3 of the student's width, SGD lr 0.01, momentum 0.9, "
        f"batch 256, {EXPERT_EPOCHS_TOTAL} epochs, every epoch kept); they are converted to the official "
        "`replay_buffer_0.pt` (a list of trajectories, each a list of per-epoch parameter lists) when the two "
        "ConvNets have the same parameter layout.", "",
        "| experts | official ConvNet against d3hf's | snapshots |", "|---|---|---|", *layout_rows, "",
        "## What differs between the two runs", "", *[f"- {d}" for d in differs], "",
        "## Patches to the official code (at run time, in the measuring process; nothing is copied)", "",
        *[f"- {p}" for p in patches],
        f"- Arguments: `{' '.join(shown(v) for v in first_o['argv'])}` (evaluation and image saving never run; see "
        "`official_argv`).",
        "", "Instrumentation only (no change to what runs):", "", *[f"- {p}" for p in instrumentation], "",
    ]
    return "\n".join(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--official", help=f"a checkout of {OFFICIAL_URL} (measured at commit {OFFICIAL_COMMIT})")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated: " + ", ".join(SETTINGS))
    p.add_argument("--smoke", action="store_true", help="a seconds-long check that both sides run (own cache "
                   "folder; the summary goes there too, never to benchmarks/reference_speed.md)")
    p.add_argument("--warmup", type=int, help="warm-up iterations per run (default: the profile's)")
    p.add_argument("--timed", type=int, help="timed iterations per run (default: the profile's)")
    p.add_argument("--repeats", type=int, help="runs of each side per setting (default: the profile's)")
    p.add_argument("--allocator", choices=["native", "keep", "default"], default="native",
                   help="native: d3hf with keep_freed_memory() as its command line runs, the official code with "
                        "glibc's defaults; keep / default: the same for both")
    p.add_argument("--cache", default=DEFAULT_CACHE, help="cache folder (default benchmarks/cache/reference_speed)")
    p.add_argument("--out", help="the summary (default benchmarks/reference_speed.md; with --smoke, in the cache)")
    p.add_argument("--d3hf", default="", metavar="KEY=VALUE,...",
                   help="d3hf settings changed from the shared ones (e.g. mixed_precision=bf16 or "
                        "checkpoint_steps=true); cached apart, summary in benchmarks/reference_speed-KEY-VALUE.md")
    p.add_argument("--cell", nargs=3, metavar=("SIDE", "SETTING", "REPEAT"), help="one measurement; prints JSON")
    p.add_argument("--experts", nargs=2, metavar=("SIDE", "SETTING"), help="build one side's experts of a setting")
    a = p.parse_args(argv)
    profile = PROFILES["smoke" if a.smoke else "full"]
    a.warmup = profile.warmup if a.warmup is None else a.warmup
    a.timed = profile.timed if a.timed is None else a.timed
    a.repeats = profile.repeats if a.repeats is None else a.repeats
    overrides = parse_settings(a.d3hf, "--d3hf")
    slug = "-".join(f"{k}-{v}" for k, v in overrides.items())
    paths = Paths(a.cache, profile, f"w{a.warmup}-t{a.timed}-{a.allocator}" + (f"-{slug}" if slug else ""))
    flags = (["--smoke"] if a.smoke else []) + ["--warmup", str(a.warmup), "--timed", str(a.timed), "--allocator",
                                                a.allocator, "--cache", a.cache] + (["--d3hf", a.d3hf] if slug else [])
    if a.official:
        flags += ["--official", os.path.abspath(a.official)]
    if a.cell:
        side, name, _ = a.cell
        setting = SETTINGS[name]
        if side == "official":
            record = run_official(setting, paths, need_official(a), a.allocator, a.warmup, a.timed)
        else:
            record = run_d3hf(setting, profile, paths, a.allocator, a.warmup, a.timed, overrides)
        import torch

        record["torch_threads"] = torch.get_num_threads()
        record["train_images"] = profile.train_images
        print(json.dumps(record))
        return
    if a.experts:
        side, name = a.experts
        if side == "d3hf":
            build_d3hf_experts(SETTINGS[name], profile, paths)
        else:
            build_official_experts(SETTINGS[name], profile, paths, need_official(a))
        return
    names = [n.strip() for n in a.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; choose from {', '.join(SETTINGS)}")
    cells: dict = {}
    for name in names:
        setting = SETTINGS[name]
        prepare(a, paths, setting, profile, flags)
        for repeat in range(a.repeats):
            for side in SIDES:  # interleaved: official, d3hf, official, d3hf
                cells.setdefault((name, side), []).append(cached_cell(a, paths, setting, side, repeat, flags))
    command = "python benchmarks/reference_speed.py --official PATH" + "".join(
        f" {f}" for f in (["--smoke"] if a.smoke else []) + (
            [f"--settings {a.settings}"] if names != list(SETTINGS) else []) + (
            [f"--allocator {a.allocator}"] if a.allocator != "native" else []) + (
            [f"--warmup {a.warmup}"] if a.warmup != profile.warmup else []) + (
            [f"--timed {a.timed}"] if a.timed != profile.timed else []) + (
            [f"--repeats {a.repeats}"] if a.repeats != profile.repeats else []) + (
            [f"--d3hf {a.d3hf}"] if slug else []))
    text = summary(cells, command, machine())
    default = os.path.join(HERE, f"reference_speed-{slug}.md") if slug else SUMMARY
    out = a.out or (os.path.join(paths.root, "reference_speed.md") if a.smoke else default)
    with open(out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    sys.path.insert(0, REPO)  # run as a file: d3hf and benchmarks from this checkout
    main()
