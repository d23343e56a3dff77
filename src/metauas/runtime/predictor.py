"""The predictor contract and THE batching loop: read -> resize -> predict -> resize back -> score.

Every way of segmenting images (PyTorch `Segmenter`, onnxruntime `OnnxSegmenter`, the CLI,
the web app, calibration, evaluation) goes through `Predictor.iter_segment`, so a change to
reading, resizing or scoring is made once. A backend implements two hooks on model-sized
float tensors:

* ``_encode_prompts(batch)``: (K, 3, S, S) in [0, 1] -> cache whatever the backend needs;
* ``_predict(batch)``: (B, 3, S, S) in [0, 1] -> ((B, 1, S, S) probabilities in [0, 1] on the
  CPU, the prompt indices compared with each query).

Where later options plug in: `Predictor._batches` decides which queries go into one model call
(today: `batch_size` at a time). A memory-bounded default batch size or tiled inference of large
queries replaces that one method (and, for tiles, `_segment_chunk`'s resize step); nothing else
in the loop needs to change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from metauas.errors import InputError
from metauas.io.images import ImageLike, LoadedImage, prompt_depth, read_image, to_model_tensor
from metauas.scoring import DEFAULT_TOP_FRACTION, image_score

MAX_KSHOT = 16  # prompts compared with every query in k-shot mode; more: a prompt pool


@dataclass
class SegmentationResult:
    """One query's result.

    Attributes:
        anomaly_map: (H, W) float32 in [0, 1] at the query's original resolution.
        score: image-level anomaly score in [0, 1] (`metauas.scoring.image_score` of the map,
            mean of its top 0.1 %).
        name: the query's name.
        prompts: indices of the prompt images compared with this query (into the list given
            to `set_prompt` or `set_prompt_pool`).
        scaling: how the query's pixels were scaled to [0, 1] (e.g. "8-bit", "10-bit (PNG sBIT)").
    """

    anomaly_map: np.ndarray
    score: float
    name: str = ""
    prompts: list[int] = field(default_factory=list)
    scaling: str = "8-bit"

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the anomaly map = the query's original size."""
        return self.anomaly_map.shape  # type: ignore[return-value]


@dataclass
class Outcome:
    """One query of `Predictor.iter_segment`: its image and result, or why it was skipped."""

    index: int
    source: ImageLike
    name: str
    image: LoadedImage | None = None
    result: SegmentationResult | None = None
    error: str | None = None


def as_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """One image or a list/tuple of images -> a list."""
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]  # type: ignore[list-item]


def default_names(items: Sequence[ImageLike]) -> list[str]:
    """The path of path-like queries, ``query<i>`` for in-memory ones."""
    return [str(q) if isinstance(q, (str, bytes)) or hasattr(q, "__fspath__") else f"query{i}"
            for i, q in enumerate(items)]


