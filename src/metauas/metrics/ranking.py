"""Exact threshold-free ranking metrics (AUROC, AP, F1max, AUPRO) without a global argsort.

Why this design: pixel-level evaluation of a benchmark category means ranking ~10^8 scores.
A full ``argsort`` of that many floats takes ~15 s here, while a plain ``np.sort`` (SIMD) takes
~2 s.  Every metric we need can be written in terms of

* the *sorted* scores of the negatives (normal pixels / images), and
* the distinct score values of the positives together with per-value counts (and, for PRO,
  per-value sums of region weights),

because for a positive value ``v`` the number of negatives ranked above/tied with it is a
``searchsorted`` into the sorted negatives.  Positives are a small minority, so sorting them
with their weights is cheap.  All results are mathematically identical to the
sort-all-and-sweep definitions (scikit-learn's ``roc_auc_score`` / ``average_precision_score``,
Bergmann et al.'s PRO curve); only the order of floating-point summation differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "RankingInputs",
    "prepare",
    "auroc_from",
    "average_precision_from",
    "f1_max_from",
    "aupro_exact_from",
    "binary_metrics",
]


@dataclass
class RankingInputs:
    """Scores split by class, ready for the sweep-free formulas.

    Attributes:
        neg_sorted: scores of the negatives, ascending.
        pos_values: distinct positive score values, ascending.
        pos_counts: number of positives holding each distinct value.
        pos_first: index of each value's first occurrence in the sorted positives
            (so ``n_pos - pos_first`` = number of positives with score >= value).
        pos_weight: per distinct value, sum of PRO weights of its pixels (None if not needed).
        lt: number of negatives with score < value, per distinct positive value.
        le: number of negatives with score <= value, per distinct positive value.
    """

    neg_sorted: np.ndarray
    pos_values: np.ndarray
    pos_counts: np.ndarray
    pos_first: np.ndarray
    pos_weight: np.ndarray | None
    lt: np.ndarray
    le: np.ndarray

    @property
    def n_neg(self) -> int:
        """Number of negative (normal) pixels or images."""
        return int(self.neg_sorted.size)

    @property
    def n_pos(self) -> int:
        """Number of positive (anomalous) pixels or images."""
        return int(self.pos_counts.sum())


def _score_dtype(*arrays: np.ndarray) -> np.dtype:
    """float32 stays float32 (fast SIMD sort); anything else is compared as float64."""
    dt = np.result_type(*arrays)
    if dt == np.float32 or dt == np.float16:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def prepare(
    neg_scores: np.ndarray,
    pos_scores: np.ndarray,
    pos_weights: np.ndarray | None = None,
    *,
    neg_sorted: bool = False,
) -> RankingInputs:
    """Sort negatives, group positives by distinct value, count ties against negatives.

    ``neg_scores`` may be sorted in place (pass a copy if you need it unchanged).
    """
    dt = _score_dtype(neg_scores, pos_scores)
    neg = np.asarray(neg_scores, dtype=dt).ravel()
    if not neg_sorted:
        neg.sort()
    pos = np.asarray(pos_scores, dtype=dt).ravel()
    if pos_weights is not None:
        order = np.argsort(pos, kind="stable")
        pos = pos[order]
        w_sorted = np.asarray(pos_weights, dtype=np.float64).ravel()[order]
    else:
        pos = np.sort(pos)
        w_sorted = None
    if pos.size:
        starts = np.flatnonzero(np.concatenate(([True], pos[1:] != pos[:-1])))
    else:
        starts = np.zeros(0, dtype=np.int64)
    values = pos[starts]
    counts = np.diff(np.append(starts, pos.size))
    weight = np.add.reduceat(w_sorted, starts) if (w_sorted is not None and pos.size) else (
        np.zeros(0) if w_sorted is not None else None
    )
    lt = np.searchsorted(neg, values, side="left").astype(np.int64)
    le = np.searchsorted(neg, values, side="right").astype(np.int64)
    return RankingInputs(neg, values, counts.astype(np.int64), starts.astype(np.int64), weight, lt, le)


def auroc_from(r: RankingInputs) -> float:
    """Mann-Whitney form of the ROC area (ties count 1/2) == trapezoidal ROC AUC (sklearn)."""
    n_pos, n_neg = r.n_pos, r.n_neg
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # 2 * sum over positives of (#neg below + 0.5 * #neg tied); integer, exact.
    twice_u = int(np.dot(r.pos_counts, r.lt + r.le))
    return twice_u / (2.0 * n_pos * n_neg)


def _tp_fp(r: RankingInputs) -> tuple[np.ndarray, np.ndarray]:
    """True/false positives when thresholding at each distinct positive value (score >= v)."""
    tp = (r.n_pos - r.pos_first).astype(np.float64)
    fp = (r.n_neg - r.lt).astype(np.float64)
    return tp, fp


def average_precision_from(r: RankingInputs) -> float:
    """AP = sum_k (R_k - R_{k-1}) P_k over distinct thresholds, as sklearn.

    Thresholds holding only negatives add zero recall, so only positive values contribute.
    """
    n_pos = r.n_pos
    if n_pos == 0:
        return float("nan")
    tp, fp = _tp_fp(r)
    precision = tp / (tp + fp)
    return float(np.dot(r.pos_counts / n_pos, precision))


def f1_max_from(r: RankingInputs) -> float:
    """max over all thresholds of F1 = 2TP / (TP + FP + P).

    For a fixed TP, F1 falls as FP grows, so the maximum is attained at a threshold equal to a
    positive value; scanning those is scanning all thresholds.
    """
    n_pos = r.n_pos
    if n_pos == 0:
        return float("nan")
    tp, fp = _tp_fp(r)
    return float(np.max(2.0 * tp / (tp + fp + n_pos)))


def aupro_exact_from(r: RankingInputs, fpr_limit: float = 0.3) -> float:
    """Exact normalised area under the PRO curve up to ``fpr_limit`` (Bergmann et al., IJCV 2021).

    The PRO curve has one point per distinct score threshold t: x = FPR(t) over all negative
    pixels, y = PRO(t) = mean over ground-truth regions of the fraction of the region with
    score >= t = sum of per-pixel weights 1 / (|region| * n_regions) over positives >= t.
    Points are joined linearly (trapezoidal rule), the curve is cut at ``fpr_limit`` by linear
    interpolation, and the area is divided by ``fpr_limit``.

    Only thresholds equal to a negative value u (tie count c_u) move along x; each contributes
    a trapezoid of width c_u / n_neg between heights W(> u) and W(>= u).  Summing those over
    all negatives above the cut equals sum_v weight(v) * (#neg in (u*, v) + #neg in (u*, v]),
    which needs only the counts already in ``r``.
    Raises:
        ValueError: `prepared` was built without PRO weights (``pos_weights`` in `prepare`).
    """
    if r.pos_weight is None:
        raise ValueError("aupro needs pos_weights in prepare()")
    n = r.n_neg
    if n == 0 or r.n_pos == 0 or not (0.0 < fpr_limit <= 1.0):
        return float("nan")
    target = fpr_limit * n
    m = min(n, max(1, math.ceil(target - 1e-9 * n)))
    # u*: the distinct negative value whose tie group crosses FPR = fpr_limit (descending sweep).
    u_star = r.neg_sorted[n - m]
    le_star = int(np.searchsorted(r.neg_sorted, u_star, side="right"))
    lt_star = int(np.searchsorted(r.neg_sorted, u_star, side="left"))
    above = np.maximum(r.lt - le_star, 0) + np.maximum(r.le - le_star, 0)
    area = float(np.dot(r.pos_weight, above)) / (2.0 * n)
    # Partial trapezoid of the crossing group, interpolated at fpr_limit.
    f_prev = (n - le_star) / n
    dx = (le_star - lt_star) / n
    y0 = float(r.pos_weight[r.pos_values > u_star].sum())
    y1 = float(r.pos_weight[r.pos_values >= u_star].sum())
    width = min(max(fpr_limit - f_prev, 0.0), dx)
    y_at = y0 + (y1 - y0) * (width / dx)
    area += width * (y0 + y_at) / 2.0
    return area / fpr_limit


def binary_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUROC, AP and F1max of binary ``labels`` (bool/0-1) vs ``scores`` with one sort.

    Raises:
        ValueError: labels and scores differ in size.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in size")
    r = prepare(scores[~labels], scores[labels])
    return {"AUROC": auroc_from(r), "AP": average_precision_from(r), "F1max": f1_max_from(r)}
