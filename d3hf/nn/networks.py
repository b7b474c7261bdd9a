"""Classifier networks: experts, distillation students, feature nets and evaluation models."""

from __future__ import annotations

import torch
from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":  # instance norm with affine parameters, as in the MTT/DC code bases
        return nn.GroupNorm(channels, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; use 'instance' or 'none'")


class ConvNet(nn.Module):
    """``depth`` x [Conv3x3(width) + norm + ReLU + AvgPool2]; linear classifier on the flat features."""

    def __init__(self, image_shape, num_classes: int, depth: int = 3, width: int = 128, norm: str = "instance"):
        super().__init__()
        c, h, w = image_shape
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), _norm(norm, width), nn.ReLU(inplace=False)]
            if h >= 2 and w >= 2:
                layers.append(nn.AvgPool2d(2))
                h, w = h // 2, w // 2
            c = width
        self.features = nn.Sequential(*layers)
        self.feature_dim = c * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    def activation_scalars(self, image_shape) -> int:
        """Scalars of the feature maps one image makes on its way through ``features`` (each
        block's convolution output): what its saved activations scale with."""
        _, h, w = image_shape
        total = 0
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):
                total += layer.out_channels * h * w
            elif isinstance(layer, nn.AvgPool2d):
                h, w = h // 2, w // 2
        return total


class MLP(nn.Module):
    """Two hidden layers of ``width`` with ReLU: a second architecture family for evaluation."""

    def __init__(self, image_shape, num_classes: int, width: int = 256):
        super().__init__()
        c, h, w = image_shape
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.feature_dim = width
        self.classifier = nn.Linear(width, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class ResidualBlock(nn.Module):
    """Two Conv3x3 + norm with a skip connection; the first conv may stride (downsample)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str = "instance"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), _norm(norm, out_channels)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet: Conv3x3(width) stem, then ``depth`` residual blocks of ``width`` channels,
    each halving the resolution (stride 2) while the maps are at least 4x4 (a 1x1 map would
    leave instance norm nothing but its bias: on 8x8 digits every prediction was the same
    class), global average pooling and a linear classifier.

    A second convolutional family for cross-architecture rows: skip connections, strided
    convolutions instead of average pooling, and a global-pool head instead of flat features.
    Constant width keeps its cost near ConvNet-3's on small images (about 2x the FLOPs).
    """

    def __init__(self, image_shape, num_classes: int, depth: int = 3, width: int = 128, norm: str = "instance"):
        super().__init__()
        c = image_shape[0]
        self.stem = nn.Sequential(nn.Conv2d(c, width, 3, padding=1, bias=False), _norm(norm, width), nn.ReLU())
        side, blocks = min(image_shape[1:]), []
        for _ in range(depth):
            stride = 2 if side >= 4 else 1
            blocks.append(ResidualBlock(width, width, stride=stride, norm=norm))
            side = (side + 1) // 2 if stride == 2 else side
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = width
        self.classifier = nn.Linear(width, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


ARCHITECTURES = ("convnet", "resnet", "mlp")


def build_classifier(arch: str, image_shape, num_classes: int, depth: int = 3, width: int = 128) -> nn.Module:
    """``convnet`` (ConvNet-depth, instance norm), ``resnet`` (ResNet with ``depth`` residual
    blocks, instance norm) or ``mlp`` (two hidden layers; ``depth`` is ignored)."""
    if arch == "convnet":
        return ConvNet(image_shape, num_classes, depth=depth, width=width)
    if arch == "resnet":
        return ResNet(image_shape, num_classes, depth=depth, width=width)
    if arch == "mlp":
        return MLP(image_shape, num_classes, width=max(width, 64))
    raise ValueError(f"unknown architecture {arch!r}; use one of {', '.join(ARCHITECTURES)}")


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def unflatten(model: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split a flat parameter vector into ``{name: tensor}`` for ``torch.func.functional_call``."""
    out, offset = {}, 0
    for name, p in model.named_parameters():
        n = p.numel()
        out[name] = flat[offset : offset + n].view_as(p)
        offset += n
    return out


def auto_depth(image_shape, max_depth: int = 3) -> int:
    """The deepest ConvNet (at most ``max_depth`` blocks) whose every block sees maps of at
    least 4x4: 3 for 28x28 or 32x32, 2 for 8x8. Deeper, the last instance norm works on 2x2
    or 1x1 maps and the features collapse (experts on 8x8 digits then barely learn)."""
    side, depth = min(image_shape[1:]), 0
    while depth < max_depth and side >= 4:
        side //= 2
        depth += 1
    return max(1, depth)
