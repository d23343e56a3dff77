"""Pixel-level validation metrics for training (P-AUROC, P-AP, P-AUPRO).

Uses the project's exact metric implementations when available (metauas.metrics), else
scikit-learn for AUROC/AP. Validation sets are small (tens of pairs), so exact is cheap.
"""

from __future__ import annotations

import numpy as np


def pixel_metrics(masks: np.ndarray, maps: np.ndarray) -> dict[str, float]:
    """masks (N,H,W) {0,1}, maps (N,H,W) scores -> p_auroc, p_ap, p_aupro (nan if undefined)."""
    gt = masks.astype(bool)
    result = {"p_auroc": float("nan"), "p_ap": float("nan"), "p_aupro": float("nan")}
    if gt.any() and (~gt).any():
        try:
            from metauas.metrics import evaluate

            full = evaluate(list(gt), list(maps.astype(np.float32)))
            result = {"p_auroc": full["P-AUROC"], "p_ap": full["P-AP"], "p_aupro": full["P-AUPRO"]}
        except ImportError:
            from sklearn.metrics import average_precision_score, roc_auc_score

            flat_gt, flat = gt.ravel(), maps.ravel()
            result["p_auroc"] = float(roc_auc_score(flat_gt, flat))
            result["p_ap"] = float(average_precision_score(flat_gt, flat))
    return result
