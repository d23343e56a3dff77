"""Anomaly detection / segmentation metrics (exact, fast) — see ``metauas.metrics.evaluate``."""

from metauas.metrics.evaluate import (
    IMAGE_METRICS,
    METRIC_NAMES,
    PIXEL_METRICS,
    PROTOCOLS,
    aupro,
    aupro_steps,
    evaluate,
    evaluate_pairs,
    region_weights,
)
from metauas.metrics.ranking import binary_metrics

__all__ = [
    "IMAGE_METRICS",
    "METRIC_NAMES",
    "PIXEL_METRICS",
    "PROTOCOLS",
    "aupro",
    "aupro_steps",
    "binary_metrics",
    "evaluate",
    "evaluate_pairs",
    "region_weights",
]
