"""Expert trajectories: ConvNets trained on real data, one parameter snapshot per epoch.

A buffer folder holds ``settings.json`` plus one ``expert_<i>.safetensors`` per expert with a
flat parameter vector per kept epoch (``epoch_<e>``). Snapshots are read lazily.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..data.image_data import ImageClassificationData
from ..nn.augment import named_augmentation
from ..nn.networks import ConvNet, flat_parameters, unflatten
from ..nn.sgd import train_epoch
from ..utils.io import atomic_path, atomic_write_json, file_sha256
from ..utils.seeding import AUGMENT_STREAM, EXPERT_STREAM, class_seed
from .callbacks import DistillCallback, fire

logger = logging.getLogger(__name__)
_GLOBAL_RNG = threading.Lock()
ADDED_SINCE = {"epoch_rows": 0, "augment": "none"}  # settings added after buffers were first written: the value those had


@dataclass
class ExpertSettings:
    num_experts: int = 5
    epochs: int = 10
    keep_epochs: int = 4
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    depth: int = 3
    width: int = 32
    dtype: str = "float32"
    seed: int = 0
    epoch_rows: int = 0  # rows between snapshots, drawn on through the whole split; 0: one pass over it
    augment: str = "none"  # "dsa": every training batch augmented, as the reference code trains its experts


class ExpertBuffer:
    """Lazy access to stored expert trajectories."""

    def __init__(self, path: str):
        self.path = path
        with open(os.path.join(path, "settings.json")) as f:
            meta = json.load(f)
        self.settings = ExpertSettings(**meta["settings"])
        self.fingerprint = meta["data_fingerprint"]
        self.kept_epochs: list[int] = meta["kept_epochs"]
        # Per expert (str index): one {"epoch", "loss", "accuracy"} per epoch; absent in older buffers.
        self.history: dict[str, list[dict]] = meta.get("history", {})

    def __len__(self) -> int:
        return self.settings.num_experts

    def snapshot(self, expert: int, epoch: int) -> torch.Tensor:
        """Flat float32 parameters of ``expert`` after ``epoch`` epochs."""
        with safe_open(os.path.join(self.path, f"expert_{expert}.safetensors"), framework="pt") as f:
            return f.get_tensor(f"epoch_{epoch}").float()

    def final_epoch(self) -> int:
        return self.settings.epochs

    def size_on_disk(self) -> int:
        return sum(os.path.getsize(os.path.join(self.path, f)) for f in os.listdir(self.path))


def expert_network(buffer: ExpertBuffer, data: ImageClassificationData, expert: int = 0,
                   epoch: int | None = None, device=None) -> ConvNet:
    """The ConvNet of ``expert`` at ``epoch`` (default: its final epoch), frozen, in eval mode."""
    s = buffer.settings
    net = ConvNet(data.image_shape, data.num_classes, s.depth, s.width).to(device)
    flat = buffer.snapshot(expert, buffer.final_epoch() if epoch is None else epoch).to(device)
    net.load_state_dict(unflatten(net, flat), strict=True)
    return net.eval().requires_grad_(False)


def _matches(path: str, settings: ExpertSettings, fingerprint: str) -> bool:
    meta_path = os.path.join(path, "settings.json")
    if not os.path.exists(meta_path):
        return False
    with open(meta_path) as f:
        meta = json.load(f)
    stored = {**ADDED_SINCE, **meta.get("settings", {})}  # a buffer written before a setting existed
    if stored != asdict(settings) or meta.get("data_fingerprint") != fingerprint:
        return False
    return _intact(path, range(settings.num_experts), meta.get("sha256", {})) == list(range(settings.num_experts))


def _intact(path: str, experts, checksums: dict) -> list[int]:
    """The ``experts`` whose files exist and match their recorded SHA-256."""
    good = []
    for i in experts:
        file = os.path.join(path, f"expert_{i}.safetensors")
        if os.path.exists(file) and checksums.get(str(i)) == file_sha256(file):
            good.append(i)
        elif os.path.exists(file):
            logger.warning("%s does not match its recorded checksum; it will be trained again", file)
    return good


def train_one_expert(
    data: ImageClassificationData, settings: ExpertSettings, index: int, device: torch.device, progress=None
) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Train expert ``index``; returns its kept snapshots as ``{"epoch_<e>": flat params}`` and
    its history, one ``{"epoch", "loss", "accuracy"}`` (training batches) per epoch."""
    seed = class_seed(settings.seed, EXPERT_STREAM, index)
    rng = np.random.default_rng(seed)
    with _GLOBAL_RNG:  # layer init draws from torch's global generator: one expert at a time seeds and uses it
        torch.manual_seed(seed)
        net = ConvNet(data.image_shape, data.num_classes, settings.depth, settings.width).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=settings.lr, momentum=settings.momentum,
                          weight_decay=settings.weight_decay)
    mean, std = data.normalization_tensors(device)
    labels = data.labels()
    dtype = getattr(torch, settings.dtype)
    kept = {"epoch_0": flat_parameters(net).to(dtype).cpu()}
    augment = named_augmentation(settings.augment)
    # A generator of its own per expert: experts training on parallel threads draw independently.
    augment_rng = torch.Generator().manual_seed(class_seed(settings.seed, EXPERT_STREAM, AUGMENT_STREAM, index))

    def batches(order: np.ndarray):
        for start in range(0, len(order), settings.batch_size):
            idx = np.sort(order[start : start + settings.batch_size])  # sorted: Arrow reads rows in order
            x = (data.images(idx, device=device) - mean) / std
            yield (augment(x, augment_rng) if augment is not None else x), torch.from_numpy(labels[idx]).to(device)

    history = []
    orders = epoch_orders(rng, len(labels), settings.epoch_rows)
    for epoch in range(1, settings.epochs + 1):
        history.append({"epoch": epoch, **train_epoch(net, opt, batches(next(orders)))})
        if epoch <= settings.keep_epochs or epoch == settings.epochs:
            kept[f"epoch_{epoch}"] = flat_parameters(net).to(dtype).cpu()
        if progress is not None:
            progress.update(1)
    return kept, history


