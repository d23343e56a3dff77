"""Image-level anomaly score of an anomaly map: one rule for the CLI, web, Python API and eval.

The paper scores an image by the maximum of its map. A single pixel decides then, and a
near-binary map saturates (many images score 0.9999..., so they tie and a calibrated
threshold has no margin). The score here is the mean of the map's top ``top_fraction`` of
pixels (at least one pixel): it still responds to a defect of a few pixels, is not decided by
one pixel, and ranks images whose maps are both saturated by the size of the saturated area.
With ``top_fraction = 0`` it is the paper's maximum.

Tiled maps (`metauas.tiling`, ``--tile``) are computed at the image's own scale, so a 2048 x
2048 query gives 4 Mpx of model-resolution values instead of 256 x 256. Averaging 0.1 % of them
(4194 pixels) would need a defect 64 times larger (in model pixels) to score the same as it
does on an untiled map. `tiled_image_score` therefore averages a fixed count: the same share of
one tile's area as `image_score` takes of one untiled model input (``top_fraction * tile**2``
pixels, 66 for 256-px tiles), so a defect covering a given number of model pixels scores the
same whether the image was tiled or not.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["DEFAULT_TOP_FRACTION", "image_score", "image_scores", "tiled_image_score"]

# 0.1 % of the pixels: 66 pixels of a 256 x 256 map (a blob of ~9 x 9 px), ~1000 of a 1 Mpx map.
DEFAULT_TOP_FRACTION = 0.001


def _top_count(num_pixels: int, top_fraction: float) -> int:
    if not 0.0 <= top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in [0, 1], got {top_fraction}")
    return max(1, int(round(top_fraction * num_pixels)))


def image_score(anomaly_map: np.ndarray | torch.Tensor, top_fraction: float = DEFAULT_TOP_FRACTION) -> float:
    """Mean of the highest ``top_fraction`` of the map's values (at least one value).

    Args:
        anomaly_map: (H, W) map, any range (probabilities in [0, 1] for the product).
        top_fraction: share of pixels averaged, in [0, 1]; 0 gives the maximum.
    Returns:
        The score as a Python float, in the map's range.
    Raises:
        ValueError: for an empty map or a fraction outside [0, 1].
    """
    values = torch.as_tensor(np.asarray(anomaly_map) if not isinstance(anomaly_map, torch.Tensor)
                             else anomaly_map).flatten().double()
    if values.numel() == 0:
        raise ValueError("cannot score an empty anomaly map")
    k = _top_count(values.numel(), top_fraction)
    return float(values.topk(k).values.mean())


def tiled_image_score(anomaly_map: np.ndarray | torch.Tensor, tile: int,
                      top_fraction: float = DEFAULT_TOP_FRACTION) -> float:
    """Image score of a tiled map: mean of its ``round(top_fraction * tile**2)`` highest values.

    The pixel count is that of `image_score` on one untiled ``tile x tile`` model map (see the
    module docstring); it is capped by the map's size, so a map no larger than one tile scores
    exactly as `image_score` with the same fraction of ``tile**2`` pixels.

    Args:
        anomaly_map: (H, W) map at the query's resolution (probabilities in [0, 1]).
        tile: side in query pixels of the region one model input covered (the model size S
            for ``--tile auto``; N for ``--tile N``), >= 1.
        top_fraction: share of one tile's pixels averaged, in [0, 1]; 0 gives the maximum.
    Returns:
        The score as a Python float, in the map's range.
    Raises:
        ValueError: for an empty map, tile < 1 or a fraction outside [0, 1].
    """
    if tile < 1:
        raise ValueError(f"tile must be at least 1 px, got {tile}")
    values = torch.as_tensor(np.asarray(anomaly_map) if not isinstance(anomaly_map, torch.Tensor)
                             else anomaly_map).flatten().double()
    if values.numel() == 0:
        raise ValueError("cannot score an empty anomaly map")
    k = min(values.numel(), _top_count(tile * tile, top_fraction))
    return float(values.topk(k).values.mean())


def image_scores(maps: np.ndarray | torch.Tensor, top_fraction: float = DEFAULT_TOP_FRACTION) -> np.ndarray:
    """`image_score` of each map of an (N, H, W) stack -> (N,) float64.

    Raises:
        ValueError: maps that are not (N, H, W).
    """
    t = torch.as_tensor(np.asarray(maps) if not isinstance(maps, torch.Tensor) else maps)
    if t.dim() != 3:
        raise ValueError(f"expected maps of shape (N, H, W), got {tuple(t.shape)}")
    flat = t.flatten(1).double()
    k = _top_count(flat.shape[1], top_fraction)
    return flat.topk(k, dim=1).values.mean(dim=1).numpy()
