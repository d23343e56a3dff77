"""Small generated test images shared by several test modules."""

from __future__ import annotations

import cv2
import numpy as np


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour texture with fine noise: (h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 255, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8), (w, h))
    return np.clip(base.astype(int) + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
