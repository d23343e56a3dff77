"""Image- and pixel-level anomaly metrics for one category: the seven numbers of the paper.

``evaluate(gt_masks, pred_maps)`` returns I-AUROC, I-AP, I-F1max, P-AUROC, P-AP, P-F1max and
P-AUPRO.  Two protocols:

* ``"exact"`` (default): threshold-free, exact values.  AUROC/AP equal scikit-learn's,
  F1max is the maximum over every threshold, AUPRO is Bergmann et al.'s exact PRO integral
  (8-connected ground-truth regions, FPR over all normal pixels, cut at FPR 0.3 with linear
  interpolation, divided by 0.3).  No downsampling, no binning.
* ``"metauas"``: the choices of the official MetaUAS evaluation, for comparing with numbers
  published with it: maps min-max normalised over the whole category, AUROC replaced by
  1 - AUROC when below 0.5, PRO sampled at 200 equally spaced thresholds between the
  category's min and max score, points with FPR < 0.3 kept, their FPRs rescaled to [0, 1]
  by min-max and integrated with the trapezoidal rule.

The image score is the maximum of the anomaly map.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from metauas.errors import InputError
from metauas.metrics.ranking import (
    auroc_from,
    aupro_exact_from,
    average_precision_from,
    binary_metrics,
    f1_max_from,
    prepare,
)

__all__ = [
    "METRIC_NAMES",
    "IMAGE_METRICS",
    "PIXEL_METRICS",
    "PROTOCOLS",
    "evaluate",
    "evaluate_pairs",
    "region_weights",
    "aupro",
    "aupro_steps",
]

IMAGE_METRICS = ("I-AUROC", "I-AP", "I-F1max")
PIXEL_METRICS = ("P-AUROC", "P-AP", "P-F1max", "P-AUPRO")
METRIC_NAMES = IMAGE_METRICS + PIXEL_METRICS
PROTOCOLS = ("exact", "metauas")

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity, as Bergmann et al.


def region_weights(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of one mask: (component sizes, label per positive pixel 0..k-1).

    Labels are listed in the raveled order of ``mask[mask]``.
    """
    labelled, k = ndimage.label(mask, structure=_EIGHT)
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    lab = labelled[mask].astype(np.int64) - 1
    sizes = np.bincount(lab, minlength=k)
    return sizes, lab


def _as_map(x, i: int) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise InputError(f"prediction {i} must be a 2-D map, got shape {a.shape}")
    if a.dtype.kind not in "fiub":
        raise InputError(f"prediction {i} has non-numeric dtype {a.dtype}")
    return a


def _as_mask(x, i: int) -> np.ndarray | None:
    if x is None:
        return None
    a = np.asarray(x)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[-1] in (3, 4):  # an RGB(A) mask image: any channel set
        a = a[..., :3].max(axis=-1)
    if a.ndim != 2:
        raise InputError(f"ground-truth mask {i} must be 2-D, got shape {a.shape}")
    return a > (0.5 if a.dtype.kind == "f" else 0)


class _Category:
    """Flattened pixels of one category, split into normal and anomalous pixels."""

    def __init__(self, masks: list[np.ndarray | None], maps: list[np.ndarray]):
        # float32 maps are ranked as float32 (fast SIMD sort); anything else as float64, so
        # that distinct float64 scores are never merged into ties.
        small = all(m.dtype in (np.float16, np.float32) for m in maps)
        self.dtype = np.dtype(np.float32) if small else np.dtype(np.float64)
        neg_parts, pos_parts, weight_parts = [], [], []
        n_regions = 0
        sizes_per_image: list[tuple[np.ndarray, np.ndarray]] = []
        for i, (mask, amap) in enumerate(zip(masks, maps)):
            if mask is None:
                continue
            if mask.shape != amap.shape:
                raise InputError(
                    f"image {i}: ground-truth mask {mask.shape} and anomaly map {amap.shape} differ in size"
                )
            if mask.any():
                neg_parts.append(amap[~mask])
                pos_parts.append(amap[mask])
                sizes, lab = region_weights(mask)
                sizes_per_image.append((sizes, lab))
                n_regions += sizes.size
            else:
                neg_parts.append(amap.ravel())
        self.n_regions = n_regions
        self.neg = (
            np.concatenate([p.astype(self.dtype, copy=False).ravel() for p in neg_parts])
            if neg_parts else np.zeros(0, self.dtype)
        )
        self.pos = (
            np.concatenate([p.astype(self.dtype, copy=False).ravel() for p in pos_parts])
            if pos_parts else np.zeros(0, self.dtype)
        )
        for sizes, lab in sizes_per_image:
            weight_parts.append(1.0 / (sizes[lab].astype(np.float64) * max(n_regions, 1)))
        self.weights = np.concatenate(weight_parts) if weight_parts else np.zeros(0)
        if self.neg.size and not np.isfinite(self.neg).all() or self.pos.size and not np.isfinite(self.pos).all():
            # inf would still rank, but NaN would not; reject both with a clear message.
            raise InputError("anomaly maps contain NaN or infinite values")


