"""Tiled anomaly segmentation of images larger than the model size, at bounded memory.

The model runs at its training size S (256 px for the default model). Resizing a 2048 x 2048
inspection image to 256 shrinks a 12-px defect to 1.5 px, below what the network can see
(issue 13). Here the query is cut into overlapping S x S tiles at its own (native) scale; each
tile is compared with the matching window of the prompt, taken with a margin around it so the
model's soft alignment can still absorb a misalignment of up to the margin, and the per-tile
maps are blended into one full-resolution map.

Steps (all pure functions; the model is reached only through the ``predict`` callable):

1. The prompt is resized to the query's size when they differ (bilinear, antialiased).
2. `plan_tiles`: tile origins along each axis, evenly spaced so that neighbours overlap by at
   least ``overlap * S`` pixels, the first tile flush with the start and the last with the end
   of the image. An image side shorter than S is padded by reflection to S (and cropped back).
3. For each tile the prompt window (`prompt_window`) is the tile grown by ``margin`` pixels
   on every side, shifted inside the image near its borders (reflection-padded when the image
   is smaller than the window). With ``prompt_mode="native"`` (default) the window goes to the
   model at native scale, (S + 2 margin) px square: the model's alignment, cosine comparison
   and patch matching all attend over any number of prompt positions, so a larger prompt only
   adds candidates. ``"center"`` uses the tile's own region of the prompt (no margin) and
   ``"resize"`` shrinks the window to S (which changes the prompt's scale against the query's).
   Measured with benchmarks/highres.py (docs/highres.md): "resize" doubled the strongest
   normal response; "native" and "center" were close on a 3-px or 24-px misaligned gravel
   texture, and "native" was better on a 24-px misaligned brick texture (defect / strongest
   normal pixel 2.68 vs 2.53), at ~25 % more time on the 2048-px runs.
4. Tiles go to ``predict`` in batches of ``batch_size``; only the current batch's crops exist.
5. Blending: each tile's map is weighted by a separable tapered-cosine (Tukey) window whose
   cosine ramps span the overlap on sides that have a neighbour and that stays 1 on sides at
   the image border (Harris, "On the use of windows for harmonic analysis with the discrete
   Fourier transform", Proc. IEEE 1978, for the window family). The weighted maps and the
   weights are summed in two float32 buffers of the query's size, and the map is their
   quotient, so a pixel's value is a weighted mean of the tiles covering it: no seams (weights
   fall smoothly to ~0 at tile edges inside the image) and a constant predictor gives the
   same constant map.

Memory: the query and prompt are kept as given (uint8 arrays stay uint8; crops are converted
per batch), plus two float32 (H, W) buffers and one batch of tiles. `auto_batch_size` chooses a
batch size from the pixel count of one model input so the model's peak stays under a budget.

The image score of a tiled map is `metauas.scoring.image_score(map)`, computed by the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PROMPT_MODES", "DEFAULT_OVERLAP", "DEFAULT_MARGIN", "DEFAULT_BUDGET_BYTES", "Predict", "Tile",
           "auto_batch_size", "blend_weights", "model_predictor", "plan_tiles", "prompt_window", "tile_starts",
           "tiled_anomaly_map", "should_tile"]

PROMPT_MODES = ("native", "center", "resize")
DEFAULT_OVERLAP = 0.25
DEFAULT_MARGIN = 32  # px on each side of a tile; 2 * margin keeps (S + 2 margin) a multiple of 32
DEFAULT_BUDGET_BYTES = 2 * 1024**3

# predict(query_tiles (B,3,S,S) float in [0,1], prompt_tiles (B,3,P,P) float in [0,1]) -> (B,1,S,S) in [0,1]
Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------- planning
def tile_starts(length: int, tile: int, overlap_px: int) -> list[int]:
    """Origins of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap_px`` overlap.

    The first tile starts at 0, the last ends at ``length``, and the origins in between are
    evenly spaced (rounded), so every overlap is ``overlap_px`` or a little more. A length of
    at most ``tile`` gives one tile at 0 (the caller pads a shorter side).

    Raises:
        ValueError: for tile < 1, length < 1 or an overlap outside [0, tile).
    """
    if tile < 1 or length < 1:
        raise ValueError(f"tile and length must be positive, got tile={tile}, length={length}")
    if not 0 <= overlap_px < tile:
        raise ValueError(f"overlap must be in [0, {tile}) px, got {overlap_px}")
    if length <= tile:
        return [0]
    stride = tile - overlap_px
    count = math.ceil((length - tile) / stride) + 1
    span = length - tile
    return [round(i * span / (count - 1)) for i in range(count)]


@dataclass(frozen=True)
class Tile:
    """One tile: query region ``[y, y+size) x [x, x+size)`` and which sides have a neighbour."""

    y: int
    x: int
    size: int
    top: bool  # a neighbouring tile overlaps this side (the blend weight ramps there)
    bottom: bool
    left: bool
    right: bool


def plan_tiles(height: int, width: int, tile_size: int, overlap: float = DEFAULT_OVERLAP) -> list[Tile]:
    """Overlapping tiles covering a ``height x width`` image (sides shorter than the tile are padded).

    Args:
        height, width: image size in px (>= 1).
        tile_size: the model input size S.
        overlap: minimum overlap between neighbours as a fraction of S, in [0, 0.5].
    Returns:
        Tiles in row-major order; their union covers ``[0, max(height, S)) x [0, max(width, S))``.
    Raises:
        ValueError: for non-positive sizes or an overlap outside [0, 0.5].
    """
    if not 0.0 <= overlap <= 0.5:
        raise ValueError(f"overlap must be in [0, 0.5], got {overlap}")
    overlap_px = int(round(overlap * tile_size))
    ys = tile_starts(max(height, tile_size), tile_size, min(overlap_px, tile_size - 1))
    xs = tile_starts(max(width, tile_size), tile_size, min(overlap_px, tile_size - 1))
    return [Tile(y, x, tile_size, top=i > 0, bottom=i < len(ys) - 1, left=j > 0, right=j < len(xs) - 1)
            for i, y in enumerate(ys) for j, x in enumerate(xs)]


def _ramp_profile(size: int, ramp: int, start: bool, end: bool) -> torch.Tensor:
    """1-D weights: 1, with sin^2 ramps of ``ramp`` px at the flagged ends (never exactly 0)."""
    w = torch.ones(size, dtype=torch.float32)
    ramp = min(ramp, size // 2)
    if ramp > 0:
        rise = torch.sin(0.5 * math.pi * (torch.arange(ramp, dtype=torch.float32) + 0.5) / ramp) ** 2
        if start:
            w[:ramp] = rise
        if end:
            w[size - ramp:] = rise.flip(0)
    return w


def blend_weights(tile: Tile, ramp_px: int) -> torch.Tensor:
    """(S, S) float32 blend weights in (0, 1] of one tile (separable tapered-cosine window).

    Sides with a neighbour ramp up as sin^2 over ``ramp_px`` pixels; sides at the image border
    stay 1, so border pixels covered by one tile keep full weight.
    """
    wy = _ramp_profile(tile.size, ramp_px, tile.top, tile.bottom)
    wx = _ramp_profile(tile.size, ramp_px, tile.left, tile.right)
    return wy[:, None] * wx[None, :]


def prompt_window(tile: Tile, margin: int, height: int, width: int) -> tuple[int, int, int]:
    """(y, x, size) of the prompt window for a tile: the tile grown by ``margin`` on each side.

    The window is shifted to lie inside the (padded) image where it fits; when the image is
    smaller than the window the origin is ``tile - margin`` and the caller pads by reflection.
    """
    size = tile.size + 2 * margin

    def place(start: int, length: int) -> int:
        if length >= size:
            return min(max(start - margin, 0), length - size)
        return start - margin

    return place(tile.y, max(height, tile.size)), place(tile.x, max(width, tile.size)), size


# ---------------------------------------------------------------------------------- images
def _as_image(image: np.ndarray | torch.Tensor, what: str) -> np.ndarray | torch.Tensor:
    """Validate an (H,W,3) uint8 array or a (3,H,W) float tensor in [0,1]; returned unchanged."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{what}: expected an (H,W,3) uint8 array, got {image.shape} {image.dtype}")
        return image
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ValueError(f"{what}: expected a (3,H,W) float tensor, got {tuple(image.shape)} {image.dtype}")
        return image
    raise ValueError(f"{what}: expected a numpy array or torch tensor, got {type(image).__name__}")


