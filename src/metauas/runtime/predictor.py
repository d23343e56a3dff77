"""The predictor contract and THE batching loop: read -> resize -> predict -> resize back -> score.

Every way of segmenting images (PyTorch `Segmenter`, onnxruntime `OnnxSegmenter`, the CLI,
the web app, calibration, evaluation) goes through `Predictor.iter_segment`, so a change to
reading, resizing or scoring is made once. A backend implements two hooks on model-sized
float tensors:

* ``_encode_prompts(batch)``: (K, 3, S, S) in [0, 1] -> cache whatever the backend needs;
* ``_predict(batch)``: (B, 3, S, S) in [0, 1] -> ((B, 1, S, S) probabilities in [0, 1] on the
  CPU, the prompt indices compared with each query).

Batches: `Predictor._batches` decides which queries go into one model call: ``batch_size``
when given, else `metauas.tiling.auto_batch_size` of the model input under ``memory_budget``
(GiB) capped at `DEFAULT_MAX_BATCH`.

Tiling (issue 13): with ``tile="auto"`` a query whose longer side is at least twice the model
size (`metauas.tiling.should_tile`) is segmented at its own scale in overlapping S x S tiles
(`metauas.tiling.tiled_anomaly_map`), each compared with the matching window of every prompt
chosen for the query (pixel-wise minimum over prompts, as untiled); ``tile=N`` (an int) tiles
every query larger than N px with N x N tiles, each resized to S (a coarser scale than
native when N > S). Backends give the per-tile predictor through ``_tile_predictor``. Tiled
results are scored by `metauas.scoring.tiled_image_score`; untiled queries are unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from metauas.errors import InputError
from metauas.io.images import (ImageLike, LoadedImage, check_segment_side, prompt_depth, read_image,
                               to_model_tensor)
from metauas.scoring import DEFAULT_TOP_FRACTION, image_score, tiled_image_score
from metauas.tiling import Predict, auto_batch_size, should_tile, tiled_anomaly_map

MAX_KSHOT = 16  # prompts compared with every query in k-shot mode; more: a prompt pool
DEFAULT_MEMORY_BUDGET_GIB = 2.0
# Upper limit of the automatic batch size (memory only lowers it). benchmarks/throughput.py, 50
# queries of 512 x 512 through `metauas segment` on a shared 2-core machine, median of 3
# interleaved rounds (benchmarks/results/throughput_batch_sizes.json): --batch-size 1, 2, 4 took
# 12.7, 13.3, 13.1 s (within the noise), 8 took 16.4 s; with this limit (throughput.json) the
# default took 11.4 s, --batch-size 1 11.8 s, 8 13.8 s. 4 keeps the memory budget meaningful
# (4 at 640 px, 3 at 768, 1 at 1024 under 2 GiB) at no measured cost against 1.
DEFAULT_MAX_BATCH = 4
TILE_MODES = ("off", "auto")


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
        tile: side in query px of the tiles the map was made of (`metauas.tiling`), None when
            the query was segmented whole (resized to the model size).
    """

    anomaly_map: np.ndarray
    score: float
    name: str = ""
    prompts: list[int] = field(default_factory=list)
    scaling: str = "8-bit"
    tile: int | None = None

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


def check_tile(tile: str | int | None) -> str | int:
    """The tiling option: "off" (None too), "auto", or a tile side N >= 32 px (int or its text).

    Raises:
        InputError: any other value.
    """
    if tile is None:
        return "off"
    if isinstance(tile, str) and tile.strip().lower() in TILE_MODES:
        return tile.strip().lower()
    try:
        side = int(tile) if not isinstance(tile, bool) else -1
    except (TypeError, ValueError):
        side = -1
    if side < 32 or (isinstance(tile, float) and tile != side):
        raise InputError(f"tile must be 'auto', 'off' or a tile side of at least 32 px, got {tile!r}")
    return side


