"""Metric correctness: scikit-learn equality (property tests) and slow reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from metauas.errors import InputError
from metauas.metrics import aupro, aupro_steps, binary_metrics, evaluate, evaluate_pairs

# ---------------------------------------------------------------- slow references (definitions)


def ref_f1max(y, s) -> float:
    """F1 at every distinct threshold, by brute force."""
    best = 0.0
    for t in np.unique(s):
        pred = s >= t
        tp = np.sum(pred & (y == 1))
        fp = np.sum(pred & (y == 0))
        fn = np.sum(~pred & (y == 1))
        if tp:
            best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def ref_aupro(masks, maps, limit=0.3) -> float:
    """Bergmann et al.'s PRO integral from its definition: a point per distinct threshold."""
    masks = [np.asarray(m, bool) for m in masks]
    maps = [np.asarray(a, np.float64) for a in maps]
    regions = []
    for i, m in enumerate(masks):
        lab, k = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(i, lab == j) for j in range(1, k + 1)]
    neg = np.concatenate([a[~m] for a, m in zip(maps, masks)])
    xs, ys = [0.0], [0.0]
    for t in np.unique(np.concatenate([a.ravel() for a in maps]))[::-1]:
        xs.append(np.mean(neg >= t))
        ys.append(np.mean([np.mean(maps[i][r] >= t) for i, r in regions]))
    area = 0.0
    for k in range(1, len(xs)):
        x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
        if x0 >= limit:
            break
        if x1 > limit:  # interpolate at the limit
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def ref_pro_200(masks, maps, limit=0.3, steps=200) -> float:
    """The official-evaluator style PRO, written as a plain loop: thresholds from np.arange in
    the maps' dtype, binarise with ``>``, skimage-style 8-connected regions, keep FPR < limit,
    min-max rescale the kept FPRs, sklearn ``auc`` in threshold order."""
    masks = np.asarray(masks, bool)
    maps = np.asarray(maps)
    lo, hi = maps.min(), maps.max()
    delta = (hi - lo) / steps
    fprs, pros = [], []
    for th in np.arange(lo, hi, delta):
        binary = maps > th
        overlaps = []
        for b, m in zip(binary, masks):
            lab, n = ndimage.label(m, structure=np.ones((3, 3)))
            for j in range(1, n + 1):
                overlaps.append(b[lab == j].mean())
        fprs.append(np.logical_and(~masks, binary).sum() / (~masks).sum())
        pros.append(np.mean(overlaps))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < limit
    x = fprs[keep]
    x = (x - x.min()) / (x.max() - x.min())
    return float(auc(x, pros[keep]))  # points in threshold order, as the official evaluator


# ---------------------------------------------------------------- property tests vs sklearn

scores_and_labels = st.integers(2, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.one_of(st.integers(0, 6).map(float), st.floats(0, 1, width=32)), min_size=n, max_size=n),
    )
)


