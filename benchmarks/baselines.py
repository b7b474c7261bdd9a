"""The benchmark's image-set baselines at equal storage: herding, k-center, Distribution Matching
(DM) and prototype images learned with D3's own objective (the grid's d3-prototypes ablation).

Each builder returns a ``d3hf.evaluation.image_sets.ImageSet``: float images in pixel scale (real
images in [0, 1]; DM and prototype images are unclipped, as DM optimises free pixels) with hard
labels. Its storage is its pixel count: a set stored class by class needs no labels, as D3's
priors need none. Random real images, the image-set files and the external peer images stay in
the library (``d3hf.evaluation.image_sets``): ``d3hf evaluate --images`` reads them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch

from d3hf.data.image_data import DataError, ImageClassificationData
from d3hf.evaluation.image_sets import ImageSet, _rows_to_set, random_real_images
from d3hf.nn.augment import DSA
from d3hf.nn.networks import ConvNet
from d3hf.utils.seeding import class_seed

logger = logging.getLogger(__name__)


def images_per_class(budget_scalars: int, num_classes: int, image_shape) -> int:
    """How many images per class a storage budget in scalars holds (rounded down)."""
    c, h, w = image_shape
    return int(budget_scalars) // (num_classes * c * h * w)


def _per_class_ipc(data: ImageClassificationData, ipc: int) -> None:
    if ipc < 1:
        raise ValueError(f"ipc must be at least 1, got {ipc}")
    short = [data.class_names[c] for c, rows in enumerate(data.class_rows) if len(rows) < ipc]
    if short:
        raise DataError(f"Classes {short} have fewer than {ipc} training rows; lower ipc.")


def _class_ordered_random_images(data: ImageClassificationData, ipc: int, seed: int) -> ImageSet:
    """The starting images of learned sets: random real ones, class c owning rows c*ipc .. (c+1)*ipc-1
    (the layout of D3's priors)."""
    init = random_real_images(data, ipc, class_seed(seed, 3))
    by_class = torch.argsort(init.labels, stable=True)
    return ImageSet(init.images[by_class], init.labels[by_class])


# ----------------------------------------------------------------------------- coreset selection


def train_feature_network(
    data: ImageClassificationData,
    epochs: int = 10,
    seed: int = 0,
    depth: int = 3,
    width: int = 128,
    device: torch.device | str = "cpu",
    show_progress: bool = False,
    cache_path: str | None = None,
) -> ConvNet:
    """A ConvNet trained on all real train images (SGD 0.01 m0.9 wd 5e-4, batch 256), frozen
    in eval mode: the feature space for herding and k-center. Same seed, same network, so one
    kept at ``cache_path`` (its weights, written there when trained) is loaded instead of trained:
    on 60,000 rows it is most of a herding or k-center build."""
    from tqdm.auto import tqdm

    from d3hf.distill.experts import ExpertSettings, train_one_expert
    from d3hf.nn.networks import unflatten

    net = ConvNet(data.image_shape, data.num_classes, depth, width).to(device)
    if cache_path is not None and os.path.exists(cache_path):
        net.load_state_dict(torch.load(cache_path, map_location=device, weights_only=True), strict=True)
        return net.eval().requires_grad_(False)
    settings = ExpertSettings(num_experts=1, epochs=epochs, keep_epochs=0, depth=depth, width=width, seed=seed)
    with tqdm(total=epochs, desc="feature net", disable=not show_progress, leave=False) as bar:
        flat = train_one_expert(data, settings, 0, torch.device(device), progress=bar)[0][f"epoch_{epochs}"]
    net.load_state_dict(unflatten(net, flat.to(device)), strict=True)
    if cache_path is not None:
        os.makedirs(os.path.dirname(cache_path), exist_ok=True)
        torch.save(net.state_dict(), cache_path + ".tmp")
        os.replace(cache_path + ".tmp", cache_path)
    return net.eval().requires_grad_(False)


@torch.no_grad()
def embed_rows(net: torch.nn.Module, data: ImageClassificationData, rows: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """``net.embed`` of normalised train rows, (len(rows), feature_dim) on the CPU."""
    device = next(net.parameters()).device
    mean, std = data.normalization_tensors(device)
    chunks = [
        net.embed((data.images(rows[s : s + batch_size], device=device) - mean) / std).cpu()
        for s in range(0, len(rows), batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.zeros(0, getattr(net, "feature_dim", 0))


def herding_order(features: torch.Tensor, k: int) -> np.ndarray:
    """Greedy herding (Welling 2009): each pick is the row that brings the running mean of
    the picks closest to the mean of all rows. Returns ``k`` distinct row positions in order."""
    features = features.double()
    target = features.mean(0)
    running_sum = torch.zeros_like(target)
    available = torch.ones(len(features), dtype=torch.bool)
    order = []
    for step in range(min(k, len(features))):
        gap = ((running_sum + features) / (step + 1) - target).norm(dim=1)
        gap[~available] = float("inf")
        pick = int(gap.argmin())
        order.append(pick)
        available[pick] = False
        running_sum += features[pick]
    return np.asarray(order, dtype=np.int64)


def k_center_order(features: torch.Tensor, k: int) -> np.ndarray:
    """Greedy k-center (farthest-point) selection: the first pick is the row nearest the mean,
    each next pick is the row farthest from every pick so far. Returns ``k`` distinct positions."""
    features = features.double()
    first = int((features - features.mean(0)).norm(dim=1).argmin())
    order = [first]
    nearest = (features - features[first]).norm(dim=1)
    nearest[first] = -1.0
    for _ in range(min(k, len(features)) - 1):
        pick = int(nearest.argmax())
        order.append(pick)
        nearest = torch.minimum(nearest, (features - features[pick]).norm(dim=1))
        nearest[order] = -1.0  # never pick a row twice, even if it duplicates another
    return np.asarray(order, dtype=np.int64)


def _select_per_class(
    data: ImageClassificationData, ipc: int, feature_net: torch.nn.Module,
    order_fn: Callable[[torch.Tensor, int], np.ndarray],
) -> ImageSet:
    _per_class_ipc(data, ipc)
    picked = [rows[order_fn(embed_rows(feature_net, data, rows), ipc)] for rows in data.class_rows]
    return _rows_to_set(data, np.concatenate(picked))


def herding_images(data: ImageClassificationData, ipc: int, feature_net: torch.nn.Module) -> ImageSet:
    """``ipc`` train images per class chosen by herding on ``feature_net.embed`` features."""
    return _select_per_class(data, ipc, feature_net, herding_order)


def k_center_images(data: ImageClassificationData, ipc: int, feature_net: torch.nn.Module) -> ImageSet:
    """``ipc`` train images per class chosen by greedy k-center on ``feature_net.embed`` features."""
    return _select_per_class(data, ipc, feature_net, k_center_order)


# ----------------------------------------------------------------------------- distribution matching


@dataclass
class DMSettings:
    """Distribution Matching (Zhao & Bilen, WACV 2023) as in its reference code, except the
    iteration count: the reference default is 20,000; the external peer images used 100.
    Images are initialised from random real images and optimised in normalised space."""

    iterations: int = 100
    lr: float = 1.0
    momentum: float = 0.5
    batch_real: int = 256
    depth: int = 3
    width: int = 128
    dsa: bool = True
    seed: int = 0


def mean_embedding_loss(embed: Callable[[torch.Tensor], torch.Tensor], real: list[torch.Tensor],
                        synthetic: list[torch.Tensor]) -> torch.Tensor:
    """Sum over classes of ||mean embedding of real - mean embedding of synthetic||^2."""
    loss = synthetic[0].new_zeros(())
    for real_c, syn_c in zip(real, synthetic):
        with torch.no_grad():
            target = embed(real_c).mean(0)
        loss = loss + ((target - embed(syn_c).mean(0)) ** 2).sum()
    return loss


class DistributionMatching:
    """Learnable images per class matched to real images in randomly initialised ConvNets.

    Each ``step`` draws a fresh ConvNet, a batch of real images per class and (with DSA) one
    set of augmentation parameters per class applied to both real and synthetic images, then
    takes one SGD step on the images. All randomness comes from ``settings.seed``.
    """

    def __init__(self, data: ImageClassificationData, ipc: int, settings: DMSettings | None = None,
                 device: torch.device | str = "cpu"):
        self.data, self.ipc = data, ipc
        self.settings = settings or DMSettings()
        self.device = torch.device(device)
        self.iteration = 0
        _per_class_ipc(data, ipc)
        self._mean, self._std = data.normalization_tensors(self.device)
        # Real images as uint8: the train split's one decoded copy when the data keeps it in memory,
        # else a copy per class here (decoding PNGs every iteration would dominate the cost).
        self._real = None if data.train_in_memory else [torch.from_numpy(data.images_uint8(rows))
                                                        for rows in data.class_rows]
        self._rng = np.random.default_rng(class_seed(self.settings.seed, 1))
        self._augment_rng = torch.Generator().manual_seed(class_seed(self.settings.seed, 2))
        self._dsa = DSA() if self.settings.dsa else None
        init = _class_ordered_random_images(data, ipc, self.settings.seed)
        self.labels = init.labels
        self.synthetic = ((init.images.to(self.device) - self._mean) / self._std).requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.synthetic], lr=self.settings.lr, momentum=self.settings.momentum)

    def random_network(self, index: int) -> ConvNet:
        """The randomly initialised embedding network of iteration ``index`` (frozen)."""
        s = self.settings
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(class_seed(s.seed, 4, index))
            net = ConvNet(self.data.image_shape, self.data.num_classes, s.depth, s.width)
        return net.to(self.device).requires_grad_(False)

    def real_batches(self) -> list[torch.Tensor]:
        """``batch_real`` random normalised real images per class (fewer if the class is smaller)."""
        batches = []
        for c, rows in enumerate(self.data.class_rows):
            pick = self._rng.permutation(len(rows))[: self.settings.batch_real]
            images = torch.from_numpy(self.data.images_uint8(rows[pick])) if self._real is None \
                else self._real[c][torch.from_numpy(pick)]
            batches.append((images.to(self.device).float().div_(255.0) - self._mean) / self._std)
        return batches

    def synthetic_batches(self) -> list[torch.Tensor]:
        return [self.synthetic[c * self.ipc : (c + 1) * self.ipc] for c in range(self.data.num_classes)]

    def step(self) -> float:
        """One DM iteration; returns its loss."""
        net = self.random_network(self.iteration)
        real, synthetic = self.real_batches(), self.synthetic_batches()
        if self._dsa is not None:
            for c in range(len(real)):
                params = self._dsa.sample(self.data.image_shape, 1, self._augment_rng, shared=True)
                real[c], synthetic[c] = self._dsa.apply(real[c], params), self._dsa.apply(synthetic[c], params)
        loss = mean_embedding_loss(net.embed, real, synthetic)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.iteration += 1
        return float(loss.detach())

    def run(self, iterations: int | None = None, show_progress: bool = False) -> list[float]:
        """Run ``iterations`` steps (default: ``settings.iterations``); returns their losses."""
        from tqdm.auto import tqdm

        iterations = self.settings.iterations if iterations is None else iterations
        losses = []
        for _ in tqdm(range(iterations), desc="DM", disable=not show_progress, leave=False):
            losses.append(self.step())
        if losses:
            logger.info("DM ipc %d: %d iterations, loss %.4g -> %.4g", self.ipc, len(losses), losses[0], losses[-1])
        return losses

    def image_set(self) -> ImageSet:
        """The current images in pixel scale (unclipped) with their labels."""
        images = (self.synthetic.detach() * self._std + self._mean).cpu()
        return ImageSet(images, self.labels.clone())


def distribution_matching_images(data: ImageClassificationData, ipc: int, settings: DMSettings | None = None,
                                 device: torch.device | str = "cpu", show_progress: bool = False) -> ImageSet:
    """``ipc`` images per class distilled by Distribution Matching (see ``DMSettings``)."""
    dm = DistributionMatching(data, ipc, settings, device)
    dm.run(show_progress=show_progress)
    return dm.image_set()


# ----------------------------------------------------------------------------- prototypes with D3's objective


class PrototypeImages(torch.nn.Module):
    """Learned images per class in the shape the D3 ``Distiller`` drives, so prototypes are
    optimised with exactly D3's MTT + MMD objective: the images are a lookup table from prior
    id to image and stand in for the decoder (optimised like it), and the latent priors are
    zero-width, as a prototype has no latent. Pixels are free (unclipped), as in DM."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, ipc: int):
        super().__init__()
        self.config = SimpleNamespace(priors_per_class=ipc, z_dim=0)
        self.prior_means = torch.nn.Parameter(images.new_zeros(len(images), 0))
        self.prior_logvars = torch.nn.Parameter(images.new_zeros(len(images), 0))
        self.decoders = torch.nn.ParameterList([torch.nn.Parameter(images.clone())])
        self.register_buffer("prior_labels", labels.clone())

    def forward(self, prior_ids: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoders[0][prior_ids]

    def image_set(self) -> ImageSet:
        return ImageSet(self.decoders[0].detach().cpu().clone(), self.prior_labels.cpu().clone())


def d3_objective_images(data: ImageClassificationData, ipc: int, buffer, args, device: torch.device | str = "cpu",
                        show_progress: bool = False) -> ImageSet:
    """``ipc`` images per class, initialised from random real images (``args.run.seed``) and
    optimised for ``args.matching.iterations`` with D3's MTT + MMD terms against ``buffer``'s experts
    (``args``: a run's ``DistillArguments``; the images learn at ``args.matching.lr_decoder``)."""
    from d3hf.distill.distiller import Distiller

    _per_class_ipc(data, ipc)
    init = _class_ordered_random_images(data, ipc, args.run.seed)
    model = PrototypeImages(init.images, init.labels, ipc)
    distiller = Distiller(model, data, buffer, args.matching, seed=args.run.seed, device=device)
    distiller.run(args.matching.iterations, show_progress=show_progress)
    return model.image_set()