def epoch_orders(rng: np.random.Generator, num_rows: int, epoch_rows: int = 0) -> Iterator[np.ndarray]:
    """Each epoch's rows: a fresh permutation of all ``num_rows``; with ``epoch_rows`` > 0, the next
    ``epoch_rows`` of a stream of permutations instead, so that successive epochs sweep the whole
    split and a snapshot is taken every ``epoch_rows`` rows."""
    if epoch_rows <= 0:
        while True:
            yield rng.permutation(num_rows)
    pending = np.empty(0, dtype=np.int64)
    while True:
        while len(pending) < epoch_rows:
            pending = np.concatenate([pending, rng.permutation(num_rows)])
        yield pending[:epoch_rows]
        pending = pending[epoch_rows:]


def build_expert_buffer(
    data: ImageClassificationData,
    settings: ExpertSettings,
    path: str,
    device: torch.device | str = "cpu",
    experts: list[int] | None = None,
    show_progress: bool = True,
    callbacks: Sequence[DistillCallback] = (),
    workers: int = 1,
) -> ExpertBuffer | None:
    """Train (or reuse) the experts in ``path``; finished experts are never retrained.

    A buffer whose recorded settings and data fingerprint match is reused as is; otherwise
    stale files are replaced. ``experts`` limits the work to some indices (for splitting it
    across processes); the buffer is returned once every index has been built, else None.
    With ``workers`` > 1 on the CPU (and the train split in memory), that many experts train at
    once, each on one thread: the same experts as ``workers=1`` at one torch thread.
    """
    from ..utils.progress import bar as progress_bar

    fingerprint = data.fingerprint()
    os.makedirs(path, exist_ok=True)
    if _matches(path, settings, fingerprint):
        buffer = ExpertBuffer(path)
        logger.info("Reusing expert buffer %s (%.1f MB)", path, buffer.size_on_disk() / 1e6)
        return buffer
    meta_path = os.path.join(path, "progress.json")
    done: dict = {}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            done = json.load(f)
    if {**ADDED_SINCE, **done.get("settings", {})} != asdict(settings) or done.get("data_fingerprint") != fingerprint:
        done = {"settings": asdict(settings), "data_fingerprint": fingerprint, "finished": [], "sha256": {}}
    done["finished"] = _intact(path, done["finished"], done["sha256"])
    todo = [i for i in (experts if experts is not None else range(settings.num_experts)) if i not in done["finished"]]
    device = torch.device(device)
    bar = progress_bar("experts", total=len(todo) * settings.epochs, disable=not show_progress or not todo)

    def save(i: int, trained: tuple[dict[str, torch.Tensor], list[dict]]) -> None:
        kept, history = trained
        fire(callbacks, "on_expert_trained", i, history)
        with atomic_path(os.path.join(path, f"expert_{i}.safetensors")) as tmp:
            save_file(kept, tmp, metadata={"epochs": str(settings.epochs)})
            done["sha256"][str(i)] = file_sha256(tmp)
        done["finished"].append(i)
        done.setdefault("history", {})[str(i)] = history
        atomic_write_json(meta_path, done)
        fire(callbacks, "on_expert_saved", i, os.path.join(path, f"expert_{i}.safetensors"))

    workers = min(workers, len(todo))
    if workers > 1 and device.type == "cpu" and data.train_in_memory:
        # Small networks keep a core busier each than two cores together: MNIST-5k's five width-32
        # experts took 84 s this way and 108 s one after another on two threads (2-thread AMD EPYC).
        # Threads suffice: torch releases the GIL inside its kernels.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                futures = {pool.submit(train_one_expert, data, settings, i, device, bar): i for i in todo}
                for future in as_completed(futures):
                    save(futures[future], future.result())
        finally:
            torch.set_num_threads(threads)
    else:
        for i in todo:
            save(i, train_one_expert(data, settings, i, device, progress=bar))
    bar.close()
    if sorted(done["finished"]) == list(range(settings.num_experts)):
        kept_epochs = list(range(settings.keep_epochs + 1)) + (
            [settings.epochs] if settings.epochs > settings.keep_epochs else []
        )
        atomic_write_json(
            os.path.join(path, "settings.json"),
            {"settings": asdict(settings), "data_fingerprint": fingerprint, "kept_epochs": kept_epochs,
             "sha256": done["sha256"], "history": done.get("history", {})},
        )
        buffer = ExpertBuffer(path)
        logger.info("Expert buffer %s: %d experts, %.2f MB on disk", path, len(buffer), buffer.size_on_disk() / 1e6)
        return buffer
    return None
