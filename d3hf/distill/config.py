"""Settings of a distillation run (``d3hf distill CONFIG.yaml --key value``)."""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from ..errors import ConfigError

# Named decoders of the reference code (3x64x64 output).
NAMED_DECODERS = ("small", "medium", "large")
SWITCHES = ("auto", "true", "false", "yes", "no", "on", "off", "1", "0")


@dataclass
class DistillArguments:
    """Every key has a default; a config with ``dataset``, ``output_dir`` and ``ipc_budget`` runs."""

    # data
    dataset: str = field(default="mnist5k", metadata={"help": "embedded name, local path or Hub dataset id"})
    dataset_config: Optional[str] = field(default=None, metadata={"help": "Hub dataset config name"})
    dataset_revision: Optional[str] = field(default=None, metadata={"help": "Hub dataset revision"})
    image_column: str = field(default="image", metadata={"help": "column holding the images"})
    label_column: str = field(default="label", metadata={"help": "column holding the class labels"})
    train_split: str = field(default="train", metadata={"help": "split to distil"})
    test_split: str = field(default="test", metadata={"help": "held-out split for the final evaluation"})
    test_size: float = field(default=0.2, metadata={"help": "held-out share when the source has no test split"})
    validation_size: float = field(
        default=0.0, metadata={"help": "tune on a stratified share of train held out as the evaluation split (test unused)"}
    )
    output_dir: str = field(
        default="outputs/d3", metadata={"help": "may contain {process_index}: one folder per process, no shared disk"}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"aliases": ["--overwrite"], "help": "start over in an output_dir that holds an "
                                 "earlier d3hf run with other settings (only a folder d3hf wrote is replaced)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the split, experts, initialisation and sampling"})

    # representation and budget
    ipc_budget: float = field(default=1.0, metadata={"help": "images per class of storage, counted in scalars"})
    decoder: str = field(default="auto", metadata={"help": "auto, an integer width, or small/medium/large"})
    lpc: str = field(default="auto", metadata={"help": "latent priors per class, or auto"})
    z_dim: str = field(default="auto", metadata={"help": "latent size, or auto"})
    soft_labels: bool = field(default=False, metadata={"help": "store a teacher's soft label per prior (counted)"})
    init: str = field(default="vae", metadata={"choices": ["vae", "random"], "help": "vae: decoder and priors fitted "
                                               "to the task's train rows first; random: N(0,1) priors (the reference)"})
    init_steps: int = field(default=3000, metadata={"help": "optimiser steps (batches of 64) of the vae warm start"})

    # subtask decomposition
    num_subtasks: int = field(default=1, metadata={"help": "split the classes into this many subtasks"})
    subtasks: Optional[str] = field(default=None, metadata={"help": "explicit partition, e.g. [[0, 1], [2, 3]]"})
    subtask_ids: Optional[str] = field(
        default=None, metadata={"help": "distil only these subtasks (e.g. 0,2); merge later with d3hf aggregate"}
    )

    # experts
    num_experts: int = field(default=5, metadata={"help": "expert trajectories trained on the real data"})
    expert_epochs_total: int = field(default=10, metadata={"help": "epochs each expert trains"})
    expert_lr: float = field(default=0.01, metadata={"help": "SGD learning rate of the experts"})
    expert_batch_size: int = field(default=256, metadata={"help": "batch size of the experts"})
    expert_dtype: str = field(default="float32", metadata={"choices": ["float32", "float16"], "help": "snapshot dtype"})
    buffer_dir: Optional[str] = field(default=None, metadata={"help": "defaults to OUTPUT_DIR/experts"})
    student_depth: int = field(
        default=0, metadata={"help": "ConvNet blocks of experts and student; 0 = auto (up to 3, each seeing >= 4x4 maps)"}
    )
    student_width: int = field(default=32, metadata={"help": "channels of the experts' and student's ConvNet"})

    # objective
    iterations: int = field(default=1000, metadata={"help": "matching iterations after the warm start (0 = none)"})
    syn_steps: int = field(default=10, metadata={"help": "student SGD steps unrolled per iteration"})
    expert_epochs: int = field(default=2, metadata={"help": "expert epochs between a matched start and target"})
    min_start_epoch: int = field(
        default=0, metadata={"help": "matched expert segments start at an epoch in [min_start_epoch, max_start_epoch)"}
    )
    max_start_epoch: int = field(default=2, metadata={"help": "upper end (exclusive) of the matched start epochs"})
    samples_per_class: int = field(default=10, metadata={"help": "decoded samples per class in each inner step"})
    mtt_weight: float = field(default=1.0, metadata={"help": "weight of the trajectory-matching term"})
    mmd_weight: float = field(default=1.0, metadata={"help": "weight of the MMD distribution-matching term"})
    mmd_samples: int = field(default=32, metadata={"help": "real and decoded samples per class for the MMD term"})
    mmd_bandwidths: str = field(default="1,2,4,8,16", metadata={"help": "RBF kernel bandwidths, comma-separated"})
    mmd_kernel_scale: str = field(
        default="median",
        metadata={"choices": ["median", "absolute"],
                  "help": "median: distances in units of the real features' median squared distance; absolute: raw"},
    )
    mmd_classes_per_iter: int = field(default=0, metadata={"help": "classes in the MMD term per iteration (0 = all)"})
    checkpoint_steps: str = field(default="auto", metadata={"help": "recompute inner steps in backward: auto/true/false"})

    # optimisers
    lr_priors: float = field(default=1.0, metadata={"help": "SGD learning rate of the prior means and log-variances"})
    lr_decoder: float = field(default=1e-3, metadata={"help": "Adam learning rate of the decoders"})
    lr_step_size: float = field(default=1e-2, metadata={"help": "SGD learning rate of the learned inner step size"})
    init_step_size: float = field(default=0.01, metadata={"help": "initial inner step size of the student"})

    # bookkeeping
    checkpoint_every: int = field(default=100, metadata={"help": "iterations between checkpoints (0 = never)"})
    log_every: int = field(default=20, metadata={"help": "iterations between log lines (0 = never)"})
    cpu: bool = field(default=False, metadata={"help": "run on CPU even when a GPU is present"})
    # No fp16: the unrolled MTT backward would need loss scaling, which bf16's range makes unnecessary.
    mixed_precision: str = field(default="no", metadata={"choices": ["no", "bf16"], "help": "autocast dtype"})
    num_threads: int = field(default=0, metadata={"help": "torch threads per process (0 = leave as is)"})

    # evaluation after distilling
    eval_epochs: int = field(default=300, metadata={"help": "downstream epochs for the final evaluation (0 = skip)"})
    eval_seeds: int = field(default=1, metadata={"help": "networks trained in the final evaluation"})
    eval_num_per_class: int = field(default=20, metadata={"help": "fresh samples per class per evaluation epoch"})

    def __post_init__(self) -> None:
        check_arguments(self)

    def to_dict(self) -> dict:
        return asdict(self)

    def bandwidths(self) -> list[float]:
        return [float(v) for v in str(self.mmd_bandwidths).split(",") if v.strip()]

    def selected_subtasks(self) -> list[int] | None:
        """The sorted ``subtask_ids``, or None for every subtask; ValueError if they are not integers."""
        if not self.subtask_ids:
            return None
        return sorted({int(v) for v in str(self.subtask_ids).split(",") if v.strip()})

    # Keys that change what is computed; a resumed run must match on all of them.
    def run_identity(self) -> dict:
        skip = {"output_dir", "overwrite_output_dir", "checkpoint_every", "log_every", "num_threads", "eval_epochs",
                "eval_seeds", "eval_num_per_class", "buffer_dir", "iterations", "subtask_ids"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}


