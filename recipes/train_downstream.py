"""Train a small image classifier on a distilled artifact's samples; test it on real data.

    python recipes/train_downstream.py --artifact /tmp/d3hf-mnist-ipc1/artifact \
        --output_dir runs/downstream-d3 --num_train_epochs 30 --dataloader_num_workers 2
    python recipes/train_downstream.py --artifact /tmp/d3hf-mnist-ipc1/artifact \
        --output_dir runs/downstream-real --num_train_epochs 30 --train_on real

The classifier is a ``ResNetForImageClassification`` built from a small ``ResNetConfig`` (no
pretrained weights), trained with ``transformers.Trainer``. With ``--train_on distilled`` the
training data is ``load_distilled(artifact, num_per_class, streaming=True)``: every epoch draws
``num_per_class`` fresh samples per class, also with dataloader workers; the script records a
hash of every image it trains on and reports how many of an epoch's images the previous
epoch had already shown. ``--train_on real`` is the baseline at the same storage: ``real_ipc``
random real train images per class (default: the artifact's ``ipc_budget``), repeated to the
same rows per epoch, same steps and same hyperparameters. Both are tested on the real test
split of the dataset and split recorded in the artifact. Results go to OUTPUT_DIR/downstream.json.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from transformers import (
    HfArgumentParser,
    ResNetConfig,
    ResNetForImageClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from d3hf import D3Model, ImageClassificationData, load_artifact, load_distilled

logger = logging.getLogger("train_downstream")


@dataclass
class DownstreamArguments:
    artifact: str = field(metadata={"help": "artifact folder or Hub repo id"})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the artifact"})
    train_on: str = field(default="distilled", metadata={"help": "distilled (fresh samples) or real (random real)"})
    num_per_class: int = field(default=100, metadata={"help": "training rows per class per epoch"})
    real_ipc: int | None = field(default=None, metadata={"help": "real images per class; default ipc_budget"})
    sample_seed: int = field(default=0, metadata={"help": "seed of the samples / of the real images picked"})
    embedding_size: int = 32
    hidden_sizes: str = field(default="32,64,128", metadata={"help": "ResNet stage widths"})
    depths: str = field(default="1,1,1", metadata={"help": "ResNet blocks per stage"})

    def __post_init__(self):
        if self.train_on not in ("distilled", "real"):
            raise ValueError(f"train_on must be 'distilled' or 'real'; got {self.train_on!r}")


# ----------------------------------------------------------------------------- data


def recorded_data(artifact: D3Model) -> ImageClassificationData:
    """The real dataset, columns and train/test split the artifact was distilled from."""
    from d3hf.distill.runner import load_recorded_data

    recorded = artifact.config.distillation
    return load_recorded_data(recorded, None if "dataset" in recorded else artifact.config.source.get("source"))


def real_training_set(data: ImageClassificationData, ipc: int, rows_per_class: int, seed: int):
    """``ipc`` random real train images per class, repeated to ``rows_per_class`` rows each."""
    from d3hf.evaluation.image_sets import random_real_images
    from d3hf.hub.datasets import samples_to_dataset

    images, labels = random_real_images(data, ipc, seed)
    real = samples_to_dataset(images, labels, class_names=data.class_names)
    rows = rows_per_class * data.num_classes
    return real.select([i % len(real) for i in range(rows)])


class ImageCollator:
    """``image``/``label`` rows (PIL or uint8 arrays) -> normalised ``pixel_values`` and ``labels``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, examples: list[dict]) -> dict:
        images = np.stack([np.asarray(e["image"], dtype=np.uint8) for e in examples])
        if images.ndim == 3:  # grayscale rows come back as H x W
            images = images[..., None]
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
        return {"pixel_values": (pixels - self.mean) / self.std,
                "labels": torch.tensor([int(e["label"]) for e in examples])}


# ----------------------------------------------------------------------------- freshness check


class EpochImageLog(TrainerCallback):
    """Hashes of the images trained on, one set per epoch (filled by ``RecordingTrainer``)."""

    def __init__(self):
        self.epochs: list[set[str]] = []

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epochs.append(set())

    def add(self, pixel_values: torch.Tensor) -> None:
        for row in pixel_values.detach().cpu().numpy():
            self.epochs[-1].add(hashlib.sha1(row.tobytes()).hexdigest())

    def repeated_fractions(self) -> list[float]:
        """For each epoch after the first, the share of its images the previous epoch showed."""
        return [len(cur & prev) / max(len(cur), 1) for prev, cur in zip(self.epochs, self.epochs[1:]) if cur]


class RecordingTrainer(Trainer):
    """A ``Trainer`` that logs every training image it sees into an ``EpochImageLog``."""

    def __init__(self, *args, image_log: EpochImageLog, **kwargs):
        super().__init__(*args, callbacks=[image_log], **kwargs)
        self.image_log = image_log

    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:
            self.image_log.add(inputs["pixel_values"])
        return super().compute_loss(model, inputs, *args, **kwargs)


