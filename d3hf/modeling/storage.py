"""Storage ledger: what a distilled dataset costs, in scalars (the field's unit) and bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

from .configuration_d3 import D3Config


@dataclass
class StorageLedger:
    """Stored scalars per component, their total, bytes, and the IPC-equivalent.

    ``ipc_equivalent = total_scalars / (num_classes * C * H * W)``: how many real images per
    class the same number of scalars would hold.
    """

    components: dict[str, int]
    total_bytes: int
    num_classes: int
    image_shape: tuple[int, int, int]
    bytes_per_component: dict[str, int] = field(default_factory=dict)

    @property
    def total_scalars(self) -> int:
        return sum(self.components.values())

    @property
    def scalars_per_ipc(self) -> int:
        c, h, w = self.image_shape
        return self.num_classes * c * h * w

    @property
    def ipc_equivalent(self) -> float:
        return self.total_scalars / self.scalars_per_ipc

    def to_dict(self) -> dict:
        return {
            "components": dict(self.components),
            "total_scalars": self.total_scalars,
            "total_bytes": self.total_bytes,
            "ipc_equivalent": self.ipc_equivalent,
            "scalars_per_ipc": self.scalars_per_ipc,
        }

    def to_markdown(self) -> str:
        rows = ["| component | scalars | bytes |", "|---|---:|---:|"]
        for name, n in self.components.items():
            rows.append(f"| {name} | {n:,} | {self.bytes_per_component.get(name, 0):,} |")
        rows.append(f"| **total** | **{self.total_scalars:,}** | **{self.total_bytes:,}** |")
        rows.append(
            f"\nIPC-equivalent: **{self.ipc_equivalent:.3f}** "
            f"({self.total_scalars:,} scalars / {self.scalars_per_ipc:,} scalars per image-per-class)"
        )
        return "\n".join(rows)

    def __str__(self) -> str:
        width = max(len(n) for n in self.components) if self.components else 10
        lines = [f"{name:<{width}}  {n:>12,}" for name, n in self.components.items()]
        lines.append(f"{'total':<{width}}  {self.total_scalars:>12,} scalars, {self.total_bytes:,} bytes")
        lines.append(f"{'IPC-equivalent':<{width}}  {self.ipc_equivalent:>12.3f}")
        return "\n".join(lines)


def _component(name: str) -> str:
    if name.startswith("decoders."):
        return "decoder_" + name.split(".")[1]
    return name


def ledger_from_tensors(tensors: Mapping[str, torch.Tensor], num_classes: int, image_shape) -> StorageLedger:
    """Group stored tensors by component (each decoder, means, log-variances, soft labels)."""
    scalars: dict[str, int] = {}
    nbytes: dict[str, int] = {}
    for name, tensor in tensors.items():
        key = _component(name)
        scalars[key] = scalars.get(key, 0) + tensor.numel()
        nbytes[key] = nbytes.get(key, 0) + tensor.numel() * tensor.element_size()
    order = sorted(scalars, key=lambda k: (not k.startswith("decoder_"), int(k[8:]) if k.startswith("decoder_") else 0, k))
    return StorageLedger(
        components={k: scalars[k] for k in order},
        total_bytes=sum(nbytes.values()),
        num_classes=num_classes,
        image_shape=tuple(image_shape),
        bytes_per_component={k: nbytes[k] for k in order},
    )


def prior_scalars(num_priors: int, z_dim: int, label_dim: int = 0) -> dict[str, int]:
    """Stored scalars of ``num_priors`` priors: mean and log-variance, and a soft label of
    ``label_dim`` entries each when ``label_dim`` > 0."""
    parts = {"prior_logvars": num_priors * z_dim, "prior_means": num_priors * z_dim}
    if label_dim:
        parts["soft_labels"] = num_priors * label_dim
    return parts


def estimate_storage(config: D3Config, bytes_per_scalar: int = 4) -> StorageLedger:
    """The ledger a model built from ``config`` will have, without building it."""
    components = {f"decoder_{i}": spec.num_parameters() for i, spec in enumerate(config.decoder_specs())}
    components.update(prior_scalars(config.num_priors, config.z_dim, config.num_classes if config.soft_labels else 0))
    return StorageLedger(
        components=components,
        total_bytes=sum(components.values()) * bytes_per_scalar,
        num_classes=config.num_classes,
        image_shape=tuple(config.image_shape),
        bytes_per_component={k: v * bytes_per_scalar for k, v in components.items()},
    )
