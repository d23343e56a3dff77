"""Moved to `metauas.runtime.torch_backend` (the PyTorch backend of the one predictor loop);
re-exported for callers of the earlier API."""

from metauas.runtime.predictor import SegmentationResult, to_original_size
from metauas.runtime.torch_backend import KSHOT_MODES, MAX_POOL, Segmenter

__all__ = ["Segmenter", "SegmentationResult", "to_original_size", "KSHOT_MODES", "MAX_POOL"]
