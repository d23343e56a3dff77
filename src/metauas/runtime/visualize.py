"""Writing anomaly maps: 16-bit grey PNGs, binary masks and heat-map overlays with a colour bar.

Maps are stored at the query's original resolution (16-bit, so thresholds can be re-applied
later without loss). Overlays are for people: they are shrunk to at most OVERLAY_MAX_SIDE
pixels per side so an enormous query does not produce a gigantic picture.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from metauas.atomic import atomic_write_bytes

OVERLAY_MAX_SIDE = 2048


def _atomic_imwrite(path: Path, image: np.ndarray) -> None:
    """Encode to PNG in memory, write a temporary file beside the target, then rename."""
    atomic_write_bytes(path, encode_png(image))


def encode_png(image: np.ndarray) -> bytes:
    """uint8/uint16 grey (H,W) or BGR (H,W,3) array -> PNG bytes.

    Raises:
        OSError: OpenCV cannot encode the array.
    """
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise OSError("PNG encoding failed")
    return buffer.tobytes()


def map_to_uint16(anomaly_map: np.ndarray) -> np.ndarray:
    """Map in [0,1] -> uint16 (value = round(p * 65535))."""
    return np.round(np.clip(anomaly_map, 0.0, 1.0) * 65535.0).astype(np.uint16)


def save_map_png(anomaly_map: np.ndarray, path: str | os.PathLike) -> None:
    """Map in [0,1] -> 16-bit grey PNG (value = round(p * 65535))."""
    _atomic_imwrite(Path(path), map_to_uint16(anomaly_map))


def read_map_png(path: str | os.PathLike) -> np.ndarray:
    """Inverse of `save_map_png`: 16-bit PNG -> float32 map in [0,1].

    Raises:
        OSError: the file cannot be read as an image.
    """
    values = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if values is None:
        raise OSError(f"cannot read {path}")
    return values.astype(np.float32) / 65535.0


def binary_mask(anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels with probability > threshold -> 255, others 0 (uint8); strict, as in calibration."""
    return np.where(anomaly_map > threshold, 255, 0).astype(np.uint8)


def save_mask_png(anomaly_map: np.ndarray, threshold: float, path: str | os.PathLike) -> float:
    """Write the 8-bit 0/255 mask; returns the anomalous fraction of the image."""
    mask = binary_mask(anomaly_map, threshold)
    _atomic_imwrite(Path(path), mask)
    return float(np.count_nonzero(mask)) / mask.size


def heat_overlay(rgb: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a JET heat map (fixed 0..1 scale, so scores are comparable) over the image; RGB."""
    heat = cv2.applyColorMap(np.round(np.clip(anomaly_map, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return np.round(rgb.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).astype(np.uint8)


def colour_bar(height: int, width: int = 24) -> np.ndarray:
    """A vertical JET colour bar, (height, width, 3) uint8 RGB, high values (red) at the top."""
    ramp = np.linspace(255, 0, height).astype(np.uint8)[:, None].repeat(width, axis=1)
    return cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def _fit(rgb: np.ndarray, anomaly_map: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = anomaly_map.shape
    scale = min(1.0, max_side / max(h, w))
    if rgb.shape[:2] != (h, w):
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        anomaly_map = cv2.resize(anomaly_map.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return rgb, anomaly_map


def render_overlay(rgb: np.ndarray, anomaly_map: np.ndarray, title: str = "",
                   threshold: float | None = None, max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
    """Image | heat overlay | colour bar (1 at the top, 0 at the bottom), as an RGB array.

    With a threshold, the mask outline is drawn in white on the overlay and the threshold is
    marked on the colour bar, so the picture shows both the soft map and the decision.
    """
    rgb, anomaly_map = _fit(rgb, anomaly_map, max_side)
    h, w = anomaly_map.shape
    overlay = heat_overlay(rgb, anomaly_map)
    bar = colour_bar(h)
    if threshold is not None:
        mask = binary_mask(anomaly_map, threshold)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(overlay, contours, -1, (255, 255, 255), max(1, round(max(h, w) / 300)))
        y = int(round((1.0 - float(np.clip(threshold, 0, 1))) * (h - 1)))
        bar[max(0, y - 1):y + 1] = 255
    gap = np.full((h, 6, 3), 255, np.uint8)
    legend = np.full((h, 44, 3), 255, np.uint8)
    scale = float(np.clip(h / 900, 0.3, 1.5))
    thick = 1
    cv2.putText(legend, "1", (4, int(14 + 20 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick)
    cv2.putText(legend, "0", (4, h - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick)
    if threshold is not None and h >= 48:
        y = int(round((1.0 - float(np.clip(threshold, 0, 1))) * (h - 1)))
        y = int(np.clip(y + 4, 20 + 20 * scale, h - 16))
        cv2.putText(legend, f"{threshold:.2f}", (2, y), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8, (0, 0, 0), thick)
    canvas = np.concatenate([rgb, gap, overlay, gap, bar, legend], axis=1)
    if title:
        text_scale = float(np.clip(canvas.shape[1] / 1200, 0.4, 1.2))
        band = np.full((int(12 + 26 * text_scale), canvas.shape[1], 3), 255, np.uint8)
        cv2.putText(band, title, (6, band.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, text_scale, (0, 0, 0), 1)
        canvas = np.concatenate([band, canvas], axis=0)
    return canvas


def save_overlay(rgb: np.ndarray, anomaly_map: np.ndarray, path: str | os.PathLike, title: str = "",
                 threshold: float | None = None) -> None:
    """Write `render_overlay(...)` as a PNG (atomically)."""
    canvas = render_overlay(rgb, anomaly_map, title=title, threshold=threshold)
    _atomic_imwrite(Path(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
