"""Generated samples as Hugging Face ``datasets`` objects."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from datasets.iterable_dataset import ExamplesIterable

if TYPE_CHECKING:
    from ..modeling.modeling_d3 import D3Model


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """Float images (N, C, H, W) in [0, 1] as uint8 (N, H, W, C)."""
    arr = images.clamp(0, 1).mul(255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return arr


def _features(class_names: list[str], soft: bool):
    import datasets

    feats = {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(class_names))}
    if soft:
        feats["soft_label"] = datasets.Sequence(datasets.Value("float32"), length=len(class_names))
    return datasets.Features(feats)


def _image_column(arr: np.ndarray) -> list[np.ndarray]:
    # datasets' Image() takes HxW for grayscale and HxWx3 for RGB.
    return list(arr[..., 0]) if arr.shape[-1] == 1 else list(arr)


def samples_to_dataset(images: torch.Tensor, labels: torch.Tensor, soft_labels: torch.Tensor | None = None, *,
                       class_names: list[str]):
    """Images in [0, 1] and class ids as an in-memory ``datasets.Dataset`` (PNG-encoded)."""
    import datasets

    columns = {"image": _image_column(to_uint8_hwc(images)), "label": labels.numpy().astype(np.int64)}
    if soft_labels is not None:
        columns["soft_label"] = list(soft_labels.numpy().astype(np.float32))
    return datasets.Dataset.from_dict(columns, features=_features(class_names, soft_labels is not None))


def sample_dataset(model: "D3Model", num_per_class: int, seed: int = 0, soft_labels: bool = False, classes=None):
    """``num_per_class`` fresh samples of each class (``model.sample``) as a ``datasets.Dataset``:
    ``image: Image()``, ``label: ClassLabel`` (plus ``soft_label`` with ``soft_labels=True``)."""
    out = model.sample(num_per_class, seed, classes=classes, soft_labels=soft_labels)
    return samples_to_dataset(*out, class_names=model.config.class_names)


def _shard_examples(model: "D3Model", num_per_class: int, seed: int, shards: list[int], num_shards: int,
                    epoch: int = 0, sharded: bool = False):
    """Examples of the given shards for one epoch, classes interleaved round-robin."""
    epoch_seed = int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(1)[0])
    for shard in shards:
        lo = shard * num_per_class // num_shards
        hi = (shard + 1) * num_per_class // num_shards
        if hi <= lo:
            continue
        prior_ids, noise = model.draw(num_per_class, epoch_seed)
        keep = (torch.arange(len(prior_ids)) % num_per_class >= lo) & (torch.arange(len(prior_ids)) % num_per_class < hi)
        images = model.decode_priors(prior_ids[keep], noise[keep])
        labels = model.prior_labels.cpu()[prior_ids[keep]]
        arr = to_uint8_hwc(images)
        per_class = hi - lo
        # rows are class-major; interleave so a stream is not one class after another
        order = np.arange(len(labels)).reshape(model.config.num_classes, per_class).T.reshape(-1)
        for i in order:
            image = arr[i, ..., 0] if arr.shape[-1] == 1 else arr[i]
            yield f"{epoch}-{shard}-{i}", {"image": image, "label": int(labels[i])}


class EpochSampledExamples(ExamplesIterable):
    def __init__(self, kwargs: dict):
        super().__init__(_shard_examples, kwargs)

    def shift_rngs(self, value: int) -> "EpochSampledExamples":
        # datasets shifts RNGs by the epoch before sharding and by the dataloader worker id
        # after it; only the epoch may change the samples.
        if self.kwargs.get("sharded"):
            return self
        return EpochSampledExamples({**self.kwargs, "epoch": int(value)})

    def shuffle_data_sources(self, generator) -> "EpochSampledExamples":
        return self  # shard order stays fixed; the epoch alone decides the samples

    def shard_data_sources(self, num_shards: int, index: int, contiguous=True) -> "EpochSampledExamples":
        picked = self.split_shard_indices_by_worker(num_shards, index, contiguous=contiguous)
        return EpochSampledExamples(
            {**self.kwargs, "shards": [self.kwargs["shards"][i] for i in picked], "sharded": True}
        )


def epoch_sampled_iterable(model: "D3Model", num_per_class: int, seed: int, num_shards: int = 8):
    """An ``IterableDataset`` whose examples are drawn anew for each epoch (``set_epoch``).

    The epoch reaches the generator through datasets' own RNG-shifting hook
    (``shift_rngs``), which ``IterableDataset`` applies with the current epoch before it
    splits shards between dataloader workers, and which survives ``map``/``shuffle``.
    """
    import datasets

    num_shards = max(1, min(num_shards, num_per_class))

    kwargs = {"model": model, "num_per_class": num_per_class, "seed": seed,
              "shards": list(range(num_shards)), "num_shards": num_shards}
    info = datasets.DatasetInfo(features=_features(model.config.class_names, soft=False))
    return datasets.IterableDataset(EpochSampledExamples(kwargs), info=info)
