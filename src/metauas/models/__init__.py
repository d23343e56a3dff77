"""MetaUAS model: torch modules (encoders, alignment, UNet decoder) and the model store."""

from metauas.models.checkpoint import load_checkpoint, load_official_checkpoint, save_safetensors
from metauas.models.encoders import available_encoders, build_encoder
from metauas.models.metauas import AnomalyOutput, MetaUAS, ModelConfig, PromptFeatures, official_metauas
from metauas.models.store import (DEFAULT_MODEL, available_models, build_model, load_model, model_digest,
                                  model_from_config, open_model)

__all__ = [
    "MetaUAS", "ModelConfig", "PromptFeatures", "AnomalyOutput", "build_model", "official_metauas",
    "build_encoder", "available_encoders", "load_model", "load_checkpoint", "load_official_checkpoint",
    "save_safetensors", "available_models", "DEFAULT_MODEL", "open_model", "model_from_config", "model_digest",
]
