"""Moved to `metauas.runtime.export` and `metauas.runtime.onnx_format`; re-exported for callers
of the earlier API."""

from metauas.models.store import model_digest
from metauas.runtime.export import (DecoderGraph, EncoderGraph, OnnxExportConfig, PromptGraph, export_onnx,
                                    parity_images, prompt_names, verify_export)
from metauas.runtime.onnx_format import (DECODER_FILE, DEFAULT_OPSET, ENCODER_FILE, EXPORT_FILES, FORMAT_VERSION,
                                         META_FILE, PARITY_TOLERANCE, PROMPT_FILE, OnnxMetadata)

__all__ = ["DecoderGraph", "EncoderGraph", "OnnxExportConfig", "PromptGraph", "export_onnx", "parity_images",
           "prompt_names", "verify_export", "model_digest", "DECODER_FILE", "DEFAULT_OPSET", "ENCODER_FILE",
           "EXPORT_FILES", "FORMAT_VERSION", "META_FILE", "PARITY_TOLERANCE", "PROMPT_FILE", "OnnxMetadata"]
