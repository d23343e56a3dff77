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
                scale_exp: tuple[int, int] = (0, 4), threshold: float = 0.5,
                area_range: tuple[float, float] = (0.005, 0.35),
                localize_prob: float = 0.5) -> np.ndarray:
    """Binary HxW uint8 {0,1} mask from thresholded, rotated Perlin noise.

    `scale_exp`: lattice resolution is 2**k per axis with k drawn per axis from this range
    (DRAEM draws 2**[0,6)). The noise is rotated by a random angle. With `localize_prob` the
    region is also cut to a random ellipse, so that not every change is scattered over the
    whole image. The threshold is DRAEM's fixed `threshold` when that gives an area inside
    `area_range`; otherwise it is moved to the noise quantile of an area drawn (log-uniformly)
    from the range, so one draw always suffices and the mask is never empty.
    """
    h, w = shape
    lo, hi = area_range
    ky = int(rng.integers(scale_exp[0], scale_exp[1] + 1))
    kx = int(rng.integers(scale_exp[0], scale_exp[1] + 1))
    # noise is smooth at the lattice scale: compute it at >= 8 px per cell, then upsample
    cells = 2 ** max(ky, kx)
    scale = min(1.0, max(8 * cells, 32) / float(max(h, w)))
    sh, sw = max(2, int(round(h * scale))), max(2, int(round(w * scale)))
    noise = perlin_noise((sh, sw), (2**ky, 2**kx), rng)
    angle = float(rng.uniform(-90.0, 90.0))
    rot = cv2.getRotationMatrix2D((sw / 2.0, sh / 2.0), angle, 1.0)
    noise = cv2.warpAffine(noise, rot, (sw, sh), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT_101)
    if (sh, sw) != (h, w):
        noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)
    region = None
    if rng.random() < localize_prob:
        region = random_ellipse((h, w), rng, (max(2 * lo, 0.05), min(0.6, max(2 * hi, 0.1))))
    target = float(np.exp(rng.uniform(np.log(max(lo, 1e-4)), np.log(hi))))
    vals = noise if region is None else np.where(region > 0, noise, -np.inf)
    mask = (vals > threshold).astype(np.uint8)
    if not lo <= float(mask.mean()) <= hi:
        flat = vals.reshape(-1)
        k = int(round((1.0 - target) * flat.size))
        k = min(max(k, 0), flat.size - 1)
        thr = float(np.partition(flat, k)[k])
        mask = (vals > thr).astype(np.uint8)
        if not mask.any():
            mask = (vals >= thr).astype(np.uint8) & (vals > -np.inf)
    if not mask.any():
        return random_ellipse((h, w), rng, (lo, hi))
    return mask


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
