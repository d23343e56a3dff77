"""Moved to `metauas.runtime.thresholds` (and `metauas.paths.metauas_home`); re-exported for
callers of the earlier API."""

from metauas.paths import metauas_home
from metauas.runtime.thresholds import (PIXEL_BINS, STORE_VERSION, PixelF1, SegmenterLike, Thresholds, calibrate,
                                        f1_threshold, find_mask, fingerprint, load_thresholds, quantile_threshold,
                                        read_threshold_file, save_thresholds, store_lock, store_path)

__all__ = ["metauas_home", "PIXEL_BINS", "STORE_VERSION", "PixelF1", "SegmenterLike", "Thresholds", "calibrate",
           "f1_threshold", "find_mask", "fingerprint", "load_thresholds", "quantile_threshold",
           "read_threshold_file", "save_thresholds", "store_lock", "store_path"]
