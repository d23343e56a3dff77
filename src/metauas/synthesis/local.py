"""Local-region changes: content inside a (Perlin) mask is replaced or altered.

Why: industrial anomalies are mostly local defects (scratches, stains, missing material,
discolouration). DRAEM (Zavrtanik et al., ICCV 2021) simulates them by blending a foreign
texture into a Perlin-noise region; CutPaste (Li et al., CVPR 2021) by moving a patch of
the same image. MetaUAS (Gao, NeurIPS 2024) trains on such local changes next to object
changes. We add colour/brightness/blur/noise changes for subtle defects.

Every function returns a full "changed" image; the caller composites it inside the mask
with `composite`, so pixels outside the mask are never touched.
"""

from __future__ import annotations

import cv2
import numpy as np

LOCAL_VARIANTS = ("texture", "patch", "color")


def composite(base: np.ndarray, changed: np.ndarray, mask: np.ndarray,
              feather: float = 1.0) -> np.ndarray:
    """`changed` inside `mask`, `base` outside — exactly (outside pixels are copied).

    The blend weight is feathered *inwards* only (weight 0 outside the mask is kept), so edges
    look less cut-out while the mask still covers every changed pixel. Work is limited to the
    mask's bounding box.
    """
    out = base.copy()
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return out
    pad = int(3 * feather) + 2
    h, w = mask.shape
    y0, y1 = max(0, ys.min() - pad), min(h, ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(w, xs.max() + pad + 1)
    m = mask[y0:y1, x0:x1].astype(np.float32)
    if feather > 0:
        soft = cv2.GaussianBlur(m, (0, 0), feather)
        m = m * np.minimum(2.0 * soft, 1.0)
    b = base[y0:y1, x0:x1].astype(np.float32)
    c = changed[y0:y1, x0:x1].astype(np.float32)
    blended = b + (c - b) * m[..., None]
    region = out[y0:y1, x0:x1]
    inside = mask[y0:y1, x0:x1] > 0
    region[inside] = np.clip(blended[inside] + 0.5, 0, 255).astype(np.uint8)
    return out


def random_resized_crop(img: np.ndarray, out: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.2, 1.0)) -> np.ndarray:
    """Square crop of a random part of `img` resized to out x out, random 90° turn / mirror."""
    h, w = img.shape[:2]
    side = max(2, int(min(h, w) * np.sqrt(rng.uniform(*scale))))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    crop = img[y:y + side, x:x + side]
    interp = cv2.INTER_AREA if side > out else cv2.INTER_LINEAR
    crop = cv2.resize(crop, (out, out), interpolation=interp)
    k = int(rng.integers(0, 4))
    if k:
        crop = np.rot90(crop, k)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def texture_change(base: np.ndarray, texture: np.ndarray, rng: np.random.Generator,
                   blend_range: tuple[float, float] = (0.0, 0.6)) -> np.ndarray:
    """DRAEM-style: foreign texture A mixed with the image, (1 - beta)·A + beta·I."""
    size = base.shape[0]
    tex = random_resized_crop(texture, size, rng)
    beta = float(rng.uniform(*blend_range))
    out = (1.0 - beta) * tex.astype(np.float32) + beta * base.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def patch_change(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """CutPaste-style: the same image moved (>= 1/4 of its side), turned, rescaled, recoloured."""
    size = base.shape[0]
    angle = float(rng.uniform(0.0, 360.0))
    scale = float(rng.uniform(0.7, 1.5))
    dist = float(rng.uniform(0.25, 0.5)) * size
    theta = float(rng.uniform(0.0, 2 * np.pi))
    mat = cv2.getRotationMatrix2D((size / 2.0, size / 2.0), angle, scale)
    mat[:, 2] += (dist * np.cos(theta), dist * np.sin(theta))
    moved = cv2.warpAffine(base, mat, (size, size), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT_101)
    if rng.random() < 0.5:
        gains = rng.uniform(0.8, 1.2, size=3).astype(np.float32)
        moved = np.clip(moved.astype(np.float32) * gains, 0, 255).astype(np.uint8)
    return moved


def color_change(base: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Discolouration, brightness, blur or noise; always visibly different inside the mask.

    A brightness offset of 30-80 grey levels is always included, pointing away from the
    saturated end, so even a blur of a flat region is a real (visible) change.
    """
    img = base.astype(np.float32)
    variant = int(rng.integers(0, 4))
    if variant == 0:  # hue / saturation change
        hsv = cv2.cvtColor(base, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + float(rng.uniform(20, 160))) % 180.0
        hsv[..., 1] = np.clip(hsv[..., 1] * float(rng.uniform(0.3, 1.8)) + 30.0, 0, 255)
        img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    elif variant == 1:  # blur
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(2.0, 6.0)))
    elif variant == 2:  # sensor-like noise
        img = img + rng.normal(0.0, float(rng.uniform(12.0, 35.0)), size=img.shape).astype(np.float32)
    else:  # contrast change
        mean = img.mean(axis=(0, 1), keepdims=True)
        img = (img - mean) * float(rng.choice([rng.uniform(0.2, 0.6), rng.uniform(1.5, 2.5)])) + mean
    inside = mask > 0
    level = float(base[inside].mean()) if inside.any() else float(base.mean())
    delta = float(rng.uniform(30.0, 80.0))
    img = img + (-delta if level > 127.5 else delta)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def mean_change(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute grey-level difference inside `mask` (0 for an empty mask)."""
    inside = mask > 0
    if not inside.any():
        return 0.0
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16))[inside].mean())


def _block_stats(img: np.ndarray, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, sorted means and standard deviations (grey levels) of a blocks x blocks grid.

    Returns two (C, blocks * blocks) arrays.
    """
    g = img.astype(np.float32)
    g = g[..., None] if g.ndim == 2 else g
    h, w = (g.shape[0] // blocks) * blocks, (g.shape[1] // blocks) * blocks
    b = g[:h, :w].reshape(blocks, h // blocks, blocks, w // blocks, -1).transpose(4, 0, 2, 1, 3)
    b = b.reshape(b.shape[0], blocks * blocks, -1)
    return np.sort(b.mean(axis=2), axis=1), np.sort(b.std(axis=2), axis=1)


def same_surface(a: np.ndarray, b: np.ndarray, blocks: int = 8, max_mean: float = 6.0,
                 max_std: float = 4.0) -> bool:
    """Whether two crops (H,W,3 or H,W uint8) look like two places of one stationary surface.

    Compares, per channel, the sorted distributions (not the positions) of local block means and
    standard deviations: mean absolute differences at most `max_mean` and `max_std` grey levels.
    A crop with a different layout of the same material passes; a wall against a floor, or a
    crop that shows a different part of a non-repeating image, does not.
    """
    ma, sa = _block_stats(a, blocks)
    mb, sb = _block_stats(b, blocks)
    return float(np.abs(ma - mb).mean()) <= max_mean and float(np.abs(sa - sb).mean()) <= max_std
