"""Settings of a distillation run, one dataclass per concern.

``d3hf distill CONFIG.yaml --key value`` parses them together with one ``HfArgumentParser``
from one flat YAML, as alignment-handbook does: each key belongs to exactly one section, so a
recipe never names sections. ``DistillArguments`` holds the six sections; the runner hands each
component only what it uses (the distiller ``MatchingArguments`` and a seed, the experts an
``ExpertSettings`` made from ``ExpertArguments``).
Every value is checked when its section is built, the relations between sections when
``DistillArguments`` is, so a refused run does no work.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Optional

from ..errors import ConfigError

# Named decoders of the reference code (3x64x64 output).
NAMED_DECODERS = ("small", "medium", "large")
SWITCHES = ("auto", "true", "false", "yes", "no", "on", "off", "1", "0")


def setting(default: Any, help: str, **metadata) -> Any:
    """A settings field; ``metadata`` goes to argparse (``choices``, ``aliases``)."""
    return field(default=default, metadata={"help": help, **metadata})


class _Section:
    """Checks shared by the sections: types (YAML strings for numbers are refused), choices and
    the lower bounds each section declares in ``AT_LEAST`` (>=) and ``ABOVE`` (>).

    ``BOOKKEEPING`` names the keys that do not change what a run computes: a run resumed with
    other values of them continues instead of being refused."""

    AT_LEAST: ClassVar[dict[str, float]] = {}
    ABOVE: ClassVar[dict[str, float]] = {}
    BOOKKEEPING: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value, kind = getattr(self, f.name), _plain_type(hints[f.name])
            expected = {int: int, float: (int, float), bool: bool, str: str}.get(kind)
            if value is None and hints[f.name] is kind:  # not Optional
                raise ConfigError(f"Config key {f.name!r} needs a value of type {kind.__name__}; got null.")
            if value is None or expected is None:
                continue
            if not isinstance(value, expected) or (kind in (int, float) and isinstance(value, bool)):
                raise ConfigError(f"Config key {f.name!r} must be of type {kind.__name__}; got {value!r}.")
            choices = f.metadata.get("choices")
            if choices and value not in choices:  # YAML values bypass argparse's own check
                raise ConfigError(f"Config key {f.name!r} must be one of {choices}; got {value!r}.")
            if f.name in self.AT_LEAST and value < self.AT_LEAST[f.name]:
                _refuse(f.name, f"{'an integer' if kind is int else 'a number'} >= {self.AT_LEAST[f.name]}", value)
            if f.name in self.ABOVE and not value > self.ABOVE[f.name]:
                _refuse(f.name, f"a number > {self.ABOVE[f.name]}", value)
        self.check()

    def check(self) -> None:
        """Rules within the section beyond types and bounds."""


# Settings added after the first release, each with the value that computes what d3hf computed
# before it existed (for decoder_family not today's default): a run folder written earlier ran
# with it, and a digest of settings (the benchmark grid's) can leave a setting at it out.
ADDED_SETTINGS = {"data_dir": None, "compile_inner_step": False, "decoder_family": "nearest", "expert_epoch_rows": 0,
                  "image_size": None, "channels": "auto", "expert_augment": "none", "mmd_augment": "none",
                  "mtt_augment": "none", "mmd_feature_net": "expert"}


@dataclass
class DataArguments(_Section):
    """Which data is distilled and which split it is evaluated on."""

    _argument_group_name = "data (what is distilled, what it is tested on)"  # a --help heading
    dataset: str = setting("mnist5k", "built-in name (mnist5k, digits, fashion_mnist), local path or Hub dataset id")
    dataset_config: Optional[str] = setting(None, "Hub dataset config name")
    dataset_revision: Optional[str] = setting(None, "Hub dataset revision")
    data_dir: Optional[str] = setting(None, "folder holding a built-in dataset's files (fashion_mnist: its idx "
                                      "files; else the Debian package's, else the Hub's)")
    image_column: str = setting("image", "column holding the images")
    label_column: str = setting("label", "column holding the class labels")
    train_split: str = setting("train", "split to distil")
    test_split: str = setting("test", "held-out split for the final evaluation (test: else the source's "
                              "validation or valid split, else test_size of train)")
    test_size: float = setting(0.2, "held-out share when the source has no test split")
    validation_size: float = setting(
        0.0, "tune on a stratified share of train held out as the evaluation split (test unused)")
    image_size: Optional[str] = setting(None, "resize every image (bilinear) to this size: 64 or 64,48 (H,W); "
                                        "default: the first training image's")
    channels: str = setting("auto", "convert every image: L (grayscale), RGB, or auto (the first training "
                            "image's)", choices=["auto", "L", "RGB"])

    def image_hw(self) -> tuple[int, int] | None:
        """``image_size`` as (H, W), or None."""
        if self.image_size is None:
            return None
        sides = [int(v) for v in re.findall(r"\d+", str(self.image_size))]
        return (sides[0], sides[0]) if len(sides) == 1 else (sides[0], sides[1])

    def check(self) -> None:
        if self.image_size is not None:
            text = str(self.image_size).strip("[]() ")
            if not re.fullmatch(r"\s*\d+\s*([,x]\s*\d+\s*)?", text) or min(int(v) for v in re.findall(r"\d+", text)) < 1:
                _refuse("image_size", "a size >= 1 (64) or H,W (64,48)", self.image_size)
        if not 0 <= self.test_size < 1:
            _refuse("test_size", "a share in [0, 1) (0: no held-out split when the source has none)", self.test_size)
        if not 0 <= self.validation_size < 1:
            _refuse("validation_size", "a share in [0, 1)", self.validation_size)


@dataclass
class RepresentationArguments(_Section):
    """What the artifact stores: the budget, priors, decoders, subtasks and their initialisation."""

    _argument_group_name = "representation (budget, priors, decoders, subtasks, warm start)"  # a --help heading
    ABOVE = {"ipc_budget": 0}
    AT_LEAST = {"init_steps": 0, "num_subtasks": 1}

    ipc_budget: float = setting(1.0, "images per class of storage, counted in scalars")
    decoder: str = setting("auto", "auto, an integer width, small/medium/large, or a decoder spec as a YAML "
                           "mapping, e.g. {channels: [64, 32, 16], start_hw: [7, 7], upsample: transpose4}")
    decoder_family: str = setting("transpose", "the family an auto or integer-width decoder comes from: "
                                  "transpose (4x4 transposed convs, the reference's layout) or nearest (upsample "
                                  "+ 3x3 conv; about 8x the FLOPs at the same parameters)",
                                  choices=["transpose", "nearest"])  # modeling.decoders' (torch-free here)
    lpc: str = setting("auto", "latent priors per class, or auto")
    z_dim: str = setting("auto", "latent size, or auto")
    soft_labels: bool = setting(False, "store a teacher's soft label per prior (counted)")
    init: str = setting("vae", "vae: decoder and priors fitted to the task's train rows first; random: N(0,1) "
                        "priors (the reference)", choices=["vae", "random"])
    init_steps: int = setting(3000, "optimiser steps (batches of 64) of the vae warm start")
    num_subtasks: int = setting(1, "split the classes into this many subtasks")
    subtasks: Optional[str] = setting(None, "explicit partition, e.g. [[0, 1], [2, 3]]")

    def decoder_value(self) -> str | dict:
        """``decoder`` as the budget planner takes it: a mapping for a spec, else the string."""
        text = str(self.decoder).strip()
        if not text.startswith("{"):
            return text
        import yaml

        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError:
            spec = None
        if not isinstance(spec, dict):
            _refuse("decoder", "a YAML mapping of decoder spec fields", self.decoder)
        from ..modeling.decoders import DecoderSpec  # here, not above: the command line's help loads no torch

        known = [f.name for f in fields(DecoderSpec)]
        unknown = sorted(set(spec) - set(known))
        if unknown:
            raise ConfigError(f"Config key 'decoder': unknown spec field(s) {unknown}; a spec has "
                              f"{', '.join(known)} (z_dim and out_shape default to the run's).")
        return spec

    def check(self) -> None:
        _auto_or_positive_int("lpc", self.lpc)
        _auto_or_positive_int("z_dim", self.z_dim)
        if not isinstance(self.decoder_value(), dict):
            _auto_or_positive_int("decoder", self.decoder, NAMED_DECODERS)
        if self.init == "vae" and self.init_steps < 1:
            raise ConfigError("init_steps must be >= 1 with init: vae; for no warm start, set init: random.")


@dataclass
class ExpertArguments(_Section):
    """The expert trajectories trained on the real data, and the network they train."""

    _argument_group_name = "experts (trajectories on the real data)"  # a --help heading
    AT_LEAST = {"num_experts": 1, "expert_epochs_total": 1, "expert_batch_size": 1, "expert_epoch_rows": 0,
                "student_depth": 0, "student_width": 1}
    ABOVE = {"expert_lr": 0}
    BOOKKEEPING = ("buffer_dir",)

    num_experts: int = setting(5, "expert trajectories trained on the real data")
    expert_epochs_total: int = setting(10, "epochs each expert trains")
    expert_lr: float = setting(0.01, "SGD learning rate of the experts")
    expert_batch_size: int = setting(256, "batch size of the experts")
    expert_epoch_rows: int = setting(0, "rows an expert 'epoch' (one snapshot) trains on, drawn on through the "
                                     "whole train split; 0 = one pass over the split")
    expert_augment: str = setting("none", "augmentation of the experts' training batches: none, or dsa (per-image "
                                  "DSA, as the reference code trains its experts)", choices=["none", "dsa"])
    expert_dtype: str = setting("float32", "snapshot dtype", choices=["float32", "float16"])
    buffer_dir: Optional[str] = setting(None, "defaults to OUTPUT_DIR/experts")
    student_depth: int = setting(
        0, "ConvNet blocks of experts and student; 0 = auto (up to 3, each seeing >= 4x4 maps)")
    student_width: int = setting(32, "channels of the experts' and student's ConvNet")


# What only the MTT term reads (its segments, inner steps and step size) and what only the MMD
# term reads: DistillArguments.unread_settings leaves them out when the term's weight is 0.
MTT_SETTINGS = frozenset({"syn_steps", "expert_epochs", "min_start_epoch", "max_start_epoch", "samples_per_class",
                          "mtt_augment", "lr_step_size", "init_step_size", "checkpoint_steps", "compile_inner_step"})
MMD_SETTINGS = frozenset({"mmd_samples", "mmd_bandwidths", "mmd_kernel_scale", "mmd_augment", "mmd_feature_net",
                          "mmd_classes_per_iter", "mmd_chunk_classes"})


@dataclass
class MatchingArguments(_Section):
    """The matching phase: trajectory matching (MTT) plus MMD, and its optimisers."""

    _argument_group_name = "matching (MTT + MMD and their optimisers)"  # a --help heading
    AT_LEAST = {"iterations": 0, "syn_steps": 1, "expert_epochs": 1, "min_start_epoch": 0, "samples_per_class": 1,
                "mtt_weight": 0, "mmd_weight": 0, "mmd_samples": 2, "mmd_classes_per_iter": 0, "lr_priors": 0,
                "lr_decoder": 0, "lr_step_size": 0}
    ABOVE = {"init_step_size": 0}
    # A finished run extended with more iterations resumes; the MMD chunking changes memory (and
    # float summation order) only, so a run may resume with a smaller one after running out.
    BOOKKEEPING = ("iterations", "mmd_chunk_classes")

    iterations: int = setting(1000, "matching iterations after the warm start (0 = none)")
    syn_steps: int = setting(10, "student SGD steps unrolled per iteration")
    expert_epochs: int = setting(2, "expert epochs between a matched start and target")
    min_start_epoch: int = setting(
        0, "matched expert segments start at an epoch in [min_start_epoch, max_start_epoch)")
    max_start_epoch: int = setting(2, "upper end (exclusive) of the matched start epochs")
    samples_per_class: int = setting(10, "decoded samples per class in each inner step")
    mtt_weight: float = setting(1.0, "weight of the trajectory-matching term")
    mtt_augment: str = setting("none", "none, or dsa: the student's inner steps train on DSA-augmented decoded "
                               "images, per-image draws (as MTT does; the D3 reference code does not)",
                               choices=["none", "dsa"])
    mmd_weight: float = setting(1.0, "weight of the MMD distribution-matching term")
    mmd_samples: int = setting(32, "real and decoded samples per class for the MMD term")
    mmd_bandwidths: str = setting("1,2,4,8,16", "RBF kernel bandwidths, comma-separated")
    mmd_kernel_scale: str = setting(
        "median", "median: distances in units of the real features' median squared distance; absolute: raw",
        choices=["median", "absolute"])
    mmd_augment: str = setting("none", "none, or dsa: each class's real and decoded MMD samples under one shared "
                               "DSA draw (siamese, as in DM); the real side is then embedded every iteration",
                               choices=["none", "dsa"])
    mmd_feature_net: str = setting("expert", "the network whose features the MMD term compares: expert (expert 0 "
                                   "at its last epoch, as the D3 reference code) or random (a freshly initialised "
                                   "network of the experts' shape each iteration, as DM)",
                                   choices=["expert", "random"])
    mmd_classes_per_iter: int = setting(0, "classes in the MMD term per iteration (0 = all)")
    mmd_chunk_classes: str = setting("auto", "classes the MMD term decodes and embeds at once, each chunk "
                                     "backpropagated before the next (bounds its memory): auto (what fits a "
                                     "quarter of the free memory, on the CPU at most 256 MB) or a number")
    checkpoint_steps: str = setting("auto", "recompute inner steps in backward: auto/true/false")
    compile_inner_step: bool = setting(False, "torch.compile the student's inner step (for GPUs: on CPU it was "
                                       "measured slower; not with checkpoint_steps)")
    lr_priors: float = setting(1.0, "SGD learning rate of the prior means and log-variances")
    lr_decoder: float = setting(1e-3, "Adam learning rate of the decoders")
    lr_step_size: float = setting(1e-2, "SGD learning rate of the learned inner step size")
    init_step_size: float = setting(0.01, "initial inner step size of the student")

    def bandwidths(self) -> list[float]:
        return [float(v) for v in str(self.mmd_bandwidths).split(",") if v.strip()]

    def check(self) -> None:
        try:
            bandwidths = self.bandwidths()
        except ValueError:
            bandwidths = []
        if not bandwidths or min(bandwidths) <= 0:
            _refuse("mmd_bandwidths", "comma-separated numbers > 0, e.g. 1,2,4,8,16", self.mmd_bandwidths)
        _auto_or_positive_int("mmd_chunk_classes", self.mmd_chunk_classes)
        if str(self.checkpoint_steps).lower() not in SWITCHES:
            raise ConfigError(f"Config key 'checkpoint_steps' must be auto, true or false; got {self.checkpoint_steps!r}.")
        if self.iterations > 0 and self.mtt_weight == 0 and self.mmd_weight == 0:
            raise ConfigError("mtt_weight and mmd_weight are both 0, so the matching iterations would learn nothing; "
                              "give one of them a weight, or set iterations: 0.")
        if not self.min_start_epoch < self.max_start_epoch:
            raise ConfigError(f"Need 0 <= min_start_epoch < max_start_epoch; got {self.min_start_epoch} and "
                              f"{self.max_start_epoch}.")


@dataclass
class EvaluationArguments(_Section):
    """The evaluation after distilling: fresh networks trained on the artifact's samples."""

    _argument_group_name = "evaluation (after distilling)"  # a --help heading
    AT_LEAST = {"eval_epochs": 0, "eval_seeds": 1, "eval_num_per_class": 1, "eval_every": 0}
    BOOKKEEPING = ("eval_epochs", "eval_seeds", "eval_num_per_class", "eval_every")

    eval_epochs: int = setting(300, "downstream epochs for the final evaluation (0 = skip)")
    eval_seeds: int = setting(1, "networks trained in the final evaluation")
    eval_num_per_class: int = setting(20, "fresh samples per class per evaluation epoch")
    eval_every: int = setting(
        0, "iterations between points of the validation curve (0 = none): each subtask's accuracy on its classes "
        "of the validation split (one network of eval_epochs epochs) and its MTT loss beside that of "
        "max(1, round(ipc_budget)) random real images per class; needs validation_size > 0. A Ctrl-C during a "
        "point stops after it")


