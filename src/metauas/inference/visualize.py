"""Writing anomaly maps: 16-bit grey PNGs and heat-map overlays with a colour bar."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np


def _atomic_imwrite(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    if not cv2.imwrite(str(tmp), image):
        raise OSError(f"cannot write {path}")
    os.replace(tmp, path)


def save_map_png(anomaly_map: np.ndarray, path: str | os.PathLike) -> None:
    """Map in [0,1] -> 16-bit grey PNG (value = round(p * 65535))."""
    values = np.round(np.clip(anomaly_map, 0.0, 1.0) * 65535.0).astype(np.uint16)
    _atomic_imwrite(Path(path), values)


def heat_overlay(rgb: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a JET heat map (fixed 0..1 scale, so scores are comparable) over the image; RGB."""
    heat = cv2.applyColorMap(np.round(np.clip(anomaly_map, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return np.round(rgb.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).astype(np.uint8)


def colour_bar(height: int, width: int = 24) -> np.ndarray:
    ramp = np.linspace(255, 0, height).astype(np.uint8)[:, None].repeat(width, axis=1)
    return cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def save_overlay(rgb: np.ndarray, anomaly_map: np.ndarray, path: str | os.PathLike, title: str = "") -> None:
    """Image | overlay | colour bar (1 at the top, 0 at the bottom), with an optional title."""
    h, w = anomaly_map.shape
    overlay = heat_overlay(rgb, anomaly_map)
    bar = colour_bar(h)
    gap = np.full((h, 6, 3), 255, np.uint8)
    legend = np.full((h, 40, 3), 255, np.uint8)
    scale = max(0.35, h / 900)
    cv2.putText(legend, "1", (4, int(16 * scale / 0.35)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1)
    cv2.putText(legend, "0", (4, h - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1)
    canvas = np.concatenate([rgb, gap, overlay, gap, bar, legend], axis=1)
    if title:
        band = np.full((max(24, int(40 * scale / 0.5)), canvas.shape[1], 3), 255, np.uint8)
        cv2.putText(band, title, (6, band.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, max(0.5, scale), (0, 0, 0), 1)
        canvas = np.concatenate([band, canvas], axis=0)
    _atomic_imwrite(Path(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
