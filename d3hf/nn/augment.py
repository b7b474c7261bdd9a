"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen, ICML 2021) on plain torch.

Every operation is a differentiable function of the images, so a distillation loss can
back-propagate through it. Parameters are drawn first (``DSA.sample``) and applied second
(``DSA.apply``): drawing once and applying to two batches is the "siamese" use, e.g. real and
synthetic images of a class in distribution matching. ``shared=True`` draws one set of
parameters for the whole batch (broadcast to any batch size); ``shared=False`` draws one set
per image, as the reference code does when it trains an evaluation network.

As in the reference (``aug_mode='S'``), each draw picks ONE family at random among
``DSAConfig.families`` (colour, crop, cutout, scale, rotate; flip only if added). The default
strengths give the reference's distributions: brightness shift U(-0.5, 0.5), saturation
factor U(0, 2), contrast factor U(0.5, 1.5), translation by up to 12.5 % of the side (zero
padded), scale factors U(1/1.2, 1.2) per axis, rotation U(-15, 15) degrees, a cutout square
of half the side. Images are expected normalised (as in the reference), so the zero fill of
padding and cutout is the dataset mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_FAMILIES = ("color", "crop", "cutout", "scale", "rotate")


@dataclass(frozen=True)
class DSAConfig:
    """Which augmentation families to draw from, and the strength of each.

    Every strength at zero makes its family an identity. ``scale`` is the extra zoom: factors
    are drawn from U(1 / (1 + scale), 1 + scale). ``saturation`` and ``contrast`` are the widths
    of their factor ranges around 1. Flips are not drawn unless ``"flip"`` is added to
    ``families``: a mirrored digit is a different digit, or none.
    """

    families: tuple[str, ...] = DEFAULT_FAMILIES
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 1.0
    crop: float = 0.125
    scale: float = 0.2
    rotate_degrees: float = 15.0
    cutout: float = 0.5

    def __post_init__(self):
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"augmentation families {list(self.families)} must be a non-empty subset of {FAMILIES}")


@dataclass
class AugmentParams:
    """One draw of DSA parameters: the chosen family and its per-image (or shared) values.

    Each value tensor has a leading dimension of 1 (shared) or of the batch size.
    """

    family: str
    values: dict[str, torch.Tensor]


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _expand(value: torch.Tensor, batch: int, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    value = value.to(device=device, dtype=dtype if dtype is not None and value.is_floating_point() else value.dtype)
    if value.shape[0] not in (1, batch):
        raise ValueError(f"augmentation parameters for {value.shape[0]} images cannot be applied to {batch}")
    return value.expand(batch, *value.shape[1:])


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def color(x: torch.Tensor, brightness: torch.Tensor, saturation: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """Brightness shift, then saturation and contrast factors (the reference's order)."""
    n = x.shape[0]
    x = x + _expand(brightness, n, x.device, x.dtype).view(-1, 1, 1, 1)
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * _expand(saturation, n, x.device, x.dtype).view(-1, 1, 1, 1) + grey
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _expand(contrast, n, x.device, x.dtype).view(-1, 1, 1, 1) + mean


def crop(x: torch.Tensor, shift_y: torch.Tensor, shift_x: torch.Tensor) -> torch.Tensor:
    """Translate by whole pixels, filling with zeros (pad, then crop at an offset)."""
    n, _, h, w = x.shape
    dy, dx = _expand(shift_y, n, x.device), _expand(shift_x, n, x.device)
    pad = int(max(dy.abs().max().item(), dx.abs().max().item(), 0))
    if pad == 0:
        return x
    padded = F.pad(x, [pad, pad, pad, pad])
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + pad - dy.view(n, 1, 1)).expand(n, h, w)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + pad - dx.view(n, 1, 1)).expand(n, h, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1).expand(n, h, w)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, centre_y: torch.Tensor, centre_x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero a ``size`` rectangle around each centre (clipped at the border)."""
    n, _, h, w = x.shape
    if size[0] <= 0 or size[1] <= 0:
        return x
    cy, cx = _expand(centre_y, n, x.device).view(n, 1, 1), _expand(centre_x, n, x.device).view(n, 1, 1)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    top, left = cy - size[0] // 2, cx - size[1] // 2
    inside = (ys >= top) & (ys < top + size[0]) & (xs >= left) & (xs < left + size[1])
    return x * (~inside).unsqueeze(1).to(x.dtype)


def flip(x: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images whose ``flipped`` flag is set."""
    mask = _expand(flipped, x.shape[0], x.device).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(3), x)


