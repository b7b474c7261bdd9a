"""Downstream evaluation: train a fresh classifier on distilled data, test on real held-out data.

The reported number is the FINAL-epoch test accuracy (never the best over checkpoints),
as mean and std over seeds, with the protocol written beside it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import asdict
from typing import Callable, NamedTuple

import numpy as np
import torch

from ..data.image_data import ImageClassificationData
from ..nn.augment import named_augmentation
from ..nn.networks import build_classifier
from ..nn.sgd import train_epoch
from ..utils.environment import measured_on
from ..utils.io import CorruptFileError, read_checked, write_checked
from ..utils.seeding import AUGMENT_STREAM, EVAL_SAMPLES_STREAM, class_seed
from .protocols import Protocol

logger = logging.getLogger(__name__)


CHECKPOINT_SECONDS = 60.0  # between saves of a resumable downstream training: ms each, at most a minute lost


TrainSource = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def test_accuracy(net: torch.nn.Module, data: ImageClassificationData, mean, std, device, batch_size: int = 1000) -> float:
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in data.iter_batches("test", batch_size):
            images = ((images.to(device) - mean) / std)
            correct += int((net(images).argmax(1).cpu() == labels).sum())
            total += len(labels)
    net.train()
    return correct / max(total, 1)


def train_network(
    train_source: TrainSource,
    data: ImageClassificationData,
    protocol: Protocol,
    seed: int,
    device: torch.device | str = "cpu",
    show_progress: bool = False,
    checkpoint: str | None = None,
    checkpoint_seconds: float | None = None,
    test_every: int | None = None,
) -> TrainedNetwork:
    """Train one network for ``protocol.epochs`` epochs; ``train_source(epoch)`` gives that
    epoch's (images in pixel scale, labels).

    With ``test_every`` (epochs), the network is tested every that many epochs and after the last
    one: ``test_curve`` holds (epochs trained, test accuracy), to show a run has converged. The
    reported number stays the final epoch's.

    With ``augment="dsa"`` every normalised batch is augmented, each image with its own
    parameters, as the DSA reference trains its evaluation networks.

    With ``checkpoint`` (a file path, one per training set and seed), the whole training state is
    saved there at an epoch's end at most every ``checkpoint_seconds`` (default
    ``CHECKPOINT_SECONDS``) and after the last one, and a run that finds it resumes from it: a
    resumed run gives the same network as an uninterrupted one (same device and thread count).
    The finished state stays there, so a run stopped before its result is kept trains nothing
    again; the caller removes the file once the result is safe.
    """
    from ..utils.progress import bar as progress_bar

    if test_every is not None and test_every < 1:
        raise ValueError(f"test_every must be a positive number of epochs, got {test_every}")
    augment = named_augmentation(protocol.augment)
    device = torch.device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # A generator of its own, so augmentation never shifts the seed's other random streams.
    augment_rng = torch.Generator().manual_seed(class_seed(seed, AUGMENT_STREAM))
    net = build_classifier(protocol.arch, data.image_shape, data.num_classes, protocol.depth, protocol.width).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=protocol.lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[protocol.epochs // 2], gamma=0.1)
    state = _TrainingState(net, opt, sched, rng, augment_rng, {"protocol": asdict(protocol), "seed": seed},
                           measured_on(device))
    first_epoch = state.load(checkpoint) if checkpoint else 0
    if checkpoint_seconds is None:
        checkpoint_seconds = CHECKPOINT_SECONDS
    last_save = time.monotonic()
    mean, std = data.normalization_tensors(device)
    epochs = progress_bar("evaluate", range(first_epoch, protocol.epochs), disable=not show_progress, leave=False,
                          initial=first_epoch, total=protocol.epochs, postfix=f"seed {seed}")
    def batches(images: torch.Tensor, labels: torch.Tensor, order: np.ndarray):
        for start in range(0, len(order), protocol.batch_size):
            idx = torch.from_numpy(order[start : start + protocol.batch_size])
            x = (images[idx].to(device) - mean) / std
            yield (augment(x, augment_rng) if augment is not None else x), labels[idx].to(device)

    for epoch in epochs:
        images, labels = train_source(epoch)
        train_epoch(net, opt, batches(images, labels, rng.permutation(len(labels))))
        sched.step()
        if test_every and ((epoch + 1) % test_every == 0 or epoch + 1 == protocol.epochs):
            state.test_curve.append((epoch + 1, test_accuracy(net, data, mean, std, device)))
        if checkpoint and (epoch + 1 == protocol.epochs or time.monotonic() - last_save >= checkpoint_seconds):
            state.save(checkpoint, epoch + 1)
            last_save = time.monotonic()
    return TrainedNetwork(net, state.seconds(), first_epoch, state.seconds_before, state.earlier_environments(),
                          state.test_curve)


class TrainedNetwork(NamedTuple):
    net: torch.nn.Module
    seconds: float  # of training, including those before a resume (up to its checkpoint)
    resumed_from_epoch: int  # 0: trained from scratch
    seconds_before_resume: float
    checkpointed_on: list[dict]  # other machines (d3hf.environment.measured_on) it ran on before a resume
    test_curve: list[tuple[int, float]]  # (epochs trained, test accuracy) with ``test_every``; else empty


class _TrainingState:
    """Everything a downstream training run's next epoch depends on, saved to and loaded from one
    checked file; ``identity`` (protocol and seed) must match for a file to be resumed from. It
    also carries the machines earlier runs trained on, so a resumed number names all of them."""

    def __init__(self, net, opt, sched, rng: np.random.Generator, augment_rng: torch.Generator, identity: dict,
                 environment: dict):
        self.net, self.opt, self.sched, self.rng, self.augment_rng = net, opt, sched, rng, augment_rng
        self.identity = json.dumps(identity, sort_keys=True)
        self.seconds_before, self.started = 0.0, time.monotonic()
        self.environment, self.environments = environment, [environment]
        self.test_curve: list[tuple[int, float]] = []  # carried across a resume

    def earlier_environments(self) -> list[dict]:
        return [e for e in self.environments if e != self.environment]

    def seconds(self) -> float:
        return self.seconds_before + time.monotonic() - self.started

    def save(self, path: str, next_epoch: int) -> None:
        buffer = io.BytesIO()
        torch.save({"identity": self.identity, "next_epoch": next_epoch, "net": self.net.state_dict(),
                    "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                    "rng": self.rng.bit_generator.state, "augment_rng": self.augment_rng.get_state(),
                    "torch_rng": torch.get_rng_state(), "seconds": self.seconds(),
                    "environments": self.environments, "test_curve": self.test_curve}, buffer)
        write_checked(path, buffer.getvalue())

    def load(self, path: str) -> int:
        """The epoch to start from: the saved one, or 0 when there is no usable file."""
        if not os.path.exists(path):
            return 0
        try:
            saved = torch.load(io.BytesIO(read_checked(path)), map_location="cpu", weights_only=True)
        except CorruptFileError as err:
            logger.warning("%s; training this network from epoch 0", err)
            return 0
        if saved["identity"] != self.identity:
            logger.warning("%s was saved by another protocol or seed; training this network from epoch 0", path)
            return 0
        self.net.load_state_dict(saved["net"])
        self.opt.load_state_dict(saved["opt"])  # moves its tensors to the parameters' device
        self.sched.load_state_dict(saved["sched"])
        self.rng.bit_generator.state = saved["rng"]
        self.augment_rng.set_state(saved["augment_rng"])
        torch.set_rng_state(saved["torch_rng"])  # a train_source may draw from it (the CPU generator)
        self.seconds_before = float(saved["seconds"])
        self.environments = saved.get("environments", [])  # absent from checkpoints written before it was kept
        self.test_curve = [(int(e), float(a)) for e, a in saved.get("test_curve", [])]
        if self.environment not in self.environments:
            self.environments.append(self.environment)
        logger.info("resuming downstream training from %s at epoch %d", path, saved["next_epoch"])
        return int(saved["next_epoch"])


def train_and_test(train_source: TrainSource, data: ImageClassificationData, protocol: Protocol, seed: int,
                   device: torch.device | str = "cpu", **options) -> float:
    """``train_network`` (``options``: its keyword arguments), then the trained network's accuracy
    on the test split."""
    device = torch.device(device)
    net = train_network(train_source, data, protocol, seed, device, **options).net
    mean, std = data.normalization_tensors(device)
    return test_accuracy(net, data, mean, std, device)


def model_source(model, num_per_class: int, seed: int, with_means: bool = False) -> TrainSource:
    """Fresh samples from a D3 artifact every epoch (plus every prior's mean image if asked)."""
    means = model.mean_images() if with_means else None

    def source(epoch: int):
        images, labels = model.sample(num_per_class, seed=class_seed(seed, EVAL_SAMPLES_STREAM, epoch))
        if means is None:
            return images, labels
        return torch.cat([images, means[0]]), torch.cat([labels, means[1]])

    return source


class FixedSource:
    """The same images every epoch: an image set (random real images, a coreset, DM images)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __call__(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images, self.labels


def fixed_source(images: torch.Tensor, labels: torch.Tensor) -> TrainSource:
    """Train on ``images`` (pixel scale) every epoch."""
    return FixedSource(images, labels)


def evaluate(make_source: Callable[[int], TrainSource], data: ImageClassificationData, protocol: Protocol,
             seeds: int = 1, device="cpu", show_progress: bool = False, checkpoint_dir: str | None = None,
             test_every: int | None = None) -> dict:
    """Mean and std (over ``seeds``) of the final test accuracy; ``make_source(seed)``. ``split``
    names the split scored: "validation" when it was carved from train for tuning. With
    ``checkpoint_dir`` (one per training source), each seed's training resumes from there (the
    caller removes the folder once the result is kept); with ``test_every``, ``test_curves``
    holds each seed's curve (``train_network``)."""
    device = torch.device(device)
    mean, std = data.normalization_tensors(device)
    accs, runs, fixed_set = [], [], False
    for s in range(seeds):
        checkpoint = os.path.join(checkpoint_dir, f"eval-seed{s}.pt") if checkpoint_dir else None
        source = make_source(s)
        fixed_set = isinstance(source, FixedSource)
        runs.append(train_network(source, data, protocol, s, device, show_progress, checkpoint,
                                  test_every=test_every))
        # With a test curve its last point is the final epoch's test: not run a second time.
        curve = runs[-1].test_curve
        accs.append(curve[-1][1] if curve else test_accuracy(runs[-1].net, data, mean, std, device))
    result = {
        "split": data.source_info.get("test_split", "test"),
        "protocol": protocol.name,
        "arch": protocol.arch,
        "mean": float(np.mean(accs)),
        "std": float(np.std(accs)),
        "seeds": seeds,
        "accuracies": accs,
        "resumed_from_epochs": [run.resumed_from_epoch for run in runs],
        "seconds_before_resume": [run.seconds_before_resume for run in runs],
        "settings": asdict(protocol),
        # Said per source: a fixed image set must not read as fresh samples from an artifact.
        "notes": protocol.describe(fixed_set),
        "measured_on": measured_on(device),
    }
    if test_every:
        result["test_curves"] = [run.test_curve for run in runs]
    # A run resumed from a checkpoint made elsewhere trained partly on another machine.
    for environment in (e for run in runs for e in run.checkpointed_on):
        if environment not in result.setdefault("checkpointed_on", []):
            result["checkpointed_on"].append(environment)
    return result
