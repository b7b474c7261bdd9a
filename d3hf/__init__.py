"""d3hf: Distributional Dataset Distillation (D3) for the Hugging Face ecosystem."""

from transformers import AutoConfig, AutoModel

from .configuration_d3 import D3Config
from .data import DataError, ImageClassificationData, load_image_classification
from .decoders import DecoderSpec, family_spec, reference_spec
from .modeling_d3 import D3Model
from .storage import StorageLedger, estimate_storage

__version__ = "0.1.0"

AutoConfig.register("d3", D3Config, exist_ok=True)
AutoModel.register(D3Config, D3Model, exist_ok=True)

__all__ = [
    "D3Config",
    "D3Model",
    "DataError",
    "DecoderSpec",
    "ImageClassificationData",
    "StorageLedger",
    "estimate_storage",
    "family_spec",
    "load_image_classification",
    "reference_spec",
]