def scale(x: torch.Tensor, factor_y: torch.Tensor, factor_x: torch.Tensor) -> torch.Tensor:
    """Resample with the sampling grid scaled by the factors (factor > 1 shrinks the content)."""
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = _expand(factor_x, n, x.device, x.dtype)
    theta[:, 1, 1] = _expand(factor_y, n, x.device, x.dtype)
    return _affine(x, theta)


def rotate(x: torch.Tensor, radians: torch.Tensor) -> torch.Tensor:
    """Rotate about the image centre."""
    angle = _expand(radians, x.shape[0], x.device, x.dtype)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    return _affine(x, theta)


class DSA:
    """Draw and apply DSA parameters; ``dsa(x, generator)`` does both with per-image draws."""

    def __init__(self, config: DSAConfig | None = None):
        self.config = config or DSAConfig()

    def sample(self, image_shape, batch_size: int, generator: torch.Generator, shared: bool = True) -> AugmentParams:
        """Draw one family and its parameters for ``batch_size`` images of ``(C, H, W)``.

        With ``shared`` the parameters have a leading size of 1 and fit any batch size.
        """
        cfg = self.config
        families = cfg.families
        family = families[int(torch.randint(len(families), (1,), generator=generator))]
        n = 1 if shared else batch_size
        _, h, w = image_shape
        if family == "color":
            values = {
                "brightness": _uniform(n, -0.5 * cfg.brightness, 0.5 * cfg.brightness, generator),
                "saturation": _uniform(n, 1 - 0.5 * cfg.saturation, 1 + 0.5 * cfg.saturation, generator),
                "contrast": _uniform(n, 1 - 0.5 * cfg.contrast, 1 + 0.5 * cfg.contrast, generator),
            }
        elif family == "crop":
            max_y, max_x = int(h * cfg.crop + 0.5), int(w * cfg.crop + 0.5)
            values = {
                "shift_y": torch.randint(-max_y, max_y + 1, (n,), generator=generator),
                "shift_x": torch.randint(-max_x, max_x + 1, (n,), generator=generator),
            }
        elif family == "cutout":
            values = {
                "centre_y": torch.randint(0, h, (n,), generator=generator),
                "centre_x": torch.randint(0, w, (n,), generator=generator),
            }
        elif family == "flip":
            values = {"flipped": torch.rand(n, generator=generator) < 0.5}
        elif family == "scale":
            high = 1.0 + cfg.scale
            values = {
                "factor_y": _uniform(n, 1.0 / high, high, generator),
                "factor_x": _uniform(n, 1.0 / high, high, generator),
            }
        else:
            limit = math.radians(cfg.rotate_degrees)
            values = {"radians": _uniform(n, -limit, limit, generator)}
        return AugmentParams(family, values)

    def cutout_size(self, image_shape) -> tuple[int, int]:
        _, h, w = image_shape
        return int(h * self.config.cutout + 0.5), int(w * self.config.cutout + 0.5)

    def apply(self, x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Apply drawn parameters to a batch (N, C, H, W); differentiable in ``x``."""
        v = params.values
        if params.family == "color":
            return color(x, v["brightness"], v["saturation"], v["contrast"])
        if params.family == "crop":
            return crop(x, v["shift_y"], v["shift_x"])
        if params.family == "cutout":
            return cutout(x, v["centre_y"], v["centre_x"], self.cutout_size(x.shape[1:]))
        if params.family == "flip":
            return flip(x, v["flipped"])
        if params.family == "scale":
            return scale(x, v["factor_y"], v["factor_x"])
        if params.family == "rotate":
            return rotate(x, v["radians"])
        raise ValueError(f"unknown augmentation family {params.family!r}; known: {', '.join(FAMILIES)}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator, shared: bool = False) -> torch.Tensor:
        return self.apply(x, self.sample(x.shape[1:], x.shape[0], generator, shared))


AUGMENTATIONS = ("none", "dsa")  # what a setting may name


def named_augmentation(name: str) -> DSA | None:
    """The augmentation a setting names: None for ``"none"``, DSA at its default strengths for ``"dsa"``."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"augmentation {name!r} is not available; use one of {', '.join(AUGMENTATIONS)}")
    return DSA() if name == "dsa" else None