def _scale_rgb(rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 resized to ``hw`` (bilinear, antialiased), still uint8."""
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=hw, mode="bilinear", align_corners=False, antialias=True)
    return t[0].clamp_(0, 255).round_().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


class Predictor:
    """Base of every backend: prompt reading and the one query loop (see the module docstring).

    Attributes:
        size: model input size S in px (a multiple of 32).
        batch_size: queries (and, when tiling, tiles) per model call; None: chosen from
            ``memory_budget`` (`auto_batch`).
        top_fraction: share of pixels averaged into the image score.
        tile: "off", "auto" or a tile side N in query px (see the module docstring).
        memory_budget: peak-memory budget in GiB for automatic batch sizes.
        num_prompts: prompt images set by the last `set_prompt`/`set_prompt_pool`.
        query_depth: bit depth decided from the prompts for wide integer queries without sBIT
            (`metauas.io.images.prompt_depth`); None when the prompts were 8-bit or floats.
    Raises:
        InputError: batch size < 1, top_fraction outside [0, 1], a non-positive memory budget
            or an invalid tile option.
    """

    backend = "base"

    def __init__(self, size: int, batch_size: int | None = None, top_fraction: float = DEFAULT_TOP_FRACTION,
                 tile: str | int | None = "off", memory_budget: float = DEFAULT_MEMORY_BUDGET_GIB) -> None:
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}")
        if not 0.0 <= top_fraction <= 1.0:
            raise InputError(f"top_fraction must be in [0, 1], got {top_fraction}")
        if not memory_budget > 0:
            raise InputError(f"memory budget must be positive (GiB), got {memory_budget}")
        self.size = int(size)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.top_fraction = top_fraction
        self.tile = check_tile(tile)
        self.memory_budget = float(memory_budget)
        self.num_prompts = 0
        self.query_depth: int | None = None
        self._prompt_sources: list[ImageLike] | None = None  # what set_prompt got (for tiling)
        self._prompt_cache: dict[int, np.ndarray] = {}  # decoded prompts kept for tiling

    # ------------------------------------------------------------------ backend hooks
    def _encode_prompts(self, batch: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _predict(self, batch: torch.Tensor) -> tuple[torch.Tensor, list[list[int]]]:  # pragma: no cover
        raise NotImplementedError

    def _tile_predictor(self) -> tuple[Predict, str]:
        """(predict for `metauas.tiling.tiled_anomaly_map`, its prompt mode) of this backend."""
        raise InputError(f"the {self.backend} backend cannot tile")

    def _tile_prompts(self, query: torch.Tensor) -> list[int]:
        """Prompt indices a tiled query is compared with; ``query`` is its (1,3,S,S) resized copy."""
        if not self.num_prompts:
            raise InputError("no prompt set: call set_prompt() with a normal image first")
        return list(range(self.num_prompts))

    # ------------------------------------------------------------------ batches and memory
    @property
    def budget_bytes(self) -> int:
        """``memory_budget`` in bytes."""
        return int(self.memory_budget * 1024**3)

    def auto_batch(self) -> int:
        """Queries per model call under the memory budget: `metauas.tiling.auto_batch_size` of
        one S x S model input, at most `DEFAULT_MAX_BATCH` (4 at S=256 and 2 GiB, 1 at 1024)."""
        return auto_batch_size(self.size, self.size, self.budget_bytes, DEFAULT_MAX_BATCH)

    # ------------------------------------------------------------------ prompts
    def read_prompts(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """Read prompt image(s), decide `query_depth` from them, return (K, 3, S, S) in [0, 1].

        Raises:
            InputError: no image, an image cannot be read, or one is smaller than
                MIN_SEGMENT_SIDE px per side.
        """
        items, loaded = self._read_prompt_images(images)
        return torch.cat([to_model_tensor(image.rgb, self.size) for image in loaded])

    def _read_prompt_images(self, images: ImageLike | Sequence[ImageLike]) -> tuple[list, list[LoadedImage]]:
        """(the sources as a list, their decoded images); sets `query_depth`."""
        items = as_list(images)
        if not items:
            raise InputError("at least one prompt image is needed")
        loaded = [check_segment_side(read_image(p), f"prompt {_what(p)}") for p in items]
        self.query_depth = prompt_depth(loaded)
        return items, loaded

    def _remember_prompts(self, items: list | None, loaded: Sequence[LoadedImage] = ()) -> None:
        """Keep the prompt sources for tiling (decoded images too when tiling is on and few)."""
        self._prompt_sources = items
        keep = items is not None and self.tile != "off" and len(items) <= MAX_KSHOT
        self._prompt_cache = {i: image.rgb for i, image in enumerate(loaded)} if keep else {}

    def _prompt_rgb(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 prompt ``index`` at full resolution (decoded again when not kept).

        Raises:
            InputError: the prompts were given as model-sized tensors (nothing to tile from).
        """
        if index in self._prompt_cache:
            return self._prompt_cache[index]
        if self._prompt_sources is None:
            raise InputError("tiling needs the prompt image(s) given to set_prompt/set_prompt_pool, "
                             "not model-sized tensors")
        rgb = read_image(self._prompt_sources[index]).rgb
        if len(self._prompt_sources) <= MAX_KSHOT:
            self._prompt_cache[index] = rgb
        return rgb

    def set_prompt(self, images: ImageLike | Sequence[ImageLike]) -> None:
        """Encode one normal image (or K of them, k-shot) once, for all later queries.

        Args:
            images: path, PIL image, array or tensor, or a list of K of them (any size; each
                is resized to S x S; tiling uses them at full resolution).
        Raises:
            InputError: no image, an unreadable image, one smaller than MIN_SEGMENT_SIDE px per
                side, or more prompts than the backend takes.
        """
        items, loaded = self._read_prompt_images(images)
        batch = torch.cat([to_model_tensor(image.rgb, self.size) for image in loaded])
        self._encode_prompts(batch)
        self.num_prompts = int(batch.shape[0])
        self._remember_prompts(items, loaded)

    # ------------------------------------------------------------------ queries
    def read_query(self, source: ImageLike, name: str | None = None) -> LoadedImage:
        """One query read with the depth rule of the current prompt (`query_depth`).

        Raises:
            InputError: unreadable or unsupported image, or a side below MIN_SEGMENT_SIDE px.
        """
        return check_segment_side(read_image(source, name, depth=self.query_depth), name or _what(source))

    def _batches(self, count: int, batch_size: int | None) -> Iterator[range]:
        """Index ranges of the queries that share one model call: ``batch_size`` (argument,
        else attribute) at a time, else `auto_batch` (the memory budget)."""
        step = max(1, int(batch_size or self.batch_size or self.auto_batch()))
        for start in range(0, count, step):
            yield range(start, min(start + step, count))

    def tile_side(self, hw: tuple[int, int]) -> int | None:
        """Tile side in query px for an image of size ``hw`` under the `tile` option, None: whole."""
        if self.tile == "off":
            return None
        if self.tile == "auto":
            return self.size if should_tile(hw[0], hw[1], self.size) else None
        return int(self.tile) if max(hw) > int(self.tile) else None

    def _segment_chunk(self, images: Sequence[LoadedImage], names: Sequence[str]) -> list[SegmentationResult]:
        sides = [self.tile_side(image.rgb.shape[:2]) for image in images]
        whole = [i for i, side in enumerate(sides) if side is None]
        results: list[SegmentationResult | None] = [None] * len(images)
        if whole:
            done = self._segment_whole([images[i] for i in whole], [names[i] for i in whole])
            for i, result in zip(whole, done):
                results[i] = result
        for i, side in enumerate(sides):
            if side is not None:
                results[i] = self._segment_tiled(images[i], names[i], side)
        return results  # type: ignore[return-value]

    def _segment_whole(self, images: Sequence[LoadedImage], names: Sequence[str]) -> list[SegmentationResult]:
        """Resize -> predict -> resize back -> score, for queries segmented whole."""
        batch = torch.cat([to_model_tensor(image.rgb, self.size) for image in images])
        maps, chosen = self._predict(batch)
        results = []
        for image, prob, name, ids in zip(images, maps.float().cpu(), names, chosen):
            full = to_original_size(prob, image.rgb.shape[:2])
            results.append(SegmentationResult(full, image_score(full, self.top_fraction), name, list(ids),
                                              image.scaling))
        return results

    def _segment_tiled(self, image: LoadedImage, name: str, side: int) -> SegmentationResult:
        """One query from ``side`` x ``side`` tiles (resized to S), minimum over its prompts."""
        ids = self._tile_prompts(to_model_tensor(image.rgb, self.size))
        predict, mode = self._tile_predictor()
        h, w = image.rgb.shape[:2]
        query = image.rgb
        if side != self.size:  # N-px tiles: the query at scale S / N, tiled at S
            query = _scale_rgb(query, (max(1, round(h * self.size / side)), max(1, round(w * self.size / side))))
        full: np.ndarray | None = None
        for i in ids:
            part = tiled_anomaly_map(query, self._prompt_rgb(i), predict, tile_size=self.size, prompt_mode=mode,
                                     batch_size=self.batch_size, budget_bytes=self.budget_bytes,
                                     max_batch=DEFAULT_MAX_BATCH)
            full = part if full is None else np.minimum(full, part, out=full)
        if query is not image.rgb:
            full = to_original_size(torch.from_numpy(full)[None], (h, w))
        return SegmentationResult(full, tiled_image_score(full, side, self.top_fraction), name, ids,  # type: ignore
                                  image.scaling, tile=side)

    def iter_segment(self, queries: ImageLike | Sequence[ImageLike], names: Sequence[str] | None = None,
                     batch_size: int | None = None, skip_unreadable: bool = False) -> Iterator[Outcome]:
        """Segment queries in batches, yielding one `Outcome` per query, in order.

        Args:
            queries: paths, PIL images, arrays, tensors or `LoadedImage`s (any size).
            names: one name per query (default: `default_names`).
            batch_size: queries per model call (default: `self.batch_size`, else `auto_batch`).
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


def _what(source: object) -> str:
    """How messages call an image: its path, else its type name."""
    return str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__


def path_name(source: object) -> str:
    """The path of a path-like source, else its type name (for messages)."""
    return str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
