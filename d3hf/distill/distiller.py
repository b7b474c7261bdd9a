"""The D3 distillation loop for one task: priors + decoder(s) trained against expert
trajectories (MTT) and real-feature distributions (MMD)."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..data.image_data import DEFAULT_MEMORY_BYTES, ImageClassificationData
from ..errors import D3HFError
from ..modeling.modeling_d3 import D3Model
from ..nn.augment import named_augmentation
from ..nn.networks import ConvNet
from ..utils.io import CorruptFileError, read_checked, write_checked
from .callbacks import DistillCallback, fire
from .config import MatchingArguments
from .experts import ExpertBuffer, expert_network
from .objectives import (
    compiled_inner_step,
    median_sq_distance,
    mmd2_unbiased,
    student_endpoint,
    trajectory_matching_loss,
    unroll_student,
)

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "distill_state.pt"


@contextlib.contextmanager
def _interrupt_between_steps() -> Iterator[Callable[[], bool]]:
    """Hold a first Ctrl-C (SIGINT) until the running step is done, so the state saved is a
    whole step's; a second Ctrl-C stops at once. Only the main thread can take signals: other
    threads run unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    received = []

    def hold(signum, frame):
        received.append(signum)
        signal.signal(signal.SIGINT, previous)  # the next Ctrl-C interrupts immediately

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield lambda: bool(received)
    finally:
        signal.signal(signal.SIGINT, previous)


class NonFiniteError(D3HFError, RuntimeError):
    """A loss or parameter became NaN/inf; the last good checkpoint is left as it was."""


# RSS the plain unroll keeps per (inner step x decoded image x student channel x pixel): 2,051 MB
# for 10 steps x 200 images x width 32 x 28x28 in benchmarks/unroll_memory.md.
PLAIN_UNROLL_BYTES_PER_UNIT = 41


def plain_unroll_bytes(args: MatchingArguments, student_width: int, image_shape, num_classes: int) -> int:
    """Estimated memory of one plain (not checkpointed) MTT unroll."""
    _, h, w = image_shape
    images = args.samples_per_class * num_classes
    return PLAIN_UNROLL_BYTES_PER_UNIT * args.syn_steps * images * student_width * h * w


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def use_step_checkpointing(args: MatchingArguments, student_width: int, image_shape, num_classes: int,
                           device: torch.device) -> bool:
    """``auto``: recompute inner steps when the plain unroll would take over a quarter of the
    device's free memory. Recomputing keeps the unroll's memory flat in syn_steps at about the
    same speed on CPU (benchmarks/unroll_memory.md); off otherwise, as it is one more code path."""
    value = str(args.checkpoint_steps).lower()
    if value == "auto":
        need, free = plain_unroll_bytes(args, student_width, image_shape, num_classes), available_memory(device)
        on = need > free // 4
        logger.info("MTT unroll: ~%.2f GB plain, %.1f GB free on %s: step checkpointing %s", need / 1e9, free / 1e9,
                    device, "on" if on else "off")
        return on
    return value in ("1", "true", "yes", "on")


# RSS the MMD term keeps per activation scalar of one decoded image (decoder feature maps plus the
# feature network's, ``mmd_activation_scalars``) while its graph waits for the backward pass;
# measured at 64x64x3 with freed memory kept for reuse, as `d3hf distill` runs, in
# benchmarks/mmd_memory.md (18.8 to 20.8 bytes, by chunk size; the largest rounded up).
MMD_BYTES_PER_SCALAR = 21


def mmd_activation_scalars(model: D3Model, feature_net: ConvNet, image_shape) -> int:
    """Activation scalars of one image of the MMD term: through the largest decoder, then the
    feature network."""
    specs = [decoder.spec for decoder in model.decoders if hasattr(decoder, "spec")]
    decoding = max((spec.activation_scalars() for spec in specs), default=0)
    return decoding + feature_net.activation_scalars(image_shape)


# Feature-map bytes (4 per activation scalar) one batch of the one-off embedding of the train rows
# may hold. Without gradients the peak is a few times that (the convolution's workspace, the
# norm's temporaries): 4,000 32x32x3 rows through a width-128 ConvNet-3 raised the peak RSS by
# 939 MB in batches of 512 and by 298 MB in batches of 128, at about the same speed.
EMBED_BATCH_BYTES = 64 * 2**20