@dataclass
class RunArguments(_Section):
    """Where and how this run executes: folders, seed, devices, checkpoints, logs."""

    _argument_group_name = "run (folders, seed, devices, checkpoints, logs)"  # a --help heading
    AT_LEAST = {"checkpoint_every": 0, "log_every": 0, "num_threads": 0, "expert_workers": 0, "memory_mb": 0,
                "ddp_timeout": 1}
    BOOKKEEPING = ("output_dir", "overwrite_output_dir", "subtask_ids", "checkpoint_every", "log_every", "num_threads",
                   "expert_workers", "memory_mb", "report_to", "ddp_timeout")

    output_dir: str = setting("outputs/d3", "may contain {process_index}: one folder per process, no shared disk")
    overwrite_output_dir: bool = setting(
        False, "start over in an output_dir that holds an earlier d3hf run with other settings (only a folder "
        "d3hf wrote is replaced)", aliases=["--overwrite"])
    seed: int = setting(0, "seed of the split, experts, initialisation and sampling")
    subtask_ids: Optional[str] = setting(
        None, "distil only these subtasks (e.g. 0,2); merge later with d3hf aggregate")
    checkpoint_every: int = setting(100, "iterations between checkpoints (0 = never)")
    log_every: int = setting(20, "iterations between log lines (0 = never)")
    cpu: bool = setting(False, "run on CPU even when a GPU is present")
    # No fp16: the unrolled MTT backward would need loss scaling, which bf16's range makes unnecessary.
    mixed_precision: str = setting("no", "autocast dtype", choices=["no", "bf16"])
    num_threads: int = setting(0, "torch threads per process (0 = leave as is)")
    expert_workers: int = setting(0, "experts trained at once on the CPU, one thread each (0 = as many as this "
                                  "process has torch threads)")
    report_to: str = setting("auto", "where the run's curves go besides metrics.jsonl: none, auto (TensorBoard "
                             "when installed), all (every installed tracker), or names, e.g. tensorboard,wandb "
                             "(trackio, wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab)")
    memory_mb: int = setting(2048, "decoded train images, and their features for the MMD term, kept in memory "
                             "per subtask, each at most (MB); larger decoded images go to a memory-mapped file "
                             "in the subtask's folder (0 = decode and embed on every read instead)")
    ddp_timeout: int = setting(1800, "seconds a collective operation of the process group may wait (only the "
                               "start of a run has any: subtasks are dealt and handed over without them)")

    def selected_subtasks(self) -> list[int] | None:
        """The sorted ``subtask_ids``, or None for every subtask; ValueError if they are not integers."""
        if not self.subtask_ids:
            return None
        return sorted({int(v) for v in str(self.subtask_ids).split(",") if v.strip()})

    def check(self) -> None:
        if not self.output_dir:
            _refuse("output_dir", "a folder", self.output_dir)
        try:
            ids = self.selected_subtasks()
        except ValueError:
            ids = []
        if ids is not None and (not ids or ids[0] < 0):
            _refuse("subtask_ids", "comma-separated subtask indices >= 0, e.g. 0,2", self.subtask_ids)
        self.trackers()

    def trackers(self) -> list[str]:
        """``report_to`` resolved: the installed trackers this run reports to (ConfigError otherwise)."""
        from .tracking import resolve_report_to

        return resolve_report_to(self.report_to)


