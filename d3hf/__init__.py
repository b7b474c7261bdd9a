"""d3hf: Distributional Dataset Distillation (D3) for the Hugging Face ecosystem.

Names load on first use, so ``import d3hf`` and the command line's help start without torch.
"""

from __future__ import annotations

import importlib
import sys

from ._version import __version__ as __version__
from .errors import ArtifactError, ConfigError, D3HFError, DataError, OutputError

# Public name -> the module that defines it, in the order data flows through them.
_LAZY = {
    "ImageClassificationData": "data.image_data",
    "load_image_classification": "data.image_data",
    "SplitOverlapError": "data.provenance",
    "D3Config": "modeling.configuration_d3",
    "D3Model": "modeling.modeling_d3",
    "DecoderSpec": "modeling.decoders",
    "family_spec": "modeling.decoders",
    "reference_spec": "modeling.decoders",
    "StorageLedger": "modeling.storage",
    "estimate_storage": "modeling.storage",
    "DistillArguments": "distill.config",
    "DistillCallback": "distill.callbacks",
    "run_distillation": "distill.runner",
    "named_protocol": "evaluation.protocols",
    "save_artifact": "hub.cards",
    "HubAccessError": "hub.access",
    "load_artifact": "hub.load",
    "load_distilled": "hub.load",
    "generate_dataset": "hub.generate",
    "push_artifact": "hub.push",
    "push_synthetic_dataset": "hub.push",
}

__all__ = [
    "ArtifactError",
    "ConfigError",
    "D3Config",
    "D3HFError",
    "D3Model",
    "DataError",
    "DecoderSpec",
    "DistillArguments",
    "DistillCallback",
    "HubAccessError",
    "ImageClassificationData",
    "OutputError",
    "SplitOverlapError",
    "StorageLedger",
    "estimate_storage",
    "family_spec",
    "generate_dataset",
    "load_artifact",
    "load_distilled",
    "load_image_classification",
    "named_protocol",
    "push_artifact",
    "push_synthetic_dataset",
    "reference_spec",
    "run_distillation",
    "save_artifact",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'd3hf' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if "transformers" in sys.modules:  # the user works with transformers: register the Auto classes now
    importlib.import_module(".modeling.modeling_d3", __name__)
