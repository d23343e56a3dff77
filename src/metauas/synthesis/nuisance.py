"""Nuisance (non-change) corruptions: JPEG, sensor noise, blur, brightness, gamma, white balance.

Why: at inspection time the prompt and the query come from different shots: other exposure,
compression, focus and sensor noise. If training pairs differ only where the mask is set, a
model can learn "any difference is an anomaly". Applying such corruptions independently to the
prompt and the query (without labelling them) teaches the model to ignore them and to compare
content instead. The effects follow the usual camera-pipeline order: optics blur -> sensor
noise -> gain / white balance / gamma -> JPEG compression (cf. the corruption families of
Hendrycks & Dietterich, ICLR 2019, at mild strengths).

`apply_nuisance(img, rng)`: img (H, W, 3) uint8 RGB -> (same shape uint8, record dict of the
applied effects and their parameters). Never changes geometry. Deterministic given the rng.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

EFFECT_PROB = 0.5


def apply_nuisance(img: np.ndarray, rng: np.random.Generator, effect_prob: float = EFFECT_PROB,
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    """Each effect is drawn independently with `effect_prob`; at least one is always applied."""
    u = rng.random(6)
    on = u < effect_prob
    if not on.any():
        on[int(rng.integers(0, 6))] = True
    rec: dict[str, Any] = {}
    out = img
    if on[0]:  # blur
        s = float(rng.uniform(0.0, 1.2))
        rec["blur_sigma"] = s
        if s > 0.05:
            out = cv2.GaussianBlur(out, (0, 0), s)
    if on[1]:  # sensor noise (Gaussian, grey levels)
        s = float(rng.uniform(0.0, 10.0))
        rec["noise_sigma"] = s
        noise = rng.normal(0.0, s, size=out.shape).astype(np.float32)
        out = np.clip(np.round(out.astype(np.float32) + noise), 0, 255).astype(np.uint8)
    gain = np.ones(3)
    gamma = 1.0
    if on[2]:
        b = float(rng.uniform(0.75, 1.25))
        rec["brightness"] = b
        gain = gain * b
    if on[3]:
        gamma = float(rng.uniform(0.7, 1.4))
        rec["gamma"] = gamma
    if on[4]:
        wb = rng.uniform(0.92, 1.08, size=3)
        rec["white_balance"] = [float(v) for v in wb]
        gain = gain * wb
    if on[2] or on[3] or on[4]:
        x = np.arange(256, dtype=np.float64) / 255.0
        base = 255.0 * np.power(x, gamma)
        lut = np.clip(np.round(base[:, None] * gain[None, :]), 0, 255).astype(np.uint8)
        out = cv2.LUT(np.ascontiguousarray(out), lut.reshape(256, 1, 3))
    if on[5]:
        q = int(rng.integers(30, 101))
        rec["jpeg_quality"] = q
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(out), cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(out), rec


def to_gray3(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) uint8 with three equal (luma) channels."""
    g = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))


def plain_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) uint8 plain backdrop: a uniform colour with a gentle linear gradient
    (<= ±20 grey levels across the frame) and mild sensor noise (sigma <= 2.5)."""
    col = rng.uniform(20, 235, size=3)
    if rng.random() < 0.5:  # often near-neutral, as on inspection tables
        col = np.full(3, col.mean()) + rng.uniform(-10, 10, size=3)
    ang = float(rng.uniform(0, 2 * np.pi))
    amp = float(rng.uniform(0, 20))
    t = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    grad = amp * (np.cos(ang) * t[None, :] + np.sin(ang) * t[:, None])
    img = col[None, None, :].astype(np.float32) + grad[..., None]
    img = img + rng.normal(0.0, float(rng.uniform(0.0, 2.5)), size=img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)