SECTIONS: dict[str, type[_Section]] = {
    "data": DataArguments,
    "representation": RepresentationArguments,
    "experts": ExpertArguments,
    "matching": MatchingArguments,
    "evaluation": EvaluationArguments,
    "run": RunArguments,
}
# Flat key -> its section's name: recipes and the command line name keys, never sections.
SECTION_OF_KEY: dict[str, str] = {f.name: name for name, cls in SECTIONS.items() for f in fields(cls)}


class DistillArguments:
    """Every setting of a run, in six sections (``args.data``, ``args.representation``,
    ``args.experts``, ``args.matching``, ``args.evaluation``, ``args.run``).

    Build it from sections, from flat keys as a recipe names them
    (``DistillArguments(dataset="digits", ipc_budget=10)``), or both; every key has a default.
    """

    data: DataArguments
    representation: RepresentationArguments
    experts: ExpertArguments
    matching: MatchingArguments
    evaluation: EvaluationArguments
    run: RunArguments

    def __init__(self, data: DataArguments | None = None, representation: RepresentationArguments | None = None,
                 experts: ExpertArguments | None = None, matching: MatchingArguments | None = None,
                 evaluation: EvaluationArguments | None = None, run: RunArguments | None = None, **keys: Any):
        given = {"data": data, "representation": representation, "experts": experts, "matching": matching,
                 "evaluation": evaluation, "run": run}
        unknown = sorted(set(keys) - set(SECTION_OF_KEY))
        if unknown:
            raise ConfigError(f"Unknown config key(s): {', '.join(did_you_mean(k) for k in unknown)}. "
                              "`d3hf distill --help` lists every key.")
        for name, cls in SECTIONS.items():
            section_keys = {k: v for k, v in keys.items() if SECTION_OF_KEY[k] == name}
            section = given[name]
            if section is None:
                section = cls(**section_keys)
            elif not isinstance(section, cls):
                raise ConfigError(f"{name} must be a {cls.__name__}; got {type(section).__name__}.")
            elif section_keys:
                section = replace(section, **section_keys)
            setattr(self, name, section)
        self.check()

    def check(self) -> None:
        """The rules that relate sections."""
        m, e = self.matching, self.experts
        if m.max_start_epoch + m.expert_epochs > e.expert_epochs_total:
            raise ConfigError(
                f"Matched segments start before epoch max_start_epoch={m.max_start_epoch} and span "
                f"expert_epochs={m.expert_epochs}, so the experts must train at least "
                f"{m.max_start_epoch + m.expert_epochs} epochs; expert_epochs_total is {e.expert_epochs_total}. "
                "Raise expert_epochs_total or lower max_start_epoch.")
        ev = self.evaluation
        if ev.eval_every and not self.data.validation_size:
            raise ConfigError(f"eval_every={ev.eval_every} draws a validation curve, and the test split is never "
                              "used for choices: set validation_size (e.g. 0.1) to carve a validation split from "
                              "train, or eval_every 0.")
        if ev.eval_every and not ev.eval_epochs:
            raise ConfigError("eval_every needs eval_epochs > 0: each point of the curve trains a network for "
                              "eval_epochs epochs.")

    def sections(self) -> dict[str, _Section]:
        return {name: getattr(self, name) for name in SECTIONS}

    def to_dict(self) -> dict:
        """Every setting under its flat key, as a recipe writes it (an artifact records this)."""
        return {k: v for section in self.sections().values() for k, v in asdict(section).items()}

    def replace(self, **keys: Any) -> "DistillArguments":
        """A copy with the given flat keys changed (and checked)."""
        return DistillArguments(**{**self.to_dict(), **keys})

    def run_identity(self) -> dict:
        """The settings that change what is computed; a resumed run must match on all of them."""
        return {f.name: getattr(section, f.name) for section in self.sections().values() for f in fields(section)
                if f.name not in section.BOOKKEEPING}

    def unread_settings(self) -> frozenset[str]:
        """The keys this run never reads, given its other settings, so that changing one leaves the
        artifact's tensors as they are: with no matching phase (``iterations`` 0) every matching
        setting, and the experts' too unless soft labels need them; without the MTT term
        (``mtt_weight`` 0) the trajectory settings; without the MMD term (``mmd_weight`` 0) its own.
        Soft labels and the MMD term's features come from expert 0's last snapshot (or a network
        of the experts' shape), whatever the matched segments: the expert settings stay read."""
        m = self.matching
        if m.iterations == 0:
            unread = {f.name for f in fields(MatchingArguments)} - {"iterations"}
            if not self.representation.soft_labels:
                unread |= {f.name for f in fields(ExpertArguments)}
            return frozenset(unread)
        unread = set()
        if m.mtt_weight == 0:
            unread |= MTT_SETTINGS
        if m.mmd_weight == 0:
            unread |= MMD_SETTINGS
        return frozenset(unread)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DistillArguments) and self.sections() == other.sections()

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={section!r}" for name, section in self.sections().items())
        return f"DistillArguments({inner})"


def did_you_mean(key: str) -> str:
    match = difflib.get_close_matches(key, list(SECTION_OF_KEY), n=1)
    return f"{key} (did you mean {match[0]}?)" if match else key


def field_type(name: str) -> type:
    """A flat key's type, ``Optional[X]`` read as ``X``."""
    cls = SECTIONS[SECTION_OF_KEY[name]]
    return _plain_type(typing.get_type_hints(cls)[name])


def defaults() -> dict:
    """Every flat key's default value."""
    return {f.name: f.default for cls in SECTIONS.values() for f in fields(cls) if f.default is not MISSING}


def _plain_type(hint) -> Any:
    # Annotations are strings under ``from __future__ import annotations``; get_type_hints resolved them.
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _refuse(name: str, rule: str, value) -> None:
    raise ConfigError(f"Config key {name!r} must be {rule}; got {value!r}.")


def _auto_or_positive_int(name: str, value, extra: tuple[str, ...] = ()) -> None:
    text = str(value)
    if text == "auto" or text in extra:
        return
    try:
        ok = int(text) >= 1
    except ValueError:
        ok = False
    if not ok:
        _refuse(name, "'auto'" + "".join(f", {e!r}" for e in extra) + " or an integer >= 1", value)