def embedding_batch_size(feature_net: ConvNet, image_shape, budget: int, largest: int = 512) -> int:
    """Images per batch of the one-off embedding: as many as fit ``budget`` bytes of feature maps,
    between 1 and ``largest``."""
    return max(1, min(largest, budget // (4 * max(1, feature_net.activation_scalars(image_shape)))))


# On the CPU small chunks of the MMD term cost no more time than all classes at once (less, in
# benchmarks/mmd_memory.md), so larger chunks buy only memory there: ``auto`` caps a chunk's
# estimate at this many bytes. A GPU is used better by larger batches: there the bound is a
# quarter of its free memory alone.
CPU_MMD_CHUNK_BYTES = 256 * 2**20


def mmd_chunk_classes(args: MatchingArguments, num_classes: int, bytes_per_class: int, device: torch.device) -> int:
    """``auto``: as many classes per chunk as fit a quarter of the device's free memory (on the CPU,
    of this process's share of it, and at most ``CPU_MMD_CHUNK_BYTES``), at least one; otherwise
    the number given, at most the classes there are."""
    value = str(args.mmd_chunk_classes)
    if value != "auto":
        return max(1, min(num_classes, int(value)))
    free = available_memory(device)
    budget = free // 4
    if device.type == "cpu":  # the processes on this machine share its memory
        budget = min(budget // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)), CPU_MMD_CHUNK_BYTES)
    chunk = max(1, min(num_classes, budget // max(1, bytes_per_class)))
    logger.info("MMD term: ~%.2f GB for all %d classes at once, %.2f GB allowed on %s: %d class(es) per chunk",
                bytes_per_class * num_classes / 1e9, num_classes, budget / 1e9, device, chunk)
    return chunk


def read_checkpoint(directory: str) -> dict:
    """The state saved by ``Distiller.save_checkpoint`` in ``directory`` (checksum verified;
    plain tensors and containers only, ``weights_only`` loading)."""
    payload = read_checked(os.path.join(directory, CHECKPOINT_NAME))
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def _relative_distance(now: list[torch.Tensor], start: list[torch.Tensor]) -> float:
    """||now - start|| / ||start|| over a list of tensors (the absolute distance when start is 0)."""
    if not now:
        return 0.0
    delta = torch.stack([(a.detach().float() - b.float()).norm() for a, b in zip(now, start)]).norm()
    scale = torch.stack([b.float().norm() for b in start]).norm()
    return float(delta / scale) if scale > 0 else float(delta)


def _grad_norm(params: list[torch.Tensor]) -> float:
    """L2 norm of the parameters' gradients (0 when none has one)."""
    return _grad_norm_of([p.grad for p in params if p.grad is not None])


def _grad_norm_of(grads: list[torch.Tensor]) -> float:
    norms = [g.detach().float().norm() for g in grads]
    return float(torch.stack(norms).norm()) if norms else 0.0


class Distiller:
    """Owns the optimisation state of one distillation task; ``step()`` runs one iteration.

    ``model`` is a ``D3Model``, or any module with the parts used here (``config.priors_per_class``,
    ``config.z_dim``, ``prior_labels``, ``prior_means``, ``prior_logvars``, ``decoders`` and
    ``forward(prior_ids, noise)``), as the prototype-image ablation has."""

    def __init__(
        self,
        model: D3Model,
        data: ImageClassificationData,
        buffer: ExpertBuffer,
        args: MatchingArguments,
        seed: int = 0,
        device: torch.device | str | None = None,
        autocast=None,
        callbacks: Sequence[DistillCallback] = (),
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
    ):
        self.args = args
        self.callbacks = list(callbacks)
        self.data = data
        self.buffer = buffer
        self.device = torch.device(device) if device is not None else model.prior_means.device
        self.model = model.to(self.device).train()
        self.autocast = autocast or contextlib.nullcontext
        s = buffer.settings
        self.student = ConvNet(data.image_shape, data.num_classes, s.depth, s.width).to(self.device)
        self.feature_net = expert_network(buffer, data, device=self.device)
        self.student.requires_grad_(False)
        self.mean, self.std = data.normalization_tensors(self.device)
        self.log_step_size = nn.Parameter(torch.tensor(math.log(args.init_step_size), device=self.device))
        prior_params = [model.prior_means, model.prior_logvars]
        self.opt_priors = torch.optim.SGD(prior_params, lr=args.lr_priors, momentum=0.5)
        self.opt_step_size = torch.optim.SGD([self.log_step_size], lr=args.lr_step_size, momentum=0.5)
        self.opt_decoder = torch.optim.Adam(model.decoders.parameters(), lr=args.lr_decoder, weight_decay=1e-5)
        self.generator = torch.Generator().manual_seed(seed)  # CPU: the same draws on every device
        self.np_rng = np.random.default_rng(seed)
        self.iteration = 0
        self.history: list[dict] = []
        # The learned tensors as the matching phase found them (after the warm start): the
        # reference the drift records measure from; checkpointed, so a resumed run keeps it.
        self.start: dict[str, list[torch.Tensor]] | None = None
        self.checkpoint_steps = use_step_checkpointing(args, s.width, data.image_shape, data.num_classes, self.device)
        self.step_fn = None
        if args.compile_inner_step:
            if self.checkpoint_steps:
                logger.warning("compile_inner_step is ignored: the unroll recomputes its steps (checkpoint_steps)")
            else:
                self.step_fn = compiled_inner_step(self.student)
        self.bandwidths = args.bandwidths()
        self.seconds: dict[str, float] = {}  # wall time per part of the iteration, for the speed report
        self._first_iteration = 0
        # Augmented real images, or any under a network drawn afresh each iteration, are embedded
        # every iteration: there is nothing to embed once.
        self.mmd_augment = named_augmentation(args.mmd_augment)
        self.mtt_augment = named_augmentation(args.mtt_augment)
        embed_once = args.mmd_weight > 0 and self.mmd_augment is None and args.mmd_feature_net == "expert"
        self.real_features = self._embed_train_rows(memory_bytes) if embed_once else None
        classes = args.mmd_classes_per_iter if 0 < args.mmd_classes_per_iter < data.num_classes else data.num_classes
        per_class = MMD_BYTES_PER_SCALAR * max(2, args.mmd_samples) * mmd_activation_scalars(
            self.model, self.feature_net, data.image_shape)
        self.mmd_chunk_classes = mmd_chunk_classes(args, classes, per_class, self.device) if args.mmd_weight > 0 else 1

    def _embed_train_rows(self, memory_bytes: int) -> torch.Tensor | None:
        """Every train row's features under the fixed feature network, computed once (the MMD
        term's real side then costs an index instead of a forward pass per iteration), or None
        when they would take more than ``memory_bytes``."""
        n = len(self.data.labels())
        if n * self.feature_net.feature_dim * 4 > memory_bytes:
            return None
        batch_size = embedding_batch_size(self.feature_net, self.data.image_shape, EMBED_BATCH_BYTES)
        with torch.no_grad(), self.autocast():
            return torch.cat([self.feature_net.embed((real.to(self.device) - self.mean) / self.std).float()
                              for real, _ in self.data.iter_batches("train", batch_size)])

    # ------------------------------------------------------------------ one iteration

    def _prior_choice(self, classes: list[int], per_class: int, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
        """``per_class`` prior ids of each class, spread evenly over its priors, random offset."""
        lpc = self.model.config.priors_per_class
        ids = []
        for c in classes:
            perm = torch.randperm(lpc, generator=generator or self.generator)
            ids.append(c * lpc + perm[torch.arange(per_class) % lpc])
        return torch.cat(ids)

    def _decode(self, prior_ids: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        images = self.model(prior_ids.to(self.device), noise.to(self.device))
        return (images - self.mean) / self.std

    def mtt_term(self) -> tuple[torch.Tensor, dict]:
        """The normalised trajectory-matching loss of one unroll, and its raw squared distance."""
        a = self.args
        num_classes = self.data.num_classes
        expert = int(torch.randint(len(self.buffer), (1,), generator=self.generator))
        start = int(torch.randint(a.min_start_epoch, a.max_start_epoch, (1,), generator=self.generator))
        theta0 = self.buffer.snapshot(expert, start).to(self.device)
        target = self.buffer.snapshot(expert, start + a.expert_epochs).to(self.device)
        classes = list(range(num_classes))
        ids = [self._prior_choice(classes, a.samples_per_class) for _ in range(a.syn_steps)]
        noise = [torch.randn(len(i), self.model.config.z_dim, generator=self.generator) for i in ids]
        labels = self.model.prior_labels[ids[0].to(self.device)]  # same class layout every step
        # Drawn up front, like the noise: a recomputed step (checkpoint_steps) must see the same batch.
        augments = ([self.mtt_augment.sample(self.data.image_shape, len(i), self.generator, shared=False) for i in ids]
                    if self.mtt_augment is not None else None)
        step_size = self.log_step_size.exp()

        def make_batch(step: int):
            images = self._decode(ids[step], noise[step])
            return (self.mtt_augment.apply(images, augments[step]) if augments else images), labels

        with self.autocast():
            theta_n = unroll_student(self.student, theta0.clone(), make_batch, step_size, a.syn_steps,
                                     self.checkpoint_steps, [p for p in self.model.parameters() if p.requires_grad],
                                     self.step_fn)
        loss = trajectory_matching_loss(theta_n.float(), theta0, target)
        return loss, {"mtt_distance": float((theta_n.detach().float() - target).pow(2).sum())}

    def mtt_reference(self, segments: int, real: tuple[torch.Tensor, torch.Tensor] | None = None,
                      seed: int = 0) -> dict[str, float]:
        """The normalised MTT loss at the current step size, without gradients to the model, as a
        mean over ``segments`` expert segments drawn from ``seed`` (the same segments and noise at
        every call, and the run's own draws untouched): ``mtt_model`` for the model's samples, drawn
        as an iteration draws them, and, given ``real`` (pixel-scale images, labels), ``mtt_real``
        for those images as every inner step's whole batch."""
        a = self.args
        generator = torch.Generator().manual_seed(seed)
        classes = list(range(self.data.num_classes))
        step_size = self.log_step_size.detach().exp()
        sums = {"mtt_model": 0.0, **({"mtt_real": 0.0} if real is not None else {})}
        for _ in range(segments):
            expert = int(torch.randint(len(self.buffer), (1,), generator=generator))
            start = int(torch.randint(a.min_start_epoch, a.max_start_epoch, (1,), generator=generator))
            theta0 = self.buffer.snapshot(expert, start).to(self.device)
            target = self.buffer.snapshot(expert, start + a.expert_epochs).to(self.device)
            batches = {"mtt_model": []}
            with torch.no_grad(), self.autocast():
                for _ in range(a.syn_steps):
                    ids = self._prior_choice(classes, a.samples_per_class, generator)
                    noise = torch.randn(len(ids), self.model.config.z_dim, generator=generator)
                    labels = self.model.prior_labels[ids.to(self.device)]
                    batches["mtt_model"].append((self._decode(ids, noise), labels))
            if real is not None:
                real_batch = ((real[0].to(self.device) - self.mean) / self.std, real[1].to(self.device))
                batches["mtt_real"] = [real_batch] * a.syn_steps
            for key, steps in batches.items():
                with self.autocast():
                    theta_n = student_endpoint(self.student, theta0, steps, step_size)
                sums[key] += float(trajectory_matching_loss(theta_n.float(), theta0, target))
        return {key: total / segments for key, total in sums.items()}

    def _learned(self) -> dict[str, list[torch.Tensor]]:
        return {"prior_means": [self.model.prior_means], "prior_logvars": [self.model.prior_logvars],
                "decoder": list(self.model.decoders.parameters())}

    def _mmd_draw(self) -> tuple[list[int], int, torch.Tensor, torch.Tensor, np.ndarray, list]:
        """This iteration's random draws for the MMD term, all at once, so that how the classes are
        chunked never changes them: classes, samples per class, prior ids, noise, real rows, and
        with ``mmd_augment`` one DSA draw per class (shared by its real and decoded images)."""
        a = self.args
        num_classes = self.data.num_classes
        classes = list(range(num_classes))
        if 0 < a.mmd_classes_per_iter < num_classes:
            classes = sorted(torch.randperm(num_classes, generator=self.generator)[: a.mmd_classes_per_iter].tolist())
        n = max(2, a.mmd_samples)
        ids = self._prior_choice(classes, n)
        noise = torch.randn(len(ids), self.model.config.z_dim, generator=self.generator)
        rows = np.stack([self.data.sample_class_rows(c, n, self.np_rng) for c in classes])
        augments = ([self.mmd_augment.sample(self.data.image_shape, n, self.generator) for _ in classes]
                    if self.mmd_augment is not None else [None] * len(classes))
        return classes, n, ids, noise, rows, augments

    def _siamese(self, images: torch.Tensor, n: int, augments: list) -> torch.Tensor:
        """Each class's ``n`` images (in order) under that class's DSA draw."""
        if self.mmd_augment is None:
            return images
        return torch.cat([self.mmd_augment.apply(images[k * n : (k + 1) * n], params)
                          for k, params in enumerate(augments)])

    def _mmd_chunk(self, n: int, ids: torch.Tensor, noise: torch.Tensor, rows: np.ndarray,
                   augments: list) -> tuple[torch.Tensor, dict]:
        """The MMD^2 terms of some classes (``n`` decoded and ``n`` real images each, in order),
        summed over those classes, with their kernel means summed too."""
        with self.autocast():
            syn_feat = self.feature_net.embed(self._siamese(self._decode(ids, noise), n, augments)).float()
            if self.real_features is not None:  # a fixed network: the real side was embedded once
                real_feat = self.real_features[torch.from_numpy(rows.reshape(-1)).to(self.device)]
            else:
                real = (self.data.images(rows.reshape(-1), device=self.device) - self.mean) / self.std
                real_feat = self.feature_net.embed(self._siamese(real, n, augments)).float()
        total, stats = torch.zeros((), device=self.device), {"kxx": 0.0, "kyy": 0.0, "kxy": 0.0}
        for k in range(len(rows)):
            part = slice(k * n, (k + 1) * n)
            scale = median_sq_distance(real_feat[part]) if self.args.mmd_kernel_scale == "median" else 1.0
            loss, st = mmd2_unbiased(syn_feat[part], real_feat[part], self.bandwidths, scale)
            total = total + loss
            for key in stats:
                stats[key] += st[key]
        return total, stats

    def _redraw_feature_net(self) -> None:
        """Fresh weights for the MMD feature network (``mmd_feature_net: random``), seeded from the
        run's generator so that a resumed run draws the same networks, and built on the CPU so
        that every device draws the same ones."""
        seed = int(torch.randint(2**62, (1,), generator=self.generator))
        s = self.buffer.settings
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = ConvNet(self.data.image_shape, self.data.num_classes, s.depth, s.width)
        self.feature_net.load_state_dict(fresh.state_dict())

    def mmd_chunks(self) -> Iterator[tuple[torch.Tensor, dict]]:
        """The MMD term (the mean over classes of MMD^2) in parts that add up to it, each part
        ``mmd_chunk_classes`` classes decoded and embedded together with their kernel means
        (shares of the whole's): a caller that backpropagates each part before asking for the next
        holds one part's graph at a time, so the term's memory is bounded by the chunk size."""
        if self.args.mmd_feature_net == "random":
            self._redraw_feature_net()
        classes, n, ids, noise, rows, augments = self._mmd_draw()
        chunk = self.mmd_chunk_classes
        for start in range(0, len(classes), chunk):
            part = slice(start * n, (start + chunk) * n)
            loss, stats = self._mmd_chunk(n, ids[part], noise[part], rows[start : start + chunk],
                                          augments[start : start + chunk])
            yield loss / len(classes), {key: value / len(classes) for key, value in stats.items()}

    def mmd_term(self) -> tuple[torch.Tensor, dict]:
        """The whole MMD term and its kernel means (every chunk's graph kept: for tests and tools;
        ``step`` backpropagates chunk by chunk)."""
        losses, stats = [], {"kxx": 0.0, "kyy": 0.0, "kxy": 0.0}
        for loss, st in self.mmd_chunks():
            losses.append(loss)
            for key in stats:
                stats[key] += st[key]
        return torch.stack(losses).sum(), stats

    def _backward(self, name: str, value: torch.Tensor, weight: float, record: dict) -> None:
        """Refuse a non-finite loss (before any update), add it to ``record``, backpropagate it."""
        if not torch.isfinite(value):
            raise NonFiniteError(f"iteration {self.iteration}: the {name} loss is {float(value)}; stopped before the "
                                 "update (the last checkpoint is intact). Lower the learning rates or step size.")
        record[name] = record.get(name, 0.0) + float(value.detach())
        record["loss"] = record.get("loss", 0.0) + weight * float(value.detach())
        t = time.perf_counter()
        if value.requires_grad and weight != 0:
            (weight * value).backward()
        self._time("backward_s", t)

    def step(self) -> dict:
        """One iteration: both terms, each backpropagated as soon as it is computed (the MMD term
        chunk by chunk), then one step of each optimiser."""
        a = self.args
        it = self.iteration
        record: dict = {"iteration": it, "loss": 0.0}
        started = time.perf_counter()
        if it == 0 and self.start is None:
            self.start = {k: [p.detach().clone() for p in ps] for k, ps in self._learned().items()}
        for opt in (self.opt_priors, self.opt_step_size, self.opt_decoder):
            opt.zero_grad(set_to_none=True)
        learned = [p for ps in self._learned().values() for p in ps]
        mtt_grads = None
        if a.mtt_weight > 0:
            t = time.perf_counter()
            mtt, mtt_stats = self.mtt_term()
            record.update(mtt_stats)  # ||theta_N - target||^2 before normalising
            self._time("mtt_forward_s", t)
            self._backward("mtt", mtt, a.mtt_weight, record)
            if a.mmd_weight > 0:  # kept to tell the two terms' gradients apart (learned tensors are small)
                mtt_grads = [None if p.grad is None else p.grad.detach().clone() for p in learned]
        if a.mmd_weight > 0:
            stats = {"kxx": 0.0, "kyy": 0.0, "kxy": 0.0}
            t = time.perf_counter()
            for mmd, chunk_stats in self.mmd_chunks():
                self._time("mmd_forward_s", t)
                self._backward("mmd", mmd, a.mmd_weight, record)
                for key in stats:
                    stats[key] += chunk_stats[key]
                t = time.perf_counter()
            record.update(stats)
        if mtt_grads is not None:  # each weighted term's gradient over priors and decoder
            record["grad_norm_mtt"] = _grad_norm_of([g for g in mtt_grads if g is not None])
            record["grad_norm_mmd"] = _grad_norm_of([p.grad - (0 if g is None else g) for p, g in zip(learned, mtt_grads)
                                                     if p.grad is not None])
        record["grad_norm_priors"] = _grad_norm([self.model.prior_means, self.model.prior_logvars])
        record["grad_norm_decoder"] = _grad_norm(list(self.model.decoders.parameters()))
        for opt in (self.opt_priors, self.opt_step_size, self.opt_decoder):
            opt.step()
        for name, p in [("prior_means", self.model.prior_means), ("prior_logvars", self.model.prior_logvars),
                        ("step_size", self.log_step_size)] + list(self.model.decoders.named_parameters()):
            if not torch.isfinite(p).all():
                raise NonFiniteError(f"iteration {it}: parameter {name} became non-finite after the "
                                     f"{'+'.join(k for k in ('mtt', 'mmd') if k in record)} update; the last "
                                     "checkpoint is intact.")
        record["step_size"] = float(self.log_step_size.detach().exp())
        record["lr_priors"] = self.opt_priors.param_groups[0]["lr"]
        record["lr_decoder"] = self.opt_decoder.param_groups[0]["lr"]
        record["prior_logvar_mean"] = float(self.model.prior_logvars.detach().mean())
        record["prior_std_mean"] = float(self.model.prior_logvars.detach().mul(0.5).exp().mean())
        if self.start is not None:  # relative L2 distance from where the matching phase started
            for key, now in self._learned().items():
                record[f"drift_{key}"] = _relative_distance(now, self.start[key])
        record["seconds"] = time.perf_counter() - started
        self.history.append(record)
        self.iteration += 1
        return record

    def _time(self, name: str, start: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def seconds_per_iteration(self) -> dict[str, float]:
        """Mean seconds per iteration this process spent in each part (not checkpointed)."""
        n = max(1, self.iteration - self._first_iteration)
        return {name: total / n for name, total in self.seconds.items()}

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "log_step_size": self.log_step_size.detach().cpu(),
            "opt_priors": self.opt_priors.state_dict(),
            "opt_step_size": self.opt_step_size.state_dict(),
            "opt_decoder": self.opt_decoder.state_dict(),
            "generator": self.generator.get_state(),
            "np_rng": self.np_rng.bit_generator.state,
            "iteration": self.iteration,
            "history": self.history,
            "start": None if self.start is None else {k: [t.cpu() for t in ts] for k, ts in self.start.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        with torch.no_grad():
            self.log_step_size.copy_(state["log_step_size"])
        self.opt_priors.load_state_dict(state["opt_priors"])
        self.opt_step_size.load_state_dict(state["opt_step_size"])
        self.opt_decoder.load_state_dict(state["opt_decoder"])
        self.generator.set_state(state["generator"])
        self.np_rng.bit_generator.state = state["np_rng"]
        self.iteration = self._first_iteration = int(state["iteration"])
        self.history = list(state["history"])
        start = state.get("start")  # None in a checkpoint written before drift was recorded
        self.start = None if start is None else {k: [t.to(self.device) for t in ts] for k, ts in start.items()}

    def save_checkpoint(self, directory: str) -> str:
        """Write the whole state atomically, with a checksum checked when it is loaded."""
        path = os.path.join(directory, CHECKPOINT_NAME)
        buffer = io.BytesIO()  # serialised in memory first, so a failing disk raises a plain OSError
        torch.save(self.state_dict(), buffer)
        write_checked(path, buffer.getvalue())
        return path

    def load_checkpoint(self, directory: str) -> bool:
        """Resume from ``directory``'s checkpoint; False when there is none, or it fails its
        checksum (then the run starts over, which gives the same result, only later)."""
        if not os.path.exists(os.path.join(directory, CHECKPOINT_NAME)):
            return False
        try:
            state = read_checkpoint(directory)
        except CorruptFileError as err:
            logger.warning("%s; starting this task from iteration 0", err)
            return False
        self.load_state_dict(state)
        return True

    def run(self, iterations: int, checkpoint_dir: str | None = None, checkpoint_every: int = 100,
            log_every: int = 20, show_progress: bool = True) -> list[dict]:
        """Iterate up to ``iterations`` (resuming from ``self.iteration``), checkpointing into
        ``checkpoint_dir`` every ``checkpoint_every`` iterations and at the end, logging every
        ``log_every`` (0: never)."""
        from ..utils.progress import bar as progress_bar

        bar = progress_bar("distill", total=iterations, initial=self.iteration, disable=not show_progress)
        with _interrupt_between_steps() as interrupted:
            self._run(iterations, checkpoint_dir, checkpoint_every, log_every, bar, interrupted)
            bar.close()
            if checkpoint_dir:
                self.save_checkpoint(checkpoint_dir)
            if interrupted():  # during the last step: the run is complete and saved, but the user asked to stop
                raise KeyboardInterrupt
        return self.history

    def _run(self, iterations: int, checkpoint_dir: str | None, checkpoint_every: int, log_every: int, bar,
             interrupted: Callable[[], bool]) -> None:
        while self.iteration < iterations:
            if interrupted():  # Ctrl-C during the last step: it finished, so the state is whole
                if checkpoint_dir:
                    self.save_checkpoint(checkpoint_dir)
                    logger.info("Interrupted: checkpoint of iteration %d saved in %s", self.iteration, checkpoint_dir)
                raise KeyboardInterrupt
            record = self.step()
            fire(self.callbacks, "on_iteration_end", self.iteration, record)
            bar.update(1)
            bar.set_postfix({k: f"{record[k]:.4g}" for k in ("mtt", "mmd", "step_size") if k in record})
            if log_every and self.iteration % log_every == 0:
                logger.info("iteration %d: %s", self.iteration, ", ".join(
                    f"{k}={record[k]:.4g}" for k in ("mtt", "mmd", "loss", "step_size", "seconds") if k in record))
            if checkpoint_dir and checkpoint_every and self.iteration % checkpoint_every == 0:
                self.save_checkpoint(checkpoint_dir)
