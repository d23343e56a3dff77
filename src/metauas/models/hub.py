"""Moved to `metauas.models.store` (the one model store); re-exported for callers of the earlier API."""

from metauas.models.store import DEFAULT_MODEL, available_models, load_model, model_card, weights_dir

__all__ = ["DEFAULT_MODEL", "available_models", "load_model", "model_card", "weights_dir"]
