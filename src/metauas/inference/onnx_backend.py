"""Moved to `metauas.runtime.onnx_backend`; re-exported for callers of the earlier API."""

from metauas.runtime.onnx_backend import OnnxRunner, OnnxSegmenter

__all__ = ["OnnxRunner", "OnnxSegmenter"]