@settings(max_examples=300, deadline=None)
@given(scores_and_labels, st.sampled_from([np.float32, np.float64]))
def test_binary_metrics_equal_sklearn(data, dtype):
    y, s = np.array(data[0]), np.array(data[1], dtype=dtype)
    if y.min() == y.max():
        return
    m = binary_metrics(y, s)
    assert m["AUROC"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert m["AP"] == pytest.approx(average_precision_score(y, s), abs=1e-9)
    p, r, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nanmax(np.where(p + r > 0, 2 * p * r / (p + r), 0))
    assert m["F1max"] == pytest.approx(f1, abs=1e-9)
    assert m["F1max"] == pytest.approx(ref_f1max(y, s), abs=1e-9)


def test_float64_scores_are_not_merged_into_float32_ties():
    y = np.array([0, 1])
    s = np.array([0.5, 0.5 + 1e-12])  # equal in float32, distinct in float64
    assert binary_metrics(y, s)["AUROC"] == pytest.approx(1.0)
    assert roc_auc_score(y, s) == pytest.approx(1.0)


def test_large_pixel_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 64, 64), bool)
    masks[1, 10:20, 10:30] = True
    masks[2, 40:60, 5:15] = True
    masks[3, 30:35, 30:35] = True
    maps = (rng.random(masks.shape) * 0.7 + masks * rng.random(masks.shape) * 0.5).astype(np.float32)
    maps = np.round(maps, 2).astype(np.float32)  # many ties
    res = evaluate(masks, maps)
    y, s = masks.ravel(), maps.ravel()
    assert res["P-AUROC"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert res["P-AP"] == pytest.approx(average_precision_score(y, s), abs=1e-6)
    lab = masks.reshape(6, -1).any(1)
    img = maps.reshape(6, -1).max(1)
    assert res["I-AUROC"] == pytest.approx(roc_auc_score(lab, img), abs=1e-9)
    assert res["I-AP"] == pytest.approx(average_precision_score(lab, img), abs=1e-9)


# ---------------------------------------------------------------- AUPRO


masks_and_maps = st.tuples(st.integers(1, 3), st.integers(3, 9), st.integers(3, 9)).flatmap(
    lambda shp: st.tuples(
        st.lists(st.lists(st.integers(0, 1), min_size=shp[1] * shp[2], max_size=shp[1] * shp[2]),
                 min_size=shp[0], max_size=shp[0]),
        st.lists(st.lists(st.integers(0, 7), min_size=shp[1] * shp[2], max_size=shp[1] * shp[2]),
                 min_size=shp[0], max_size=shp[0]),
        st.just(shp),
    )
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(masks_and_maps, st.sampled_from([0.3, 0.05, 1.0]))
def test_aupro_equals_reference(data, limit):
    m, a, (n, h, w) = data
    masks = np.array(m, bool).reshape(n, h, w)
    maps = (np.array(a, np.float32) / 7).reshape(n, h, w)
    if not masks.any() or masks.all():
        return
    assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(ref_aupro(masks, maps, limit), abs=1e-9)


def test_aupro_continuous_scores_and_regions_of_different_sizes():
    rng = np.random.default_rng(3)
    masks = np.zeros((3, 24, 24), bool)
    masks[0, 2:4, 2:4] = True  # tiny region
    masks[0, 10:22, 10:22] = True  # large region in the same image
    masks[1, 5:6, 0:20] = True
    masks[1, 7, 7] = True
    masks[1, 8, 8] = True  # diagonal neighbour: same 8-connected region as (7, 7)
    maps = rng.random(masks.shape) + 0.4 * masks
    assert aupro(masks, maps) == pytest.approx(ref_aupro(masks, maps), abs=1e-9)


def test_aupro_extremes_and_region_averaging():
    masks = np.zeros((2, 16, 16), bool)
    masks[0, 2:10, 2:10] = True  # big region
    masks[1, 0, 0] = True  # one-pixel region
    perfect = masks.astype(np.float32)
    assert aupro(masks, perfect) == pytest.approx(1.0)
    assert aupro(masks, 1 - perfect) == pytest.approx(0.0)
    # find only the big region: PRO = 1/2 for every FPR (mean over regions, not pixels)
    half = perfect.copy()
    half[1, 0, 0] = -1  # below every normal pixel
    assert aupro(masks, half) == pytest.approx(0.5)
    # tied with all normal pixels instead: the last step is a diagonal from (0, .5) to (1, 1),
    # interpolated at FPR 0.3 -> (0.5 + 0.65) / 2
    half[1, 0, 0] = 0
    assert aupro(masks, half) == pytest.approx((0.5 + 0.65) / 2)


def test_pro_200_steps_matches_loop_reference():
    rng = np.random.default_rng(5)
    masks = np.zeros((4, 20, 20), bool)
    masks[0, 3:9, 3:9] = True
    masks[2, 12:18, 1:4] = True
    masks[2, 0, 19] = True
    maps = (rng.random(masks.shape) + 0.6 * masks).astype(np.float32)
    assert aupro_steps(masks, maps) == pytest.approx(ref_pro_200(masks, maps), abs=1e-9)
    # scores sitting exactly on (float32-rounded) thresholds: the float64 comparison matters
    q = (np.round(maps / maps.max() * 200) / 200).astype(np.float32)
    assert aupro_steps(masks, q) == pytest.approx(ref_pro_200(masks, q), abs=1e-9)
    # metauas protocol = same value on min-max normalised maps
    norm = (maps - maps.min()) / (maps.max() - maps.min())
    assert norm.dtype == np.float32
    assert evaluate(masks, maps, protocol="metauas")["P-AUPRO"] == pytest.approx(
        ref_pro_200(masks, norm), abs=1e-9
    )


def test_metauas_protocol_flips_auroc_and_exact_does_not():
    masks = np.zeros((4, 8, 8), bool)
    masks[2:, 2:5, 2:5] = True
    maps = 1.0 - masks.astype(np.float32) * 0.5  # anomalies score lower: inverted model
    exact = evaluate(masks, maps)
    official = evaluate(masks, maps, protocol="metauas")
    assert exact["P-AUROC"] < 0.5
    assert official["P-AUROC"] == pytest.approx(1 - exact["P-AUROC"])


def test_evaluate_labels_and_missing_masks():
    rng = np.random.default_rng(2)
    maps = rng.random((4, 8, 8)).astype(np.float32)
    masks = [np.zeros((8, 8)), None, np.ones((8, 8)), None]
    res = evaluate(masks, maps, labels=[0, 1, 1, 0])
    assert res["I-AUROC"] == pytest.approx(roc_auc_score([0, 1, 1, 0], maps.reshape(4, -1).max(1)))
    px = np.concatenate([maps[0].ravel(), maps[2].ravel()])
    assert res["P-AUROC"] == pytest.approx(roc_auc_score(np.r_[np.zeros(64), np.ones(64)], px))
    with pytest.raises(InputError):
        evaluate(masks, maps)  # labels needed when masks are missing


def test_evaluate_rejects_bad_inputs():
    with pytest.raises(InputError, match="differ in size"):
        evaluate([np.zeros((4, 4))], [np.zeros((5, 5))])
    with pytest.raises(InputError, match="NaN"):
        evaluate([np.zeros((4, 4))], [np.full((4, 4), np.nan)])
    with pytest.raises(InputError, match="protocol"):
        evaluate([np.zeros((4, 4))], [np.zeros((4, 4))], protocol="bogus")


def test_single_class_gives_nan_not_crash():
    res = evaluate([np.zeros((4, 4)), np.zeros((4, 4))], [np.zeros((4, 4)), np.ones((4, 4))])
    assert np.isnan(res["I-AUROC"]) and np.isnan(res["P-AUROC"]) and np.isnan(res["P-AUPRO"])


def test_evaluate_pairs_accepts_torch_and_255_masks():
    torch = pytest.importorskip("torch")
    m = np.zeros((1, 1, 8, 8), np.uint8)
    m[..., 2:4, 2:4] = 255
    pred = torch.from_numpy(m.astype(np.float32) / 255.0 * 0.8 + 0.1)
    res = evaluate_pairs([(m, pred), (np.zeros((8, 8)), torch.full((8, 8), 0.2))])
    assert set(res) == {"P-AUROC", "P-AP", "P-F1max", "P-AUPRO"}
    assert res["P-AUROC"] == pytest.approx(1.0) and res["P-AUPRO"] == pytest.approx(1.0)
