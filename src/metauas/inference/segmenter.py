"""Fast, bounded inference: encode the prompt once, segment many queries in batches.

The official code re-encodes the prompt for every query; here the prompt's encoder features
and its alignment keys are computed once (`set_prompt`) and reused, so each query costs one
encoder pass plus the alignment/decoder.

With `optimize=True` (the default) queries run through `metauas.models.fast.optimize_for_inference`,
an inference copy of the model (BatchNorm folded, channels_last, cheaper last UNet block) whose
probabilities stay within 1e-4 of the eager model's (checked in tests/test_models.py and
benchmarks/speed.py). The copy is a snapshot: weights changed later on `segmenter.model` are
not seen; build a new Segmenter after training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from metauas.errors import InputError
from metauas.inference.images import ImageLike, load_image, to_model_tensor
from metauas.models import DEFAULT_MODEL, MetaUAS, PromptFeatures, load_model
from metauas.models.fast import optimize_for_inference, prepare_input


@dataclass
class SegmentationResult:
    anomaly_map: np.ndarray  # (H, W) float32 in [0, 1], at the query's original resolution
    score: float  # image-level anomaly score = max of the map (as in the paper)
    name: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return self.anomaly_map.shape  # type: ignore[return-value]


def _as_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]  # type: ignore[list-item]


class Segmenter:
    """Anomaly segmentation of query images against one or several normal prompt images."""

    def __init__(self, model: MetaUAS | str = DEFAULT_MODEL, size: int | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 8, optimize: bool = True) -> None:
        self.model = load_model(model) if isinstance(model, str) else model
        self.model.eval()
        self.size = int(size or self.model.config.image_size)
        if self.size % 32 or self.size < 32:
            raise InputError(f"size must be a positive multiple of 32, got {self.size}")
        if batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}")
        self.device = torch.device(device)
        self.model.to(self.device)
        self.optimize = optimize
        # the network that actually runs: the model itself or its optimized inference copy
        self.inference_model: MetaUAS = optimize_for_inference(self.model) if optimize else self.model
        self.batch_size = batch_size
        self._prompt: PromptFeatures | None = None
        self.num_prompts = 0

    # ------------------------------------------------------------------ prompt
    def set_prompt(self, images: ImageLike | Sequence[ImageLike]) -> None:
        """Encode one normal image (or K of them for k-shot) once, for all later queries."""
        prompts = _as_list(images)
        if not prompts:
            raise InputError("at least one prompt image is needed")
        tensors = [to_model_tensor(load_image(p), self.size) for p in prompts]
        self.set_prompt_tensor(torch.cat(tensors))

    def set_prompt_tensor(self, prompts: torch.Tensor) -> None:
        """Like `set_prompt` for (K,3,S,S) model-sized float tensors in [0,1] (K prompts)."""
        if prompts.dim() == 3:
            prompts = prompts[None]
        if prompts.dim() != 4 or prompts.shape[0] < 1 or prompts.shape[1] != 3 \
                or tuple(prompts.shape[-2:]) != (self.size, self.size):
            raise InputError(f"prompt tensor must be (K,3,{self.size},{self.size}), got {tuple(prompts.shape)}")
        batch = prompts.to(self.device, torch.float32)
        net = self.inference_model
        with torch.inference_mode():
            # one prompt: (1,3,S,S); K prompts: (1,K,3,S,S) (k-shot, aligned features averaged)
            prompt_input = batch[None] if batch.shape[0] > 1 else prepare_input(net, batch)
            self._prompt = net.prepare_prompt(prompt_input)
        self.num_prompts = int(batch.shape[0])

    @property
    def prompt_features(self) -> PromptFeatures:
        if self._prompt is None:
            raise InputError("no prompt set: call set_prompt() with a normal image first")
        return self._prompt

    # ------------------------------------------------------------------ queries
    def predict_tensor(self, queries: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) in [0,1] -> anomaly probabilities (B,1,S,S), using the cached prompt."""
        prompt = self.prompt_features
        net = self.inference_model
        with torch.inference_mode():
            features = net.encode(prepare_input(net, queries.to(self.device)))
            return torch.sigmoid(net.forward_features(features, prompt)).contiguous()

    def segment(self, queries: ImageLike | Sequence[ImageLike], batch_size: int | None = None,
                names: Sequence[str] | None = None) -> list[SegmentationResult]:
        items = _as_list(queries)
        names = list(names) if names is not None else [
            str(q) if isinstance(q, (str, bytes)) or hasattr(q, "__fspath__") else f"query{i}"
            for i, q in enumerate(items)]
        step = batch_size or self.batch_size
        results: list[SegmentationResult] = []
        for start in range(0, len(items), step):
            rgbs = [load_image(q) for q in items[start:start + step]]
            batch = torch.cat([to_model_tensor(rgb, self.size) for rgb in rgbs])
            maps = self.predict_tensor(batch).float().cpu()
            for rgb, prob, name in zip(rgbs, maps, names[start:start + step]):
                full = self._to_original_size(prob, rgb.shape[:2])
                results.append(SegmentationResult(full, float(full.max()), name))
        return results

    def segment_one(self, query: ImageLike) -> SegmentationResult:
        return self.segment([query])[0]

    @staticmethod
    def _to_original_size(prob: torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
        if tuple(prob.shape[-2:]) != tuple(hw):
            prob = F.interpolate(prob[None], size=hw, mode="bilinear", align_corners=False)[0]
        return prob[0].clamp(0, 1).numpy().astype(np.float32)