# ----------------------------------------------------------------------------- model and evaluation


def build_classifier(artifact: D3Model, args: DownstreamArguments) -> ResNetForImageClassification:
    cfg = artifact.config
    config = ResNetConfig(
        num_channels=cfg.image_shape[0],
        embedding_size=args.embedding_size,
        hidden_sizes=[int(v) for v in args.hidden_sizes.split(",")],
        depths=[int(v) for v in args.depths.split(",")],
        layer_type="basic",
        num_labels=cfg.num_classes,
        id2label=dict(enumerate(cfg.class_names)),
        label2id={name: i for i, name in enumerate(cfg.class_names)},
    )
    return ResNetForImageClassification(config)


class LogitsOnly(torch.nn.Module):
    """``d3hf.evaluation.training.test_accuracy`` wants ``net(images) -> logits``."""

    def __init__(self, model: ResNetForImageClassification):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> tuple[DownstreamArguments, TrainingArguments]:
    parser = HfArgumentParser((DownstreamArguments, TrainingArguments))
    parser.set_defaults(output_dir="runs/downstream", report_to="none", save_strategy="no", logging_strategy="epoch",
                        per_device_train_batch_size=64, learning_rate=2e-3, weight_decay=5e-4, num_train_epochs=30,
                        warmup_steps=0.05, remove_unused_columns=False,
                        dataloader_pin_memory=torch.cuda.is_available())
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)


def main(argv: Sequence[str] | None = None) -> dict:
    """Train and test once; returns (and writes to OUTPUT_DIR/downstream.json) the result."""
    args, train_args = parse_args(argv)
    artifact = load_artifact(args.artifact, args.revision)
    data = recorded_data(artifact)
    rows_per_epoch = args.num_per_class * artifact.config.num_classes
    if args.train_on == "distilled":
        train_set = load_distilled(args.artifact, args.num_per_class, seed=args.sample_seed, streaming=True,
                                   revision=args.revision)
        real_ipc = None
    else:
        real_ipc = args.real_ipc or max(1, round(float(artifact.config.distillation.get("ipc_budget", 1))))
        train_set = real_training_set(data, real_ipc, args.num_per_class, args.sample_seed)
    # A stream has no length: the Trainer needs max_steps. Same steps for both kinds of data.
    # A positive --max_steps is the user's (TrainingArguments' default -1 means unset) and wins.
    if train_args.max_steps > 0:
        steps_from = "--max_steps"
    else:
        steps_per_epoch = math.ceil(rows_per_epoch / train_args.per_device_train_batch_size)
        train_args.max_steps = math.ceil(train_args.num_train_epochs * steps_per_epoch)
        steps_from = f"--num_train_epochs {train_args.num_train_epochs:g}"

    logger.info("Training on %s data: %d rows per epoch, %d steps of batch %d (from %s)", args.train_on,
                rows_per_epoch, train_args.max_steps, train_args.per_device_train_batch_size, steps_from)
    set_seed(train_args.seed)
    classifier = build_classifier(artifact, args)
    image_log = EpochImageLog()
    trainer = RecordingTrainer(model=classifier, args=train_args, train_dataset=train_set,
                               data_collator=ImageCollator(artifact.config.normalization_mean,
                                                           artifact.config.normalization_std),
                               image_log=image_log)
    train_output = trainer.train()

    from d3hf.evaluation.training import test_accuracy

    device = next(classifier.parameters()).device
    mean, std = data.normalization_tensors(device)
    accuracy = test_accuracy(LogitsOnly(classifier), data, mean, std, device)
    repeated = image_log.repeated_fractions()
    result = {
        "train_on": args.train_on,
        "test_accuracy": accuracy,
        "test_rows": len(data.labels("test")),
        "dataset": data.source_info.get("source"),
        "real_ipc": real_ipc,
        "rows_per_epoch": rows_per_epoch,
        "epochs_seen": len(image_log.epochs),
        "max_repeated_fraction": max(repeated) if repeated else None,
        "steps": train_output.global_step,
        "train_seconds": train_output.metrics.get("train_runtime"),
        "arguments": asdict(args),
        "num_train_epochs": train_args.num_train_epochs,
        "dataloader_num_workers": train_args.dataloader_num_workers,
    }
    if args.train_on == "distilled" and repeated and max(repeated) > 0:
        logger.warning("Some epochs repeated images of the previous epoch (%s): samples are not fresh.", repeated)

    from d3hf.utils.io import atomic_write_json

    atomic_write_json(os.path.join(train_args.output_dir, "downstream.json"), result)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    outcome = main()
    sys.stdout.write(
        f"{outcome['train_on']}: test accuracy {100 * outcome['test_accuracy']:.2f} % on {outcome['test_rows']} "
        f"real test images of {outcome['dataset']} ({outcome['steps']} steps, {outcome['epochs_seen']} epochs; "
        f"largest share of an epoch's images repeated from the previous epoch: {outcome['max_repeated_fraction']})\n"
    )