def _hw(image: np.ndarray | torch.Tensor) -> tuple[int, int]:
    return (image.shape[0], image.shape[1]) if isinstance(image, np.ndarray) else (image.shape[1], image.shape[2])


def _crop(image: np.ndarray | torch.Tensor, y: int, x: int, size: int) -> torch.Tensor:
    """(3, size, size) float32 in [0,1] window of the image; outside parts are reflected."""
    h, w = _hw(image)
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + size, h), min(x + size, w)
    if isinstance(image, np.ndarray):
        part = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1).float().div_(255.0)
    else:
        part = image[:, y0:y1, x0:x1].float()
    pads = (x0 - x, x + size - x1, y0 - y, y + size - y1)  # left, right, top, bottom
    if any(pads):
        part = _reflect_pad(part, pads)
    return part


def _reflect_pad(part: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Reflection padding that also works when the pad exceeds the side (repeated reflection)."""
    left, right, top, bottom = pads
    while left or right or top or bottom:
        h, w = part.shape[-2:]
        step = (min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1))
        if w == 1 or h == 1:  # cannot reflect a single row/column: repeat it
            part = F.pad(part[None], (left, right, top, bottom), mode="replicate")[0]
            break
        part = F.pad(part[None], step, mode="reflect")[0]
        left, right, top, bottom = left - step[0], right - step[1], top - step[2], bottom - step[3]
    return part


def _resize_like(prompt: np.ndarray | torch.Tensor, hw: tuple[int, int]) -> np.ndarray | torch.Tensor:
    """The prompt resized to ``hw`` (bilinear, antialiased), in its own storage type."""
    if _hw(prompt) == hw:
        return prompt
    t = (torch.from_numpy(prompt).permute(2, 0, 1).float().div(255.0) if isinstance(prompt, np.ndarray)
         else prompt.float())
    t = F.interpolate(t[None], size=hw, mode="bilinear", align_corners=False, antialias=True)[0].clamp_(0, 1)
    if isinstance(prompt, np.ndarray):
        return t.mul_(255.0).round_().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return t


# ---------------------------------------------------------------------------------- blending
def should_tile(height: int, width: int, model_size: int, factor: float = 2.0) -> bool:
    """Whether an image is large enough against the model size for tiling to matter.

    True when the longer side is at least ``factor`` times the model size (the defect then
    shrinks by that factor or more when the whole image is resized to the model).
    """
    return max(height, width) >= factor * model_size


def _batches(items: Sequence[Tile], size: int) -> Iterator[Sequence[Tile]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def tiled_anomaly_map(query: np.ndarray | torch.Tensor, prompt: np.ndarray | torch.Tensor, predict: Predict,
                      tile_size: int = 256, overlap: float = DEFAULT_OVERLAP, margin: int = DEFAULT_MARGIN,
                      prompt_mode: str = "native", batch_size: int | None = None,
                      budget_bytes: int = DEFAULT_BUDGET_BYTES, max_batch: int | None = None) -> np.ndarray:
    """Full-resolution anomaly map of a large query from overlapping model-sized tiles.

    Args:
        query: (H, W, 3) uint8 RGB array (as `metauas.inference.images.load_image` gives) or
            (3, H, W) float tensor in [0, 1].
        prompt: the normal image, same forms; resized to the query's size when it differs.
        predict: ``predict(query_tiles, prompt_tiles) -> maps``: query tiles (B,3,S,S) and
            prompt tiles (B,3,P,P) float32 in [0,1], with P = S + 2 * margin for
            ``prompt_mode="native"`` and P = S otherwise; returns (B,1,S,S) maps in [0,1].
            `model_predictor` builds one from a MetaUAS model.
        tile_size: S, the model input size (tiles are taken at the query's native scale).
        overlap: minimum overlap of neighbouring tiles as a fraction of S, in [0, 0.5].
        margin: prompt context in px added on each side of a tile (``native``/``resize``).
        prompt_mode: "native", "center" or "resize" (see the module docstring).
        batch_size: tiles per ``predict`` call; None: `auto_batch_size` of one tile's pixels
            (query plus prompt window) under ``budget_bytes`` less the images and buffers.
        budget_bytes: memory budget used when ``batch_size`` is None.
        max_batch: upper limit of that automatic batch (default `MAX_AUTO_BATCH`).
    Returns:
        (H, W) float32 map in [0, 1] at the query's resolution.
    Raises:
        ValueError: for malformed images, an unknown prompt mode, a negative margin, a batch size
            < 1, or a ``predict`` result of the wrong shape or with non-finite values.
    """
    query = _as_image(query, "query")
    prompt = _as_image(prompt, "prompt")
    if prompt_mode not in PROMPT_MODES:
        raise ValueError(f"prompt_mode must be one of {PROMPT_MODES}, got {prompt_mode!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    height, width = _hw(query)
    prompt = _resize_like(prompt, (height, width))
    tiles = plan_tiles(height, width, tile_size, overlap)
    ramp = int(round(overlap * tile_size))
    use_margin = margin if prompt_mode != "center" else 0
    padded_h, padded_w = max(height, tile_size), max(width, tile_size)
    if batch_size is None:
        window = tile_size + 2 * use_margin if prompt_mode == "native" else tile_size
        # the budget left after the two float32 buffers and the two images
        fixed = 8 * padded_h * padded_w + 2 * (query.nbytes if isinstance(query, np.ndarray) else
                                               query.element_size() * query.numel())
        # a tile costs one query and one prompt encoding: count both inputs' pixels
        batch_size = auto_batch_size(tile_size, tile_size + window * window // tile_size,
                                     max(budget_bytes - fixed, 1), max_batch or MAX_AUTO_BATCH)
    total = torch.zeros(padded_h, padded_w, dtype=torch.float32)
    weight_sum = torch.zeros(padded_h, padded_w, dtype=torch.float32)
    for group in _batches(tiles, batch_size):
        queries = torch.stack([_crop(query, t.y, t.x, tile_size) for t in group])
        prompts = []
        for t in group:
            py, px, size = prompt_window(t, use_margin, height, width)
            window = _crop(prompt, py, px, size)
            if prompt_mode == "resize" and size != tile_size:
                window = F.interpolate(window[None], size=(tile_size, tile_size), mode="bilinear",
                                       align_corners=False, antialias=True)[0].clamp_(0, 1)
            prompts.append(window)
        maps = predict(queries, torch.stack(prompts))
        del queries, prompts
        if not isinstance(maps, torch.Tensor) or tuple(maps.shape) != (len(group), 1, tile_size, tile_size):
            got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
            raise ValueError(f"predict must return ({len(group)},1,{tile_size},{tile_size}) maps, got {got}")
        maps = maps.detach().float().cpu()
        if not torch.isfinite(maps).all():
            raise ValueError("predict returned non-finite values")
        for t, m in zip(group, maps):
            w = blend_weights(t, ramp)
            total[t.y:t.y + tile_size, t.x:t.x + tile_size].add_(m[0] * w)
            weight_sum[t.y:t.y + tile_size, t.x:t.x + tile_size].add_(w)
        del maps
    total.div_(weight_sum).clamp_(0.0, 1.0)
    return total[:height, :width].numpy()


# ---------------------------------------------------------------------------------- model
def model_predictor(model: torch.nn.Module, optimize: bool = True) -> Predict:
    """A ``predict`` for `tiled_anomaly_map` running a MetaUAS model as `Segmenter` does.

    Each tile batch: queries and prompts are encoded (``prepare_input`` for the memory format
    of the optimized copy), the prompts prepared (`MetaUAS.prepare_prompt`) and
    `MetaUAS.anomaly_map` computed under ``torch.inference_mode()``: for a query of exactly
    S x S and a prompt of the same size this is the map ``Segmenter(model).segment`` returns.

    Args:
        model: a `metauas.models.MetaUAS`.
        optimize: run `metauas.models.fast.optimize_for_inference`'s copy (as Segmenter's
            default) instead of the model itself.
    Returns:
        The predict callable; tensors are moved to the model's device.
    """
    from metauas.models.fast import optimize_for_inference, prepare_input

    model.eval()
    net = optimize_for_inference(model) if optimize and not getattr(model, "optimized_for_inference", False) \
        else model
    device = next(net.parameters()).device

    def predict(query_tiles: torch.Tensor, prompt_tiles: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            features = net.encode(prepare_input(net, query_tiles.to(device)))
            prompt = net.prepare_prompt(prepare_input(net, prompt_tiles.to(device)))
            return net.anomaly_map(features, prompt).float().cpu()

    return predict


# ---------------------------------------------------------------------------------- memory
# Peak RSS (ru_maxrss) of one process running the default model (metauas-lite0-256, optimized
# copy as Segmenter runs it, one cached prompt of the same size, torch 2.13 CPU, 2 threads) on a
# batch of B random queries of s x s px: `python benchmarks/highres.py --fit-memory`, stored in
# benchmarks/results/highres.json ("auto_batch_measurement"). Measured (s x B: GiB):
# 256x1 0.35, 256x8 0.54, 512x1 0.51, 512x4 1.08, 768x1 0.81, 768x2 1.25, 1024x1 1.09,
# 1024x2 1.83, 1536x1 2.04. Least squares: peak = 326 MB + 46 B/px (prompt) + 760 B/px per
# query, at most 82 MB above any point. The constants round that up and add 200 MiB of margin
# to the base: `metauas segment --size 1024 --batch-size 2` (8 queries; decoding, maps and PNG
# writing on top of the model) peaked at 2.03 GiB (benchmarks/cli_memory.py), 70 MB above this
# model with a 100 MiB margin, so the margin covers the CLI's own memory too.
BASE_BYTES = 530 * 1024**2
PROMPT_BYTES_PER_PIXEL = 50
BYTES_PER_PIXEL = 770
MAX_AUTO_BATCH = 8  # the CLI's default batch; larger batches were not faster per query on CPU


def auto_batch_size(height: int, width: int, budget_bytes: int = DEFAULT_BUDGET_BYTES,
                    max_batch: int = MAX_AUTO_BATCH) -> int:
    """Queries per model call so the process's peak memory stays under ``budget_bytes``.

    Memory model (fitted, see the constants above): ``peak = BASE_BYTES + (PROMPT_BYTES_PER_PIXEL
    + BYTES_PER_PIXEL * batch) * height * width``, so the batch is the largest that keeps it
    within the budget, clamped to ``[1, max_batch]``. A single query whose model input alone
    exceeds the budget still gets batch 1 (the caller may warn or tile instead). The model is
    for the default network; other encoders and k-shot prompts need more.

    Args:
        height, width: model input size of one query in px (e.g. ``--size 1024`` -> 1024, 1024).
        budget_bytes: peak-memory budget of the whole process (default 2 GiB).
        max_batch: upper limit (default 8, today's CLI default; memory only ever lowers it).
    Returns:
        The batch size, >= 1; non-increasing in ``height * width``, non-decreasing in the budget.
        At the 2 GiB default: 8 below 508 x 508, 4 at 640, 3 at 768, 2 from 822 to 1000,
        1 from 1002 x 1002 on (so 1 at ``--size 1024``).
    Raises:
        ValueError: for non-positive sizes, budget or max_batch.
    """
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    if budget_bytes <= 0 or max_batch < 1:
        raise ValueError(f"budget and max_batch must be positive, got {budget_bytes}, {max_batch}")
    pixels = height * width
    room = budget_bytes - BASE_BYTES - PROMPT_BYTES_PER_PIXEL * pixels
    return int(max(1, min(max_batch, room // (BYTES_PER_PIXEL * pixels))))
