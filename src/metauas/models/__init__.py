"""MetaUAS model: encoders, alignment, UNet decoder, checkpoints."""

from metauas.models.checkpoint import load_checkpoint, load_official_checkpoint, save_safetensors
from metauas.models.encoders import available_encoders, build_encoder
from metauas.models.hub import DEFAULT_MODEL, available_models, load_model
from metauas.models.metauas import MetaUAS, ModelConfig, PromptFeatures, build_model, official_metauas

__all__ = [
    "MetaUAS", "ModelConfig", "PromptFeatures", "build_model", "official_metauas", "build_encoder",
    "available_encoders", "load_model", "load_checkpoint", "load_official_checkpoint",
    "save_safetensors", "available_models", "DEFAULT_MODEL",
]