def _pixel_exact(cat: _Category, fpr_limit: float = 0.3) -> dict[str, float]:
    r = prepare(cat.neg, cat.pos, cat.weights)  # sorts cat.neg in place (it is ours)
    return {
        "P-AUROC": auroc_from(r),
        "P-AP": average_precision_from(r),
        "P-F1max": f1_max_from(r),
        "P-AUPRO": aupro_exact_from(r, fpr_limit),
    }


def _pro_steps(cat: _Category, steps: int, fpr_limit: float) -> float:
    """Official-evaluator PRO: thresholds ``np.arange(min, max, (max - min) / steps)`` over the
    category's scores (computed in the maps' dtype, as the official code does with float32
    maps), a pixel is positive when ``score > t`` (compared in float64), PRO = mean region
    overlap, points with FPR < ``fpr_limit`` kept, their FPRs min-max rescaled to [0, 1] and
    integrated in threshold order with the trapezoidal rule.
    """
    if cat.n_regions == 0 or cat.neg.size == 0:
        return float("nan")
    t = cat.dtype.type
    lo = min(cat.neg.min(), cat.pos.min())
    hi = max(cat.neg.max(), cat.pos.max())
    if not hi > lo:
        return float("nan")
    delta = (t(hi) - t(lo)) / steps
    th = np.arange(t(lo), t(hi), delta).astype(np.float64)
    neg_sorted = np.sort(cat.neg)
    # #(x > th) for float32 x compared in float64: search for the float32 nearest th and
    # decide from the rounding direction whether values equal to it lie above th.
    th_cast = th.astype(cat.dtype)
    above = th_cast.astype(np.float64) > th
    le = np.where(above, np.searchsorted(neg_sorted, th_cast, side="left"),
                  np.searchsorted(neg_sorted, th_cast, side="right"))
    fpr = (neg_sorted.size - le) / neg_sorted.size
    b = np.searchsorted(th, cat.pos.astype(np.float64), side="left")  # number of th < score
    w_at = np.bincount(b, weights=cat.weights, minlength=th.size + 1)
    pro = np.cumsum(w_at[::-1])[::-1][1:]  # pro[k] = sum of weights with b > k
    keep = fpr < fpr_limit
    if keep.sum() < 2:
        return float("nan")
    x, y = fpr[keep], pro[keep]
    span = x.max() - x.min()
    if span <= 0:
        return float("nan")
    x = (x - x.min()) / span
    # Integrate in threshold order (x non-increasing), as sklearn.metrics.auc does for the
    # official evaluator; re-sorting x would reorder points tied in FPR and change the area.
    return float(-np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def aupro(gt_masks: Sequence, pred_maps: Sequence, fpr_limit: float = 0.3) -> float:
    """Exact normalised AUPRO up to ``fpr_limit`` (Bergmann et al., "The MVTec Anomaly Detection
    Dataset", IJCV 2021): the area under the mean per-region overlap (8-connected ground-truth
    regions) as a function of the false-positive rate over all normal pixels, from 0 to
    ``fpr_limit``, divided by ``fpr_limit`` (see the module docstring).

    Args:
        gt_masks: N ground-truth masks (H_i, W_i), nonzero = anomalous.
        pred_maps: N anomaly maps of the same sizes, higher = more anomalous.
        fpr_limit: FPR integration limit (0.3 as in the paper).
    Returns:
        AUPRO in [0, 1].
    Raises:
        InputError: a map or mask that is not 2-D, a non-numeric map, or sizes that differ.
    """
    masks = [_as_mask(m, i) for i, m in enumerate(gt_masks)]
    maps = [_as_map(p, i) for i, p in enumerate(pred_maps)]
    cat = _Category(masks, maps)
    r = prepare(cat.neg, cat.pos, cat.weights)
    return aupro_exact_from(r, fpr_limit)


def aupro_steps(gt_masks: Sequence, pred_maps: Sequence, steps: int = 200, fpr_limit: float = 0.3) -> float:
    """PRO sampled at ``steps`` thresholds (official MetaUAS evaluator's approximation)."""
    masks = [_as_mask(m, i) for i, m in enumerate(gt_masks)]
    maps = [_as_map(p, i) for i, p in enumerate(pred_maps)]
    cat = _Category(masks, maps)
    return _pro_steps(cat, steps, fpr_limit)


def evaluate(
    gt_masks: Sequence,
    pred_maps: Sequence,
    labels: Sequence[int] | np.ndarray | None = None,
    *,
    protocol: str = "exact",
    pixel: bool = True,
    fpr_limit: float = 0.3,
    image_scores: Sequence[float] | np.ndarray | None = None,
) -> dict[str, float]:
    """Seven anomaly metrics of one category.

    Args:
        gt_masks: per image a 2-D mask (nonzero = anomalous pixel) or None (no pixel ground
            truth: the image counts for image metrics only).
        pred_maps: per image a 2-D anomaly map of the same size as its mask (any float dtype;
            float32 is fastest).  A stacked (N, H, W) array also works.
        labels: image labels (1 = anomalous); default: whether the mask has any anomalous pixel.
        protocol: "exact" (default) or "metauas" (see module docstring).
        pixel: set False to skip the pixel metrics (they are then NaN).
        fpr_limit: FPR integration limit of AUPRO.
        image_scores: per image its anomaly score for the image metrics; default: the maximum
            of its map (the paper's rule). Ignored by the "metauas" protocol (normalised maxima).

    Returns:
        dict metric name -> float in [0, 1], NaN where undefined (e.g. a single class).
    Raises:
        InputError: unknown protocol, unequal counts, bad shapes or NaN/inf values in the maps.
    """
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    maps = [_as_map(p, i) for i, p in enumerate(pred_maps)]
    masks = [_as_mask(m, i) for i, m in enumerate(gt_masks)]
    if len(maps) != len(masks):
        raise InputError(f"{len(masks)} ground-truth masks but {len(maps)} anomaly maps")
    if labels is None:
        if any(m is None for m in masks):
            raise InputError("labels are required when some images have no ground-truth mask")
        lab = np.array([bool(m.any()) for m in masks])
    else:
        lab = np.asarray(labels).astype(int).ravel() > 0
        if lab.size != len(maps):
            raise InputError(f"{lab.size} labels but {len(maps)} anomaly maps")
    if not maps:
        return {k: float("nan") for k in METRIC_NAMES}

    if protocol == "metauas":
        # (m - min) / (max - min) over the whole category, in the maps' own float dtype
        dt = np.float32 if all(m.dtype in (np.float16, np.float32) for m in maps) else np.float64
        maps = [np.asarray(m, dtype=dt) for m in maps]
        lo = min(m.min() for m in maps)
        hi = max(m.max() for m in maps)
        scale = (hi - lo) if hi > lo else dt(1.0)
        maps = [(m - lo) / scale for m in maps]

    if image_scores is not None and protocol == "exact":
        img_scores = np.asarray(image_scores, dtype=np.float64).ravel()
        if img_scores.size != len(maps):
            raise InputError(f"{img_scores.size} image scores but {len(maps)} anomaly maps")
    else:
        img_scores = np.array([float(np.max(m)) for m in maps])
    if not np.isfinite(img_scores).all() or any(np.isnan(np.min(m)) for m in maps):
        raise InputError("anomaly maps contain NaN or infinite values")
    im = binary_metrics(lab, img_scores)
    out = {"I-AUROC": im["AUROC"], "I-AP": im["AP"], "I-F1max": im["F1max"]}
    if pixel:
        cat = _Category(masks, maps)
        if protocol == "exact":
            out.update(_pixel_exact(cat, fpr_limit))
        else:
            out.update(_pixel_exact(cat, fpr_limit))
            out["P-AUPRO"] = _pro_steps(cat, 200, fpr_limit)
    else:
        out.update({k: float("nan") for k in PIXEL_METRICS})
    if protocol == "metauas":
        for k in ("I-AUROC", "P-AUROC"):
            if out[k] == out[k] and out[k] < 0.5:
                out[k] = 1.0 - out[k]
    return {k: float(out[k]) for k in METRIC_NAMES}


def evaluate_pairs(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    protocol: str = "exact",
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """Pixel metrics (P-AUROC, P-AP, P-F1max, P-AUPRO) of (gt_mask, pred_map) pairs.

    Meant for validation loops (e.g. training on synthetic change pairs): masks may be bool,
    0/1, 0/255 or float in [0, 1]; maps any float array of the same size (torch tensors are
    accepted through ``np.asarray``; move them to CPU first).
    """
    masks, maps = [], []
    for i, (g, p) in enumerate(pairs):
        if hasattr(g, "detach"):
            g = g.detach().cpu().numpy()
        if hasattr(p, "detach"):
            p = p.detach().cpu().numpy()
        masks.append(_as_mask(np.squeeze(np.asarray(g)), i))
        maps.append(_as_map(np.squeeze(np.asarray(p)), i))
    res = evaluate(masks, maps, labels=[int(m.any()) for m in masks], protocol=protocol, fpr_limit=fpr_limit)
    return {k: res[k] for k in PIXEL_METRICS}
