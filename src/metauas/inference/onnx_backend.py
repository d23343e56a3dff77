"""Running an ONNX export (see export.py) with onnxruntime, behind the Segmenter interface.

`OnnxRunner` works on model-sized float32 arrays; `OnnxSegmenter` adds image loading,
resizing and the map back at the original resolution, exactly as the PyTorch `Segmenter`
does (it reuses the same helpers), so the CLI and the web app can swap backends.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from metauas.errors import InputError, MetaUASError
from metauas.inference.export import DECODER_FILE, ENCODER_FILE, PROMPT_FILE, OnnxMetadata
from metauas.inference.images import ImageLike, load_image, to_model_tensor
from metauas.inference.segmenter import SegmentationResult, to_original_size
from metauas.scoring import DEFAULT_TOP_FRACTION, image_score
from metauas.threads import onnx_session_options


def _session(path: Path, threads: int | None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise MetaUASError("the onnxruntime backend needs the package 'onnxruntime' "
                           "(pip install 'metauas[onnx]')") from None
    options = onnx_session_options(threads or None)  # spinning off (metauas.threads)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for broken files
        raise InputError(f"{path}: cannot be loaded by onnxruntime ({str(exc).splitlines()[0][:200]})") from None


class OnnxRunner:
    """The three graphs of an export; prompt tensors are computed once and kept."""

    def __init__(self, folder: str | os.PathLike, threads: int | None = None,
                 meta: OnnxMetadata | None = None) -> None:
        self.folder = Path(folder)
        self.meta = meta or OnnxMetadata.read(self.folder)
        self.encoder = _session(self.folder / ENCODER_FILE, threads)
        self.prompt = _session(self.folder / PROMPT_FILE, threads)
        self.decoder = _session(self.folder / DECODER_FILE, threads)
        self._prompt_inputs: list[dict[str, np.ndarray]] = []

    @property
    def size(self) -> int:
        return int(self.meta.size)

    def encode(self, images: np.ndarray) -> list[np.ndarray]:
        """(B,3,S,S) float32 in [0,1] -> [f1..f5]."""
        return self.encoder.run(None, {"image": np.ascontiguousarray(images, dtype=np.float32)})

    def set_prompt_tensor(self, prompts: np.ndarray) -> None:
        """(K,3,S,S) prompt images -> cached decoder prompt inputs.

        A one-shot export (the default) takes any K: each prompt is prepared on its own and
        `predict` keeps the pixel-wise minimum over prompts, as `Segmenter(kshot="min")` does.
        An export made for K > 1 shots (model's averaged k-shot path) needs exactly K prompts.

        Raises:
            InputError: when a K-shot export gets another number of prompts.
        """
        if self.meta.shots > 1 and prompts.shape[0] != self.meta.shots:
            raise InputError(f"this ONNX export expects {self.meta.shots} prompt image(s), got "
                             f"{prompts.shape[0]}; export again with --shots {prompts.shape[0]}")
        groups = [prompts] if self.meta.shots > 1 else [prompts[i:i + 1] for i in range(prompts.shape[0])]
        names = [o.name for o in self.prompt.get_outputs()]
        self._prompt_inputs = []
        for group in groups:
            features = self.encode(group)
            feeds = {f"f{level}": features[level - 1] for level in self.meta.aligned_levels}
            self._prompt_inputs.append(dict(zip(names, self.prompt.run(None, feeds))))

    def predict(self, queries: np.ndarray) -> np.ndarray:
        """(B,3,S,S) float32 in [0,1] -> probabilities (B,1,S,S) against the cached prompt(s)."""
        if not self._prompt_inputs:
            raise InputError("no prompt set: call set_prompt() with a normal image first")
        features = self.encode(queries)
        feeds = {f"q{i}": f for i, f in enumerate(features, start=1)}
        out = None
        for prompt_inputs in self._prompt_inputs:
            prob = self.decoder.run(["prob"], {**feeds, **prompt_inputs})[0]
            out = prob if out is None else np.minimum(out, prob)
        return out


class OnnxSegmenter:
    """Drop-in for `Segmenter` (set_prompt / segment / size) running an ONNX export."""

    backend = "onnxruntime"

    def __init__(self, folder: str | os.PathLike, batch_size: int = 8, threads: int | None = None,
                 top_fraction: float = DEFAULT_TOP_FRACTION) -> None:
        self.runner = OnnxRunner(folder, threads=threads)
        self.top_fraction = top_fraction
        self.size = self.runner.size
        self.batch_size = batch_size
        self.num_prompts = 0

    @property
    def meta(self) -> OnnxMetadata:
        return self.runner.meta

    def set_prompt(self, images: ImageLike | Sequence[ImageLike]) -> None:
        prompts = list(images) if isinstance(images, (list, tuple)) else [images]
        if not prompts:
            raise InputError("at least one prompt image is needed")
        batch = torch.cat([to_model_tensor(load_image(p), self.size) for p in prompts]).numpy()
        self.runner.set_prompt_tensor(batch)
        self.num_prompts = len(prompts)

    def segment(self, queries: ImageLike | Sequence[ImageLike], batch_size: int | None = None,
                names: Sequence[str] | None = None) -> list[SegmentationResult]:
        items = list(queries) if isinstance(queries, (list, tuple)) else [queries]
        names = list(names) if names is not None else [f"query{i}" for i in range(len(items))]
        step = batch_size or self.batch_size
        results: list[SegmentationResult] = []
        for start in range(0, len(items), step):
            rgbs = [load_image(q) for q in items[start:start + step]]
            batch = torch.cat([to_model_tensor(rgb, self.size) for rgb in rgbs]).numpy()
            maps = torch.from_numpy(self.runner.predict(batch))
            for rgb, prob, name in zip(rgbs, maps, names[start:start + step]):
                full = to_original_size(prob, rgb.shape[:2])
                results.append(SegmentationResult(full, image_score(full, self.top_fraction), name,
                                                  list(range(self.num_prompts))))
        return results
