"""Settings of a distillation run (``d3hf distill CONFIG.yaml --key value``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass
class DistillArguments:
    """Every key has a default; a config with ``dataset``, ``output_dir`` and ``ipc_budget`` runs."""

    # data
    dataset: str = field(default="mnist5k", metadata={"help": "embedded name, local path or Hub dataset id"})
    dataset_config: Optional[str] = field(default=None, metadata={"help": "Hub dataset config name"})
    dataset_revision: Optional[str] = field(default=None, metadata={"help": "Hub dataset revision"})
    image_column: str = "image"
    label_column: str = "label"
    train_split: str = "train"
    test_split: str = "test"
    test_size: float = field(default=0.2, metadata={"help": "held-out share when the source has no test split"})
    validation_size: float = field(
        default=0.0, metadata={"help": "tune on a stratified share of train held out as the evaluation split (test unused)"}
    )
    output_dir: str = field(
        default="outputs/d3", metadata={"help": "may contain {process_index}: one folder per process, no shared disk"}
    )
    seed: int = 0

    # representation and budget
    ipc_budget: float = field(default=1.0, metadata={"help": "images per class of storage, counted in scalars"})
    decoder: str = field(default="auto", metadata={"help": "auto, an integer width, or small/medium/large"})
    lpc: str = field(default="auto", metadata={"help": "latent priors per class, or auto"})
    z_dim: str = field(default="auto", metadata={"help": "latent size, or auto"})
    soft_labels: bool = False
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
    num_experts: int = 5
    expert_epochs_total: int = field(default=10, metadata={"help": "epochs each expert trains"})
    expert_lr: float = 0.01
    expert_batch_size: int = 256
    expert_dtype: str = field(default="float32", metadata={"choices": ["float32", "float16"], "help": "snapshot dtype"})
    buffer_dir: Optional[str] = field(default=None, metadata={"help": "defaults to OUTPUT_DIR/experts"})
    student_depth: int = field(
        default=0, metadata={"help": "ConvNet blocks of experts and student; 0 = auto (up to 3, each seeing >= 4x4 maps)"}
    )
    student_width: int = 32

    # objective
    iterations: int = 1000
    syn_steps: int = 10
    expert_epochs: int = 2
    min_start_epoch: int = field(
        default=0, metadata={"help": "matched expert segments start at an epoch in [min_start_epoch, max_start_epoch)"}
    )
    max_start_epoch: int = 2
    samples_per_class: int = field(default=10, metadata={"help": "decoded samples per class in each inner step"})
    mtt_weight: float = 1.0
    mmd_weight: float = 1.0
    mmd_samples: int = field(default=32, metadata={"help": "real and decoded samples per class for the MMD term"})
    mmd_bandwidths: str = "1,2,4,8,16"
    mmd_kernel_scale: str = field(
        default="median",
        metadata={"choices": ["median", "absolute"],
                  "help": "median: distances in units of the real features' median squared distance; absolute: raw"},
    )
    mmd_classes_per_iter: int = field(default=0, metadata={"help": "classes in the MMD term per iteration (0 = all)"})
    checkpoint_steps: str = field(default="auto", metadata={"help": "recompute inner steps in backward: auto/true/false"})

    # optimisers
    lr_priors: float = 1.0
    lr_decoder: float = 1e-3
    lr_step_size: float = 1e-2
    init_step_size: float = 0.01

    # bookkeeping
    checkpoint_every: int = 100
    log_every: int = 20
    cpu: bool = field(default=False, metadata={"help": "run on CPU even when a GPU is present"})
    # No fp16: the unrolled MTT backward would need loss scaling, which bf16's range makes unnecessary.
    mixed_precision: str = field(default="no", metadata={"choices": ["no", "bf16"], "help": "autocast dtype"})
    num_threads: int = field(default=0, metadata={"help": "torch threads per process (0 = leave as is)"})

    # evaluation after distilling
    eval_epochs: int = field(default=300, metadata={"help": "downstream epochs for the final evaluation (0 = skip)"})
    eval_seeds: int = 1
    eval_num_per_class: int = 20

    def to_dict(self) -> dict:
        return asdict(self)

    def bandwidths(self) -> list[float]:
        return [float(v) for v in str(self.mmd_bandwidths).split(",") if v.strip()]

    # Keys that change what is computed; a resumed run must match on all of them.
    def run_identity(self) -> dict:
        skip = {"output_dir", "checkpoint_every", "log_every", "num_threads", "eval_epochs", "eval_seeds",
                "eval_num_per_class", "buffer_dir", "iterations", "subtask_ids"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}
