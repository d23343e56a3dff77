"""Prompt/query misalignment and photometric jitter.

Why: a real normal prompt is never pixel-aligned with the query (other part position, other
camera pose, other light). MetaUAS (Gao, NeurIPS 2024) handles this with soft feature
alignment, which only learns if training pairs are misaligned too. The change mask must
stay *exactly* aligned with the query, so all misalignment is applied to the PROMPT side:
the aligned pair is built on an enlarged canvas, the query and mask are its centre crop,
and the prompt is an affine resampling of the same canvas (real image content fills the
margin, reflection only beyond it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Misalignment:
    """Prompt pose relative to the query: degrees, scale, pixel shift, mirror flag."""

    angle: float = 0.0
    scale: float = 1.0
    tx: float = 0.0
    ty: float = 0.0
    hflip: bool = False

    @property
    def is_identity(self) -> bool:
        """True when the transform changes nothing (no rotation, scale, shift or flip)."""
        return (self.angle == 0.0 and self.scale == 1.0 and self.tx == 0.0 and self.ty == 0.0
                and not self.hflip)


def sample_misalignment(rng: np.random.Generator, size: int, max_rotation: float,
                        max_translation: float, scale_range: tuple[float, float],
                        prob: float, flip_prob: float = 0.0) -> Misalignment:
    """Random prompt pose: rotation in ±max_rotation°, shift in ±max_translation·size, scale.

    With probability 1 - `prob` the pair is aligned (identity), so the model also sees
    perfectly registered pairs, as in many industrial inspection setups.
    """
    # draw all numbers unconditionally so that every option consumes the same random stream
    u = rng.random(6)
    if u[0] >= prob:
        return Misalignment()
    angle = float((2 * u[1] - 1) * max_rotation)
    tx = float((2 * u[2] - 1) * max_translation * size)
    ty = float((2 * u[3] - 1) * max_translation * size)
    lo, hi = scale_range
    scale = float(lo + (hi - lo) * u[4])
    return Misalignment(angle, scale, tx, ty, bool(u[5] < flip_prob))


def prompt_matrix(mis: Misalignment, size: int, canvas: int) -> np.ndarray:
    """2x3 affine taking PROMPT pixel coords to CANVAS pixel coords (x, y order)."""
    c_out = (size - 1) / 2.0
    c_big = (canvas - 1) / 2.0
    a = math.radians(mis.angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) / mis.scale
    # p_canvas = rot · (F(p) - c_out) + c_big + t, where F(p) = D·p + f mirrors x if hflip
    d = np.diag([-1.0, 1.0]) if mis.hflip else np.eye(2)
    f = np.array([size - 1.0, 0.0]) if mis.hflip else np.zeros(2)
    lin = rot @ d
    off = rot @ (f - c_out) + np.array([c_big + mis.tx, c_big + mis.ty])
    return np.hstack([lin, off[:, None]])


def warp_prompt(canvas_img: np.ndarray, mis: Misalignment, size: int) -> np.ndarray:
    """Resample the prompt (size x size) from the canvas under misalignment `mis`."""
    canvas = canvas_img.shape[0]
    if mis.is_identity:
        m = (canvas - size) // 2
        return canvas_img[m:m + size, m:m + size].copy()
    mat = prompt_matrix(mis, size, canvas)
    return cv2.warpAffine(canvas_img, mat, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT_101)


def prompt_to_query_matrix(mis: Misalignment, size: int, canvas: int) -> np.ndarray:
    """2x3 affine taking PROMPT pixel coords to QUERY pixel coords.

    `cv2.warpAffine(prompt, M, (size, size))` re-registers the prompt onto the query (used by
    tests and for visual checks).
    """
    if mis.is_identity:
        mat = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        return mat
    mat = prompt_matrix(mis, size, canvas).copy()
    m = (canvas - size) / 2.0
    mat[:, 2] -= m
    return mat


@dataclass(frozen=True)
class Photometric:
    """Global colour change of the prompt (not a change to be segmented)."""

    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def is_identity(self) -> bool:
        """True when the jitter changes nothing (gamma, contrast and gains 1, brightness 0)."""
        return (self.gamma == 1.0 and self.contrast == 1.0 and self.brightness == 0.0
                and self.gains == (1.0, 1.0, 1.0))


def sample_photometric(rng: np.random.Generator, strength: float) -> Photometric:
    """Jitter of gamma/contrast (±strength), brightness (±64·strength), channel gains (±strength/2)."""
    u = rng.random(6)
    if strength <= 0:
        return Photometric()
    s = float(strength)
    return Photometric(
        gamma=float(1 + s * (2 * u[0] - 1)),
        contrast=float(1 + s * (2 * u[1] - 1)),
        brightness=float(64 * s * (2 * u[2] - 1)),
        gains=tuple(float(1 + 0.5 * s * (2 * v - 1)) for v in u[3:6]),  # type: ignore[arg-type]
    )


def apply_photometric(img: np.ndarray, p: Photometric) -> np.ndarray:
    """Apply `p` with one 256-entry lookup table per channel (fast, exact, deterministic)."""
    if p.is_identity:
        return img
    x = np.arange(256, dtype=np.float64) / 255.0
    base = 255.0 * np.power(x, p.gamma)
    lut = np.stack([(base - 128.0) * p.contrast * g + 128.0 + p.brightness for g in p.gains], 1)
    lut = np.clip(np.round(lut), 0, 255).astype(np.uint8).reshape(256, 1, 3)
    return cv2.LUT(np.ascontiguousarray(img), lut)
