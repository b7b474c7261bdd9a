"""Downstream evaluation: train a fresh classifier on distilled data, test on real held-out data.

The reported number is the FINAL-epoch test accuracy (never the best over checkpoints),
as mean and std over seeds, with the protocol written beside it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .data import ImageClassificationData
from .networks import build_classifier

logger = logging.getLogger(__name__)


@dataclass
class Protocol:
    """P-noaug: ConvNet-3 width 128 (instance norm), SGD 0.01 m0.9 wd 5e-4, batch 256,
    lr x0.1 at half, 300 epochs, no augmentation, 20 fresh samples per class per epoch."""

    name: str = "P-noaug"
    arch: str = "convnet"
    depth: int = 3
    width: int = 128
    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    num_per_class: int = 20
    augment: str = "none"

    def describe(self) -> str:
        return (f"{self.name}: {self.arch}-{self.depth} width {self.width}, SGD lr {self.lr} momentum {self.momentum} "
                f"wd {self.weight_decay}, batch {self.batch_size}, lr x0.1 at epoch {self.epochs // 2}, "
                f"{self.epochs} epochs, augmentation {self.augment}, final-epoch test accuracy")


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


def train_and_test(
    train_source: TrainSource,
    data: ImageClassificationData,
    protocol: Protocol,
    seed: int,
    device: torch.device | str = "cpu",
    show_progress: bool = False,
) -> float:
    """Train one network for ``protocol.epochs`` epochs; ``train_source(epoch)`` gives that
    epoch's (images in [0, 1], labels). Returns the final test accuracy."""
    from tqdm.auto import tqdm

    if protocol.augment != "none":
        raise ValueError(f"augmentation {protocol.augment!r} is not available; use 'none'")
    device = torch.device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_classifier(protocol.arch, data.image_shape, data.num_classes, protocol.depth, protocol.width).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=protocol.lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[protocol.epochs // 2], gamma=0.1)
    mean, std = data.normalization_tensors(device)
    for epoch in tqdm(range(protocol.epochs), desc=f"eval seed {seed}", disable=not show_progress, leave=False):
        images, labels = train_source(epoch)
        order = rng.permutation(len(labels))
        for start in range(0, len(order), protocol.batch_size):
            idx = torch.from_numpy(order[start : start + protocol.batch_size])
            x = (images[idx].to(device) - mean) / std
            loss = F.cross_entropy(net(x), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return test_accuracy(net, data, mean, std, device)


def model_source(model, num_per_class: int, seed: int) -> TrainSource:
    """Fresh samples from a D3 artifact every epoch."""
    from .modeling_d3 import class_seed

    def source(epoch: int):
        return model.sample(num_per_class, seed=class_seed(seed, 104729, epoch))

    return source


def fixed_source(images: torch.Tensor, labels: torch.Tensor) -> TrainSource:
    return lambda epoch: (images, labels)


def random_real_images(data: ImageClassificationData, ipc: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` random train images per class (the classic random-real baseline)."""
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(rows, size=min(ipc, len(rows)), replace=False) for rows in data.class_rows])
    idx.sort()
    return data.images(idx), torch.from_numpy(data.labels()[idx])


def evaluate(make_source: Callable[[int], TrainSource], data: ImageClassificationData, protocol: Protocol,
             seeds: int = 1, device="cpu", show_progress: bool = False) -> dict:
    """Mean and std (over ``seeds``) of the final test accuracy; ``make_source(seed)``."""
    accs = [train_and_test(make_source(s), data, protocol, s, device, show_progress) for s in range(seeds)]
    return {
        "protocol": protocol.name,
        "arch": protocol.arch,
        "mean": float(np.mean(accs)),
        "std": float(np.std(accs)),
        "seeds": seeds,
        "accuracies": accs,
        "settings": asdict(protocol),
        "notes": protocol.describe(),
    }
