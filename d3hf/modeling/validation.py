"""Checks an artifact must pass before use, since artifacts come from strangers on the Hub.

Loading never runs code from an artifact (safetensors weights, JSON config, no ``auto_map``);
these checks make a tampered or truncated artifact fail with one clear message instead of a
crash deep inside torch, or worse, load with silently re-initialised tensors.
"""

from __future__ import annotations

import torch

from ..errors import ArtifactError
from .configuration_d3 import D3Config
from .decoders import DecoderSpec, build_decoder
from .storage import estimate_storage

MAX_IMAGE_SIDE = 4096
MAX_STORED_SCALARS = 2**31  # far above any sensible artifact; refuses memory bombs up front
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


def check_config(config: D3Config) -> None:
    """Raise ``ArtifactError`` unless the config describes a sane artifact."""
    if max(config.image_shape, default=0) > MAX_IMAGE_SIDE:
        raise ArtifactError(f"image_shape {config.image_shape} is larger than {MAX_IMAGE_SIDE} pixels a side")
    for index, spec in enumerate(config.decoders):
        try:
            spec = DecoderSpec.from_dict(spec)
        except (ValueError, TypeError, KeyError) as err:
            raise ArtifactError(f"decoder {index}: {err}") from None
        if any(max(size) > MAX_IMAGE_SIDE for size in spec.stage_sizes):
            raise ArtifactError(f"decoder {index}: a stage is larger than {MAX_IMAGE_SIDE} pixels a side")
    try:
        config.validate()
    except (ValueError, TypeError, KeyError) as err:
        raise ArtifactError(f"invalid config: {err}") from None
    stored = estimate_storage(config).total_scalars
    if stored > MAX_STORED_SCALARS:
        raise ArtifactError(f"the config describes {stored:,} stored scalars; refusing more than {MAX_STORED_SCALARS:,}")


def expected_tensors(config: D3Config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor an artifact with this config stores (as ``D3Model`` names them)."""
    priors = (config.num_priors, config.z_dim)
    shapes = {"prior_means": priors, "prior_logvars": priors}
    if config.soft_labels:
        shapes["soft_labels"] = (config.num_priors, config.num_classes)
    with torch.device("meta"):  # shapes only, no memory
        for d, spec in enumerate(config.decoder_specs()):
            shapes.update({f"decoders.{d}.{name}": tuple(t.shape) for name, t in build_decoder(spec).state_dict().items()})
    return shapes


def check_weights_file(path: str, config: D3Config) -> None:
    """The safetensors file holds exactly the expected tensors, with their shapes, as floats."""
    from safetensors import SafetensorError, safe_open

    expected = expected_tensors(config)
    try:
        with safe_open(path, framework="pt") as f:
            found = {}
            for name in f.keys():
                sl = f.get_slice(name)
                found[name] = (tuple(sl.get_shape()), sl.get_dtype())
    except (SafetensorError, OSError) as err:
        raise ArtifactError(f"{path} is truncated or not a safetensors file ({err})") from None
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ArtifactError(f"{path} does not match its config: missing tensors {missing}, unexpected {unexpected}")
    for name, shape in expected.items():
        got_shape, dtype = found[name]
        if got_shape != shape:
            raise ArtifactError(f"{path}: tensor {name} has shape {list(got_shape)}, the config implies {list(shape)}")
        if dtype not in FLOAT_DTYPES:
            raise ArtifactError(f"{path}: tensor {name} is {dtype}; artifact tensors are floating point")


def check_values(state: dict[str, torch.Tensor], source: str = "the artifact") -> None:
    """Every stored value is finite."""
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise ArtifactError(f"{source}: tensor {name} holds {bad} non-finite value(s) (NaN or inf)")


def check_soft_labels(soft_labels: torch.Tensor | None, source: str = "the artifact") -> None:
    if soft_labels is None:
        return
    if soft_labels.min() < 0 or (soft_labels.double().sum(1) - 1).abs().max() > 1e-3:
        raise ArtifactError(f"{source}: soft_labels must be probability vectors (non-negative, each summing to 1)")
