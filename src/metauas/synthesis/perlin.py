"""Perlin gradient noise and thresholded noise masks for local-region changes.

Why: DRAEM (Zavrtanik et al., ICCV 2021) showed that thresholded Perlin noise at a random
scale and rotation gives irregular, natural-looking anomaly regions; MetaUAS (Gao, NeurIPS
2024) uses such regions for its local-change pairs. This is our own vectorised numpy
implementation of classic gradient noise (Perlin, SIGGRAPH 1985 / 2002 fade curve).
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator,
                 ) -> np.ndarray:
    """2-D gradient noise of `shape` with `res` lattice cells per axis; values in ~[-0.71, 0.71].

    Any shape is accepted: noise is computed on the next multiple of `res` and cropped.
    """
    h, w = shape
    ry, rx = max(1, int(res[0])), max(1, int(res[1]))
    cy, cx = math.ceil(h / ry), math.ceil(w / rx)  # pixels per cell
    angles = rng.uniform(0.0, 2.0 * math.pi, size=(ry + 1, rx + 1))
    gy, gx = np.sin(angles), np.cos(angles)
    # per-pixel coordinates inside the cell and cell index
    ys = np.arange(ry * cy, dtype=np.float64) / cy
    xs = np.arange(rx * cx, dtype=np.float64) / cx
    iy, ix = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = (ys - iy)[:, None], (xs - ix)[None, :]
    iy, ix = iy[:, None], ix[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        return gy[iy + dy, ix + dx] * (fy - dy) + gx[iy + dy, ix + dx] * (fx - dx)

    n00, n01, n10, n11 = corner(0, 0), corner(0, 1), corner(1, 0), corner(1, 1)
    uy, ux = _fade(fy), _fade(fx)
    top = n00 + ux * (n01 - n00)
    bottom = n10 + ux * (n11 - n10)
    return (top + uy * (bottom - top))[:h, :w].astype(np.float32)


def perlin_mask(shape: tuple[int, int], rng: np.random.Generator,
                scale_exp: tuple[int, int] = (0, 5), threshold: float = 0.5,
                area_range: tuple[float, float] = (0.005, 0.35),
                localize_prob: float = 0.5, tries: int = 12) -> np.ndarray:
    """Binary HxW uint8 {0,1} mask from thresholded, rotated Perlin noise.

    `scale_exp`: lattice resolution is 2**k per axis with k drawn per axis from this range
    (DRAEM draws 2**[0,6)). The noise is rotated by a random angle. With `localize_prob` the
    region is also cut to a random ellipse, so that not every change is scattered over the
    whole image. A mask whose area is outside `area_range` is redrawn (up to `tries`); if none
    fits, a random ellipse of valid size is returned, so the result is never empty.
    """
    h, w = shape
    lo, hi = area_range
    for _ in range(tries):
        ky = int(rng.integers(scale_exp[0], scale_exp[1] + 1))
        kx = int(rng.integers(scale_exp[0], scale_exp[1] + 1))
        noise = perlin_noise((h, w), (2**ky, 2**kx), rng)
        angle = float(rng.uniform(-90.0, 90.0))
        rot = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
        noise = cv2.warpAffine(noise, rot, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)
        thr = float(threshold + rng.uniform(-0.15, 0.15))
        mask = (noise > thr).astype(np.uint8)
        if rng.random() < localize_prob:
            mask &= random_ellipse((h, w), rng, (max(lo, 0.03), min(0.5, max(hi, 0.05))))
        frac = float(mask.mean())
        if lo <= frac <= hi:
            return mask
    return random_ellipse((h, w), rng, (lo, hi))


def random_ellipse(shape: tuple[int, int], rng: np.random.Generator,
                   area_range: tuple[float, float]) -> np.ndarray:
    """A filled, randomly rotated ellipse whose area fraction is in `area_range`."""
    h, w = shape
    frac = float(rng.uniform(*area_range))
    aspect = float(rng.uniform(0.4, 1.0))
    # area = pi * a * b with b = aspect * a
    a = math.sqrt(frac * h * w / (math.pi * aspect))
    b = aspect * a
    a, b = min(a, 0.5 * max(h, w)), min(b, 0.5 * min(h, w))
    cx = float(rng.uniform(a * 0.5, w - a * 0.5)) if w > a else w / 2.0
    cy = float(rng.uniform(b * 0.5, h - b * 0.5)) if h > b else h / 2.0
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (int(round(cx)), int(round(cy))), (max(1, int(a)), max(1, int(b))),
                float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
    return mask