def field_type(name: str) -> type:
    """A field's type, ``Optional[X]`` read as ``X`` (annotations are strings under
    ``from __future__ import annotations``, so they are resolved here)."""
    hint = _HINTS[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


_HINTS = typing.get_type_hints(DistillArguments)


def _refuse(name: str, rule: str, value) -> None:
    raise ConfigError(f"Config key {name!r} must be {rule}; got {value!r}.")


def _auto_or_positive_int(args: DistillArguments, name: str, extra: tuple[str, ...] = ()) -> None:
    value = str(getattr(args, name))
    if value == "auto" or value in extra:
        return
    try:
        ok = int(value) >= 1
    except ValueError:
        ok = False
    if not ok:
        _refuse(name, "'auto'" + "".join(f", {e!r}" for e in extra) + " or an integer >= 1", getattr(args, name))


def check_arguments(args: DistillArguments) -> None:
    """Every setting's type, range and relation to the others, before any work starts."""
    for f in fields(args):
        value, kind = getattr(args, f.name), field_type(f.name)
        expected = {int: int, float: (int, float), bool: bool, str: str}.get(kind)
        if value is None and _HINTS[f.name] is kind:  # not Optional
            raise ConfigError(f"Config key {f.name!r} needs a value of type {kind.__name__}; got null.")
        if value is None or expected is None:
            continue
        if not isinstance(value, expected) or (kind in (int, float) and isinstance(value, bool)):
            raise ConfigError(f"Config key {f.name!r} must be of type {kind.__name__}; got {value!r}.")
        choices = f.metadata.get("choices")
        if choices and value not in choices:  # YAML values bypass argparse's own check
            raise ConfigError(f"Config key {f.name!r} must be one of {choices}; got {value!r}.")
    at_least = {"num_experts": 1, "expert_epochs_total": 1, "expert_batch_size": 1, "student_depth": 0,
                "student_width": 1, "iterations": 0, "syn_steps": 1, "expert_epochs": 1, "min_start_epoch": 0,
                "samples_per_class": 1, "mmd_samples": 2, "mmd_classes_per_iter": 0, "num_subtasks": 1,
                "checkpoint_every": 0, "log_every": 0, "num_threads": 0, "eval_epochs": 0, "eval_seeds": 1,
                "eval_num_per_class": 1, "init_steps": 0}
    for name, low in at_least.items():
        if getattr(args, name) < low:
            _refuse(name, f"an integer >= {low}", getattr(args, name))
    for name in ("ipc_budget", "expert_lr", "init_step_size"):
        if not getattr(args, name) > 0:
            _refuse(name, "a number > 0", getattr(args, name))
    for name in ("mtt_weight", "mmd_weight", "lr_priors", "lr_decoder", "lr_step_size"):
        if not getattr(args, name) >= 0:
            _refuse(name, "a number >= 0", getattr(args, name))
    if not 0 <= args.test_size < 1:
        _refuse("test_size", "a share in [0, 1) (0: no held-out split when the source has none)", args.test_size)
    if not 0 <= args.validation_size < 1:
        _refuse("validation_size", "a share in [0, 1)", args.validation_size)
    if not args.output_dir:
        _refuse("output_dir", "a folder", args.output_dir)
    _auto_or_positive_int(args, "lpc")
    _auto_or_positive_int(args, "z_dim")
    _auto_or_positive_int(args, "decoder", NAMED_DECODERS)
    try:
        bandwidths = args.bandwidths()
    except ValueError:
        bandwidths = []
    if not bandwidths or min(bandwidths) <= 0:
        _refuse("mmd_bandwidths", "comma-separated numbers > 0, e.g. 1,2,4,8,16", args.mmd_bandwidths)
    if str(args.checkpoint_steps).lower() not in SWITCHES:
        raise ConfigError(f"Config key 'checkpoint_steps' must be auto, true or false; got {args.checkpoint_steps!r}.")
    if args.init == "vae" and args.init_steps < 1:
        raise ConfigError("init_steps must be >= 1 with init: vae; for no warm start, set init: random.")
    if args.iterations > 0 and args.mtt_weight == 0 and args.mmd_weight == 0:
        raise ConfigError("mtt_weight and mmd_weight are both 0, so the matching iterations would learn nothing; "
                          "give one of them a weight, or set iterations: 0.")
    if not args.min_start_epoch < args.max_start_epoch:
        raise ConfigError(f"Need 0 <= min_start_epoch < max_start_epoch; got {args.min_start_epoch} and "
                          f"{args.max_start_epoch}.")
    if args.max_start_epoch + args.expert_epochs > args.expert_epochs_total:
        raise ConfigError(
            f"Matched segments start before epoch max_start_epoch={args.max_start_epoch} and span "
            f"expert_epochs={args.expert_epochs}, so the experts must train at least "
            f"{args.max_start_epoch + args.expert_epochs} epochs; expert_epochs_total is {args.expert_epochs_total}. "
            "Raise expert_epochs_total or lower max_start_epoch.")
    try:
        ids = args.selected_subtasks()
    except ValueError:
        ids = []
    if ids is not None and (not ids or ids[0] < 0):
        _refuse("subtask_ids", "comma-separated subtask indices >= 0, e.g. 0,2", args.subtask_ids)
