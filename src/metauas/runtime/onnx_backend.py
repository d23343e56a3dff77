"""Running an ONNX export (see export.py) with onnxruntime, behind the `Predictor` contract.

`OnnxRunner` works on model-sized float32 arrays; `OnnxSegmenter` is a `Predictor` whose two
hooks call it, so reading, resizing, batching and scoring are the very loop the PyTorch
`Segmenter` runs (`metauas.runtime.predictor`), and the CLI and the web app can swap backends.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from metauas.errors import InputError, MetaUASError
from metauas.runtime.onnx_format import DECODER_FILE, ENCODER_FILE, PROMPT_FILE, OnnxMetadata
from metauas.runtime.predictor import DEFAULT_MEMORY_BUDGET_GIB, Predictor
from metauas.threads import onnx_session_options
from metauas.scoring import DEFAULT_TOP_FRACTION
from metauas.tiling import Predict


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
        """Input size S in px the graphs were exported for."""
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

    def predict_pairs(self, queries: np.ndarray, prompts: np.ndarray) -> np.ndarray:
        """Each query against its own prompt (tiles): (B,3,S,S) and (B,3,S,S) float32 in [0,1]
        -> (B,1,S,S) probabilities. The cached prompt(s) are not used.

        Raises:
            InputError: a K-shot export (K > 1), or prompts of another count than queries.
        """
        if self.meta.shots > 1 or prompts.shape[0] != queries.shape[0]:
            raise InputError("tiling needs a one-shot ONNX export and one prompt tile per query tile")
        features = self.encode(queries)
        prompt_features = self.encode(prompts)
        names = [o.name for o in self.prompt.get_outputs()]
        out = []
        for i in range(queries.shape[0]):
            feeds = {f"f{level}": prompt_features[level - 1][i:i + 1] for level in self.meta.aligned_levels}
            prompt_inputs = dict(zip(names, self.prompt.run(None, feeds)))
            query_feeds = {f"q{j}": f[i:i + 1] for j, f in enumerate(features, start=1)}
            out.append(self.decoder.run(["prob"], {**query_feeds, **prompt_inputs})[0])
        return np.concatenate(out)

    def predict(self, queries: np.ndarray) -> np.ndarray:
        """(B,3,S,S) float32 in [0,1] -> probabilities (B,1,S,S) against the cached prompt(s).

        Raises:
            InputError: no prompt set.
        """
        if not self._prompt_inputs:
            raise InputError("no prompt set: call set_prompt() with a normal image first")
        features = self.encode(queries)
        feeds = {f"q{i}": f for i, f in enumerate(features, start=1)}
        out = None
        for prompt_inputs in self._prompt_inputs:
            prob = self.decoder.run(["prob"], {**feeds, **prompt_inputs})[0]
            out = prob if out is None else np.minimum(out, prob)
        return out


class OnnxSegmenter(Predictor):
    """A `Predictor` (set_prompt / segment / size, like `Segmenter`) running an ONNX export.

    Args:
        folder: an export folder written by `metauas export` (metauas_onnx.json inside).
        batch_size: queries (and tiles) per model call; None: from ``memory_budget``.
        threads: onnxruntime intra-op threads (default: torch's thread count).
        top_fraction: share of pixels averaged into the image score.
        tile: "off", "auto" or a tile side in px (`metauas.runtime.predictor`); the export's
            fixed input size means each tile is compared with the same region of the prompt
            (`metauas.tiling` prompt mode "center", no margin).
        memory_budget: peak-memory budget in GiB for automatic batch sizes.
    Raises:
        InputError: not an export folder, or files onnxruntime cannot load.
        MetaUASError: onnxruntime is not installed.
    """

    backend = "onnxruntime"

    def __init__(self, folder: str | os.PathLike, batch_size: int | None = None, threads: int | None = None,
                 top_fraction: float = DEFAULT_TOP_FRACTION, tile: str | int | None = "off",
                 memory_budget: float = DEFAULT_MEMORY_BUDGET_GIB) -> None:
        self.runner = OnnxRunner(folder, threads=threads)
        super().__init__(self.runner.size, batch_size, top_fraction, tile, memory_budget)

    @property
    def meta(self) -> OnnxMetadata:
        """The export's metadata (`metauas_onnx.json`)."""
        return self.runner.meta

    def _encode_prompts(self, batch: torch.Tensor) -> None:
        self.runner.set_prompt_tensor(batch.numpy())

    def _tile_predictor(self) -> tuple[Predict, str]:
        def predict(query_tiles: torch.Tensor, prompt_tiles: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(self.runner.predict_pairs(query_tiles.numpy(), prompt_tiles.numpy()))

        return predict, "center"

    def _predict(self, batch: torch.Tensor) -> tuple[torch.Tensor, list[list[int]]]:
        maps = torch.from_numpy(self.runner.predict(batch.numpy()))
        return maps, [list(range(self.num_prompts))] * int(batch.shape[0])
