"""d3hf: Distributional Dataset Distillation (D3) for the Hugging Face ecosystem."""

from transformers import AutoConfig, AutoModel

from .configuration_d3 import D3Config
from .data import DataError, ImageClassificationData, load_image_classification
from .decoders import DecoderSpec, family_spec, reference_spec
from .evaluation import SplitOverlapError, named_protocol
from .hub import HubAccessError, generate_dataset, load_artifact, load_distilled, push_artifact, push_synthetic_dataset
from .modeling_d3 import D3Model
from .storage import StorageLedger, estimate_storage
from .validation import ArtifactError

__version__ = "0.1.0"

AutoConfig.register("d3", D3Config, exist_ok=True)
AutoModel.register(D3Config, D3Model, exist_ok=True)

__all__ = [
    "ArtifactError",
    "D3Config",
    "D3Model",
    "DataError",
    "DecoderSpec",
    "HubAccessError",
    "ImageClassificationData",
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
]
