"""The ONNX export format: file names, format version and `metauas_onnx.json` (`OnnxMetadata`).

Shared by the exporter (`metauas.runtime.export`) and the onnxruntime backend
(`metauas.runtime.onnx_backend`), which therefore do not import each other's internals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from metauas.errors import InputError

META_FILE = "metauas_onnx.json"
ENCODER_FILE = "encoder.onnx"
PROMPT_FILE = "prompt.onnx"
DECODER_FILE = "decoder.onnx"
EXPORT_FILES = (ENCODER_FILE, PROMPT_FILE, DECODER_FILE, META_FILE)
FORMAT_VERSION = 1
DEFAULT_OPSET = 17
PARITY_TOLERANCE = 1e-3  # max |p_onnx - p_torch| on real images (float32 reordering stays < 2e-4)



@dataclass
class OnnxMetadata:
    """Contents of metauas_onnx.json: everything a runtime needs to feed the graphs."""

    format_version: int
    model: str
    model_digest: str
    size: int
    shots: int
    encoder: str
    aligned_levels: list[int]
    has_keys: bool
    opset: int
    torch_version: str
    created: str
    max_abs_diff: float | None = None  # parity against PyTorch measured at export time
    files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: Path) -> "OnnxMetadata":
        """The metadata of the export in `folder`, after checking that its graph files exist.

        Raises:
            InputError: not an export (metadata missing), unreadable or invalid metadata, another
                export format version, or a missing graph file.
        """
        path = Path(folder) / META_FILE
        if not path.is_file():
            raise InputError(f"{folder} is not a metauas ONNX export ({META_FILE} missing); "
                             "create one with `metauas export --format onnx`")
        from metauas.schemas import check_onnx_metadata

        try:
            data = check_onnx_metadata(json.loads(path.read_text()), str(path))
            meta = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError, RecursionError):
            raise InputError(f"{path} is unreadable or from an incompatible metauas version") from None
        if meta.format_version != FORMAT_VERSION:
            raise InputError(f"{path}: export format {meta.format_version} is not supported "
                             f"(expected {FORMAT_VERSION}); export again")
        for name in (ENCODER_FILE, PROMPT_FILE, DECODER_FILE):
            if not (Path(folder) / name).is_file():
                raise InputError(f"ONNX export {folder} is incomplete: {name} missing")
        return meta
