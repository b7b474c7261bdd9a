"""Decoders: latent vectors to images in [0, 1] pixel space.

A decoder is described by a plain-data ``DecoderSpec`` (stored in the artifact's config) and
built by ``build_decoder``. Normalisation is GroupNorm with one group (per sample, over
channels and pixels), so an image never depends on which other latents share its batch; it
has the same two parameters per channel as the reference code's BatchNorm, so parameter
counts of the reference shapes are reproduced exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

UPSAMPLE_KINDS = ("nearest", "transpose4", "transpose3")
STEMS = ("linear", "reshape")
OUTPUTS = ("sigmoid", "tanh")
# Built-in decoder families (``family_spec``), each sized by one width. The default spends its
# budget on parameters, not FLOPs: it tied with ``nearest`` on MNIST-5k's validation split at an
# eighth of the decoder FLOPs (benchmarks/decoder_family.md).
FAMILIES = ("nearest", "transpose")
DEFAULT_FAMILY = "transpose"


@dataclass
class DecoderSpec:
    """Shape of one decoder.

    ``channels[0]`` is the width of the stem's ``start_hw`` feature map; each further entry
    is one upsampling stage. ``stem`` is ``"linear"`` (Linear z -> c0*h0*w0) or ``"reshape"``
    (z itself is the c0 x h0 x w0 map). ``output`` is ``"sigmoid"`` ([0, 1] pixels, the d3hf
    default) or ``"tanh"`` (the reference's [-1, 1], mapped to [0, 1] when sampling).
    ``stage_sizes`` is each stage's output (H, W): ``nearest`` upsamples to it; a transposed
    convolution doubles its input and is cropped to it (so at most twice the previous size).
    """

    z_dim: int
    out_shape: list[int]
    channels: list[int]
    start_hw: list[int]
    stem: str = "linear"
    upsample: str = "nearest"
    output: str = "sigmoid"
    stage_sizes: list[list[int]] = field(default_factory=list)

    def __post_init__(self):
        """Every rule a spec must follow (ValueError otherwise): an artifact's specs come from its
        config.json, so these are also the load-time checks."""
        self.z_dim = int(self.z_dim)
        self.out_shape = [int(v) for v in self.out_shape]
        self.channels = [int(v) for v in self.channels]
        self.start_hw = [int(v) for v in self.start_hw]
        if not self.channels or len(self.out_shape) != 3 or len(self.start_hw) != 2 \
                or min([self.z_dim, *self.channels, *self.start_hw, *self.out_shape]) < 1:
            raise ValueError(f"every size must be a positive integer, with out_shape (C, H, W) and start_hw (H, W); "
                             f"got {self.to_dict()}")
        if self.stem not in STEMS or self.output not in OUTPUTS or self.upsample not in UPSAMPLE_KINDS:
            raise ValueError(f"stem must be one of {STEMS}, upsample one of {UPSAMPLE_KINDS}, output one of "
                             f"{OUTPUTS}; got {self.stem!r}, {self.upsample!r}, {self.output!r}")
        if self.stem == "reshape" and self.z_dim != self.channels[0] * self.start_hw[0] * self.start_hw[1]:
            raise ValueError("a 'reshape' stem needs z_dim == channels[0] * h0 * w0")
        if not self.stage_sizes:
            h, w = self.start_hw
            sizes = []
            for _ in self.channels[1:]:
                h, w = 2 * h, 2 * w
                sizes.append([h, w])
            if self.upsample == "nearest" and sizes:
                sizes = _halving_sizes(self.out_shape[1:], len(sizes))
            self.stage_sizes = sizes
        self.stage_sizes = [[int(a), int(b)] for a, b in self.stage_sizes]
        if len(self.stage_sizes) != len(self.channels) - 1 or any(min(size) < 1 for size in self.stage_sizes):
            raise ValueError(f"stage_sizes must give one positive (H, W) per upsampling stage; got {self.to_dict()}")
        if self.upsample != "nearest":
            previous = self.start_hw
            for size in self.stage_sizes:
                if size[0] > 2 * previous[0] or size[1] > 2 * previous[1]:
                    raise ValueError(f"a {self.upsample} stage at most doubles its input; stage_sizes "
                                     f"{self.stage_sizes} from start_hw {self.start_hw} do not")
                previous = size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DecoderSpec":
        return cls(**data)

    def activation_scalars(self) -> int:
        """Scalars of the feature maps one image makes on its way through the decoder (stem,
        every stage, output): what its saved activations scale with."""
        c, h, w = self.out_shape
        maps = [self.channels[0] * self.start_hw[0] * self.start_hw[1], c * h * w]
        stages = sum(cout * a * b for cout, (a, b) in zip(self.channels[1:], self.stage_sizes))
        if self.upsample == "nearest":  # each stage's input, upsampled before its convolution, is kept too
            stages += sum(cin * a * b for cin, (a, b) in zip(self.channels[:-1], self.stage_sizes))
        return sum(maps) + stages

    def num_parameters(self) -> int:
        """Stored scalars of the decoder, without building it."""
        c0, (h0, w0) = self.channels[0], self.start_hw
        n = (self.z_dim * c0 * h0 * w0 + c0 * h0 * w0) if self.stem == "linear" else 0
        k = {"nearest": 9, "transpose4": 16, "transpose3": 9}[self.upsample]
        for cin, cout in zip(self.channels[:-1], self.channels[1:]):
            n += cin * cout * k + cout + 2 * cout
        return n + self.channels[-1] * self.out_shape[0] * 9 + self.out_shape[0]


def _halving_sizes(out_hw: list[int], stages: int) -> list[list[int]]:
    """Feature-map sizes after each of ``stages`` upsamplings, ending exactly at ``out_hw``."""
    sizes = [list(out_hw)]
    for _ in range(stages - 1):
        sizes.append([math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)])
    return sizes[::-1]


class _Stage(nn.Module):
    def __init__(self, cin: int, cout: int, kind: str, size: list[int]):
        super().__init__()
        self.size = tuple(size)
        self.kind = kind
        if kind == "nearest":
            self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        elif kind == "transpose4":
            self.conv = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
        else:
            self.conv = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
        self.norm = nn.GroupNorm(1, cout)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "nearest":
            x = nn.functional.interpolate(x, size=self.size, mode="nearest")
            x = self.conv(x)
        else:
            x = self.conv(x)
            if tuple(x.shape[-2:]) != self.size:  # an odd size: crop before the norm sees the extra row
                x = x[..., : self.size[0], : self.size[1]]
        return self.act(self.norm(x))


class Decoder(nn.Module):
    """Latents (N, z_dim) -> images (N, C, H, W) in [0, 1]."""

    def __init__(self, spec: DecoderSpec):
        super().__init__()
        self.spec = spec
        c0, (h0, w0) = spec.channels[0], spec.start_hw
        self.stem = nn.Linear(spec.z_dim, c0 * h0 * w0) if spec.stem == "linear" else nn.Identity()
        self.stages = nn.ModuleList(
            _Stage(cin, cout, spec.upsample, size)
            for cin, cout, size in zip(spec.channels[:-1], spec.channels[1:], spec.stage_sizes)
        )
        self.head = nn.Conv2d(spec.channels[-1], spec.out_shape[0], 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        x = self.stem(z).reshape(z.shape[0], spec.channels[0], *spec.start_hw)
        for stage in self.stages:
            x = stage(x)
        x = self.head(x)
        if tuple(x.shape[-2:]) != tuple(spec.out_shape[1:]):
            x = x[..., : spec.out_shape[1], : spec.out_shape[2]]
        if spec.output == "tanh":
            return (torch.tanh(x) + 1) / 2
        return torch.sigmoid(x)


def build_decoder(spec: DecoderSpec) -> Decoder:
    return Decoder(spec)


def num_stages(out_hw: list[int] | tuple[int, int]) -> int:
    """Upsampling stages for the default family: halve the smaller side down to at most 2."""
    side, stages = min(out_hw), 0
    while side > 2:
        side = math.ceil(side / 2)
        stages += 1
    return stages


def family_spec(out_shape: tuple[int, int, int] | list[int], z_dim: int, width: int,
                family: str = DEFAULT_FAMILY) -> DecoderSpec:
    """A built-in decoder family at one ``width``; both reach every size and aspect ratio exactly,
    from a map of at most 2x2 through ``num_stages`` upsamplings.

    ``nearest``: nearest upsampling + 3x3 conv per stage; the last stage has ``width`` channels
    and each stage back towards the stem doubles, capped at 4x ``width``.
    ``transpose``: a 4x4 transposed convolution (stride 2) per stage, channels halving from
    8x ``width`` at the stem (4x with three stages, 2x with two) down to ``width``, the last two
    stages at ``width`` (the reference code's layout). A transposed stage computes at
    its input's resolution, so each of its parameters costs a quarter of the FLOPs of a
    ``nearest`` parameter: about 8x fewer FLOPs per image at the same parameter count.
    """
    out_shape = [int(v) for v in out_shape]
    k = num_stages(out_shape[1:])
    sizes = _halving_sizes(out_shape[1:], k + 1)
    if family == "nearest":
        channels = [width * min(4, 2 ** (k - i)) for i in range(k + 1)]
        upsample = "nearest"
    elif family == "transpose":
        # Up to 8x at the stem (the reference's 32x32 layout, k = 4); fewer stages start lower, so
        # a small image's smallest decoder stays small.
        channels = [width * max(1, 2 ** (min(k, 4) - 1 - i)) for i in range(k + 1)]
        upsample = "transpose4"
    else:
        raise ValueError(f"unknown decoder family {family!r}; use one of {', '.join(FAMILIES)}")
    return DecoderSpec(
        z_dim=z_dim,
        out_shape=out_shape,
        channels=channels,
        start_hw=sizes[0],
        stem="linear",
        upsample=upsample,
        stage_sizes=sizes[1:],
    )


def reference_spec(name: str) -> DecoderSpec:
    """The reference code's 64x64 RGB decoders (``small``, ``medium``, ``large``)."""
    if name == "small":
        return DecoderSpec(64, [3, 64, 64], [256, 128, 64, 32, 32, 32], [2, 2], "linear", "transpose4", "tanh")
    if name == "medium":
        return DecoderSpec(2048, [3, 64, 64], [512, 256, 128, 64, 32, 32], [2, 2], "linear", "transpose3", "tanh")
    if name == "large":
        return DecoderSpec(4096, [3, 64, 64], [1024, 512, 256, 128, 64, 64], [2, 2], "reshape", "transpose3", "tanh")
    raise ValueError(f"Unknown reference decoder {name!r}; choose small, medium or large.")