def to_original_size(prob: torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
    """(1, S, S) probabilities -> (H, W) float32 in [0, 1], resized bilinearly to the query's size."""
    if tuple(prob.shape[-2:]) != tuple(hw):
        prob = F.interpolate(prob[None], size=hw, mode="bilinear", align_corners=False)[0]
    return prob[0].clamp(0, 1).numpy().astype(np.float32)


class Predictor:
    """Base of every backend: prompt reading and the one query loop (see the module docstring).

    Attributes:
        size: model input size S in px (a multiple of 32).
        batch_size: queries per model call.
        top_fraction: share of pixels averaged into the image score.
        num_prompts: prompt images set by the last `set_prompt`/`set_prompt_pool`.
        query_depth: bit depth decided from the prompts for wide integer queries without sBIT
            (`metauas.io.images.prompt_depth`); None when the prompts were 8-bit or floats.
    """

    backend = "base"

    def __init__(self, size: int, batch_size: int = 8, top_fraction: float = DEFAULT_TOP_FRACTION) -> None:
        if batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}")
        if not 0.0 <= top_fraction <= 1.0:
            raise InputError(f"top_fraction must be in [0, 1], got {top_fraction}")
        self.size = int(size)
        self.batch_size = int(batch_size)
        self.top_fraction = top_fraction
        self.num_prompts = 0
        self.query_depth: int | None = None

    # ------------------------------------------------------------------ backend hooks
    def _encode_prompts(self, batch: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _predict(self, batch: torch.Tensor) -> tuple[torch.Tensor, list[list[int]]]:  # pragma: no cover
        raise NotImplementedError

    # ------------------------------------------------------------------ prompts
    def read_prompts(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """Read prompt image(s), decide `query_depth` from them, return (K, 3, S, S) in [0, 1].

        Raises:
            InputError: no image, or an image cannot be read.
        """
        items = as_list(images)
        if not items:
            raise InputError("at least one prompt image is needed")
        loaded = [read_image(p) for p in items]
        self.query_depth = prompt_depth(loaded)
        return torch.cat([to_model_tensor(image.rgb, self.size) for image in loaded])

    def set_prompt(self, images: ImageLike | Sequence[ImageLike]) -> None:
        """Encode one normal image (or K of them, k-shot) once, for all later queries.

        Args:
            images: path, PIL image, array or tensor, or a list of K of them (any size; each
                is resized to S x S).
        Raises:
            InputError: no image, an unreadable image, or more prompts than the backend takes.
        """
        batch = self.read_prompts(images)
        self._encode_prompts(batch)
        self.num_prompts = int(batch.shape[0])

    # ------------------------------------------------------------------ queries
    def read_query(self, source: ImageLike, name: str | None = None) -> LoadedImage:
        """One query read with the depth rule of the current prompt (`query_depth`).

        Raises:
            InputError: unreadable or unsupported image.
        """
        return read_image(source, name, depth=self.query_depth)

    def _batches(self, count: int, batch_size: int | None) -> Iterator[range]:
        """Index ranges of the queries that share one model call (integration point for a
        memory budget or tiling, see the module docstring)."""
        step = max(1, int(batch_size or self.batch_size))
        for start in range(0, count, step):
            yield range(start, min(start + step, count))

    def _segment_chunk(self, images: Sequence[LoadedImage], names: Sequence[str]) -> list[SegmentationResult]:
        batch = torch.cat([to_model_tensor(image.rgb, self.size) for image in images])
        maps, chosen = self._predict(batch)
        results = []
        for image, prob, name, ids in zip(images, maps.float().cpu(), names, chosen):
            full = to_original_size(prob, image.rgb.shape[:2])
            results.append(SegmentationResult(full, image_score(full, self.top_fraction), name, list(ids),
                                              image.scaling))
        return results

    def iter_segment(self, queries: ImageLike | Sequence[ImageLike], names: Sequence[str] | None = None,
                     batch_size: int | None = None, skip_unreadable: bool = False) -> Iterator[Outcome]:
        """Segment queries in batches, yielding one `Outcome` per query, in order.

        Args:
            queries: paths, PIL images, arrays, tensors or `LoadedImage`s (any size).
            names: one name per query (default: `default_names`).
            batch_size: queries per model call (default: `self.batch_size`).
            skip_unreadable: yield unreadable queries with `error` set instead of raising.
        Raises:
            InputError: no prompt set; an unreadable query when `skip_unreadable` is False.
        """
        items = as_list(queries)
        names = list(names) if names is not None else default_names(items)
        for chunk in self._batches(len(items), batch_size):
            outcomes = [Outcome(i, items[i], names[i]) for i in chunk]
            for outcome in outcomes:
                try:
                    outcome.image = self.read_query(outcome.source, None)
                except InputError as exc:
                    if not skip_unreadable:
                        raise
                    outcome.error = str(exc)
            ready = [o for o in outcomes if o.image is not None]
            if ready:
                results = self._segment_chunk([o.image for o in ready], [o.name for o in ready])  # type: ignore
                for outcome, result in zip(ready, results):
                    outcome.result = result
            yield from outcomes

    def segment(self, queries: ImageLike | Sequence[ImageLike], batch_size: int | None = None,
                names: Sequence[str] | None = None) -> list[SegmentationResult]:
        """Segment query images (paths, PIL images, arrays or tensors, any size).

        Returns:
            One `SegmentationResult` per query: (H, W) float32 map in [0, 1] at the query's
            original resolution, and its image score in [0, 1].
        Raises:
            InputError: no prompt set, or a query cannot be read.
        """
        return [o.result for o in self.iter_segment(queries, names, batch_size)]  # type: ignore[misc]

    def segment_one(self, query: ImageLike) -> SegmentationResult:
        """`segment` of a single query.

        Raises:
            InputError: as `segment`.
        """
        return self.segment([query])[0]


def path_name(source: object) -> str:
    """The path of a path-like source, else its type name (for messages)."""
    return str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
