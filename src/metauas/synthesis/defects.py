"""Inspection-style defects: cracks, pits, stains, missing material, surface-finish changes and
whole-frame failures.

Why: real industrial anomalies (MVTec AD, VisA, MPDD) are thin cracks and scratches, small
pits / blowholes, low-contrast stains, chipped or broken edges and missing parts, plus
frame-level failures (blank or heavily degraded images). DRAEM (Zavrtanik et al., ICCV 2021)
and CutPaste (Li et al., CVPR 2021) cover blob-like texture / patch replacements only; these
procedural generators add the thin, small and subtle shapes, so that a change-segmentation
model (MetaUAS, Gao NeurIPS 2024) learns to compare prompt and query for such defects too.
All shapes are our own procedural recipes (random walks, ellipses with a radial profile,
Perlin-distorted blobs, jagged polygons).

Contract of every `make_*` function: input `win` is the query window, (S, S, 3) uint8 RGB;
output `(changed, mask)` with `changed` (S, S, 3) uint8 and `mask` (S, S) uint8 {0, 1};
`changed` equals `win` exactly wherever `mask == 0` (enforced by `finish`). Sizes quoted
"at 256" scale with S / 256. All randomness comes from the passed numpy Generator. `obj` is an
optional (S, S) {0,1} object mask: changes are then preferably placed on / clipped to it.
"""

from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np

from metauas.synthesis.perlin import perlin_noise

DEFECT_TYPES = ("defect_crack", "defect_pit", "defect_stain", "defect_missing", "global_change", "defect_finish")
Foreign = Callable[[int], np.ndarray]  # side -> (side, side, 3) uint8 foreign content


def finish(win: np.ndarray, changed: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Round/clip `changed` and copy `win` everywhere outside `mask` (exactness guarantee)."""
    mask = (mask > 0).astype(np.uint8)
    if changed.dtype != np.uint8:
        changed = np.clip(np.round(changed), 0, 255).astype(np.uint8)
    out = win.copy()
    inside = mask > 0
    out[inside] = changed[inside]
    return out, mask


def _point(rng: np.random.Generator, S: int, obj: np.ndarray | None, margin: float = 0.1,
           on_object: float = 0.85) -> tuple[float, float]:
    """(x, y) inside the window (away from the border by `margin`·S), on the object if given."""
    if obj is not None and rng.random() < on_object:
        ys, xs = np.nonzero(obj)
        if len(ys):
            i = int(rng.integers(0, len(ys)))
            return float(xs[i]), float(ys[i])
    u = rng.uniform(margin, 1.0 - margin, size=2) * (S - 1)
    return float(u[0]), float(u[1])


def _clip_to_object(mask: np.ndarray, obj: np.ndarray | None) -> np.ndarray:
    if obj is None:
        return mask
    clipped = mask & obj
    return clipped if clipped.sum() >= max(4, 0.3 * mask.sum()) else mask


# ------------------------------------------------------------------------------ crack
def _walk(rng: np.random.Generator, x: float, y: float, heading: float, length: float,
          step: float) -> np.ndarray:
    """Random walk with smoothly varying heading (curvature itself is a random walk)."""
    n = max(2, int(length / step))
    # heading change per step (radians); mean-reverting so cracks wander but do not curl up
    curv = np.zeros(n)
    kick = rng.normal(0.0, 0.05, size=n) * (step / 3.0)
    c = float(rng.normal(0.0, 0.02))
    for i in range(n):
        c = 0.85 * c + kick[i]
        curv[i] = c
    curv = np.clip(curv, -0.15, 0.15)
    ang = heading + np.cumsum(curv)
    pts = np.empty((n + 1, 2))
    pts[0] = (x, y)
    pts[1:, 0] = x + np.cumsum(step * np.cos(ang))
    pts[1:, 1] = y + np.cumsum(step * np.sin(ang))
    return pts


def make_crack(win: np.ndarray, rng: np.random.Generator, obj: np.ndarray | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
    """1-3 thin curvilinear cracks / scratches (length 20-200 px, width 1-4 px at 256).

    Mostly darker (x 0.2-0.7), sometimes a bright scratch; the anti-aliased line is slightly
    blurred; mask = line alpha > 0.25, dilated by 1 px half of the time.
    """
    S = win.shape[0]
    f = S / 256.0
    alpha = np.zeros((S, S), np.uint8)
    step = max(1.5, 3.0 * f)
    for _ in range(int(rng.integers(1, 4))):
        x, y = _point(rng, S, obj, margin=0.05)
        length = float(rng.uniform(20.0, 200.0)) * f
        width = max(1, int(round(float(rng.uniform(1.0, 4.0)) * f)))
        pts = _walk(rng, x, y, float(rng.uniform(0, 2 * math.pi)), max(length, 12.0), step)
        paths = [pts]
        if rng.random() < 0.35:
            for _ in range(int(rng.integers(1, 3))):
                j = int(rng.integers(0, len(pts)))
                seg = pts[min(j + 1, len(pts) - 1)] - pts[max(j - 1, 0)]
                base = math.atan2(seg[1], seg[0]) + float(rng.choice([-1, 1]) * rng.uniform(0.4, 1.1))
                paths.append(_walk(rng, pts[j, 0], pts[j, 1], base, length * float(rng.uniform(0.2, 0.5)), step))
        for k, p in enumerate(paths):
            w = width if k == 0 else max(1, width - 1)
            cv2.polylines(alpha, [np.round(p * 16).astype(np.int32)], False, 255, w, cv2.LINE_AA,
                          shift=4)
    a = cv2.GaussianBlur(alpha.astype(np.float32) / 255.0, (0, 0), float(rng.uniform(0.3, 0.8)))
    mask = (a > 0.25).astype(np.uint8)
    if rng.random() < 0.5:
        mask = cv2.dilate(mask, np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8))
    mask = _clip_to_object(mask, obj)
    if not mask.any():
        return win.copy(), mask
    img = win.astype(np.float32)
    a3 = np.clip(a / max(float(a.max()), 1e-6) * 1.3, 0.0, 1.0)[..., None]
    level = float(img[mask > 0].mean())
    bright = rng.random() < 0.25 or level < 50.0
    if bright:  # scratch: towards white
        s = float(rng.uniform(0.35, 0.8))
        changed = img + a3 * s * (255.0 - img)
    else:
        k = float(rng.uniform(0.2, 0.7))
        changed = img * (1.0 - a3 * (1.0 - k))
    return finish(win, changed, mask)


# ------------------------------------------------------------------------------ pits
def make_pits(win: np.ndarray, rng: np.random.Generator, obj: np.ndarray | None = None,
              ) -> tuple[np.ndarray, np.ndarray]:
    """1-6 small pits / blowholes: ellipses, radius 2-12 px at 256 (>= 2 px), dark (or bright)
    centre with a soft bright rim; mask = ellipse area."""
    S = win.shape[0]
    f = S / 256.0
    img = win.astype(np.float32)
    changed = img.copy()
    mask = np.zeros((S, S), np.uint8)
    for _ in range(int(rng.integers(1, 7))):
        cx, cy = _point(rng, S, obj, margin=0.05)
        a = max(2.0, float(rng.uniform(2.0, 12.0)) * f)
        b = a * float(rng.uniform(0.6, 1.0))
        th = float(rng.uniform(0, math.pi))
        r = int(math.ceil(a)) + 1
        x0, x1 = max(0, int(cx) - r), min(S, int(cx) + r + 1)
        y0, y1 = max(0, int(cy) - r), min(S, int(cy) + r + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = xx - cx, yy - cy
        u = (dx * math.cos(th) + dy * math.sin(th)) / a
        v = (-dx * math.sin(th) + dy * math.cos(th)) / b
        d = np.sqrt(u * u + v * v)
        inside = d <= 1.0
        if not inside.any():
            continue
        depth = float(rng.uniform(0.5, 0.9))
        core = np.clip(1.0 - d, 0.0, 1.0) ** 0.5
        rim = 0.25 * np.exp(-((d - 0.85) / 0.12) ** 2)
        patch = changed[y0:y1, x0:x1]
        level = float(patch[inside].mean())
        if rng.random() < 0.2 or level < 50.0:  # bright pit (reflective hole / inclusion)
            shade = patch + (core * depth)[..., None] * (255.0 - patch)
        else:
            shade = patch * (1.0 - core * depth + rim)[..., None]
        patch[inside] = shade[inside]
        mask[y0:y1, x0:x1] |= inside.astype(np.uint8)
    return finish(win, changed, mask)


# ------------------------------------------------------------------------------ stains
def make_stain(win: np.ndarray, rng: np.random.Generator, obj: np.ndarray | None = None,
               visible: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """1-2 irregular soft blobs (radius 8-60 px at 256): low/medium brightness and colour
    shift; mask = pixels whose change is >= `visible` grey levels in some channel."""
    S = win.shape[0]
    f = S / 256.0
    alpha = np.zeros((S, S), np.float32)
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = _point(rng, S, obj, margin=0.1)
        r = max(4.0, float(rng.uniform(8.0, 60.0)) * f)
        ext = int(math.ceil(1.6 * r)) + 2
        x0, x1 = max(0, int(cx) - ext), min(S, int(cx) + ext + 1)
        y0, y1 = max(0, int(cy) - ext), min(S, int(cy) + ext + 1)
        h, w = y1 - y0, x1 - x0
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        asp = float(rng.uniform(0.5, 1.0))
        th = float(rng.uniform(0, math.pi))
        dx, dy = xx - cx, yy - cy
        u = (dx * math.cos(th) + dy * math.sin(th)) / r
        v = (-dx * math.sin(th) + dy * math.cos(th)) / (r * asp)
        d = np.sqrt(u * u + v * v)
        res = int(rng.integers(2, 5))
        noise = perlin_noise((h, w), (res, res), rng)
        field = 1.0 - d + 0.8 * noise
        soft = float(rng.uniform(0.15, 0.5))
        a = np.clip(field / soft, 0.0, 1.0)
        alpha[y0:y1, x0:x1] = np.maximum(alpha[y0:y1, x0:x1], a)
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(0.8, 1.5 * f))
    if obj is not None:
        alpha = alpha * obj.astype(np.float32) if (alpha * obj).sum() > 0.3 * alpha.sum() else alpha
    img = win.astype(np.float32)
    sel = alpha > 0.5
    level = float(img[sel].mean()) if sel.any() else float(img.mean())
    amp = float(rng.uniform(15.0, 60.0))
    sign = -1.0 if (level > 170 or (level > 60 and rng.random() < 0.65)) else 1.0
    delta = sign * amp + rng.uniform(-1.0, 1.0, size=3) * float(rng.uniform(0.0, 25.0))
    changed = np.clip(np.round(img + alpha[..., None] * delta.astype(np.float32)), 0, 255)
    diff = np.abs(changed - img).max(axis=2)
    mask = (diff >= visible).astype(np.uint8)
    return finish(win, changed, mask)


# ------------------------------------------------------------------------------ surface finish
def _finish_region(rng: np.random.Generator, S: int) -> np.ndarray:
    """Soft (S, S) float32 alpha of a large region: a band along one edge (depth 15-45 % of the
    frame, Perlin-wavy inner border) or a Perlin-distorted blob (radius 20-40 % of the frame)."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S
    wobble = 0.08 * perlin_noise((S, S), (2, 2), rng)
    if rng.random() < 0.6:
        depth = float(rng.uniform(0.15, 0.45))
        dist = (yy, 1.0 - yy, xx, 1.0 - xx)[int(rng.integers(0, 4))]  # distance from one edge
        field = (depth - dist + wobble) / 0.03
    else:
        cx, cy = rng.uniform(0.3, 0.7, size=2)
        r = float(rng.uniform(0.2, 0.4))
        field = (r - np.hypot(xx - cx, yy - cy) + 2.0 * wobble) / 0.03
    return np.clip(field, 0.0, 1.0).astype(np.float32)


def make_finish(win: np.ndarray, rng: np.random.Generator, visible: float = 2.0,
                ) -> tuple[np.ndarray, np.ndarray, str]:
    """A surface-finish change over a large region ("uneven" surfaces, grinding or polishing
    marks): in a band along one edge or a large blob, the fine texture gets directional
    striations (motion-blurred noise, 8-25 grey levels, streaks 8-40 px at 256), is smoothed
    (Gaussian sigma 1.5-4 px) or has its local contrast scaled (x0.3-0.6 or x1.6-2.5). The mean
    brightness stays about the same, so only a comparison of texture finds it.

    Mask: region pixels whose 9x9-box-averaged absolute change is >= `visible` grey levels (a
    texture change makes a contiguous mask; a flat area that the change leaves untouched stays
    normal). Returns (changed, mask, variant) with variant "striations" | "smoothed" | "contrast".
    """
    S = win.shape[0]
    f = S / 256.0
    img = win.astype(np.float32)
    alpha = _finish_region(rng, S)
    v = int(rng.integers(0, 3))
    if v == 0:
        length = max(3, int(round(float(rng.uniform(8.0, 40.0)) * f)))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0 / length
        rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), float(rng.uniform(0, 180)), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (length, length))
        kernel /= max(float(kernel.sum()), 1e-6)
        streaks = cv2.filter2D(rng.normal(0.0, 1.0, size=(S, S)).astype(np.float32), -1, kernel)
        streaks *= float(rng.uniform(8.0, 25.0)) / max(float(streaks.std()), 1e-6)
        target = img + streaks[..., None]
    else:
        sigma = max(0.8, float(rng.uniform(1.5, 4.0)) * f)
        local_mean = cv2.GaussianBlur(img, (0, 0), sigma)
        if v == 1:
            target = local_mean
        else:
            k = float(rng.uniform(0.3, 0.6)) if rng.random() < 0.5 else float(rng.uniform(1.6, 2.5))
            target = local_mean + k * (img - local_mean)
    changed = np.clip(np.round(img + alpha[..., None] * (target - img)), 0, 255)
    diff = cv2.blur(np.abs(changed - img).max(axis=2), (9, 9))
    mask = ((alpha > 0.5) & (diff >= visible)).astype(np.uint8)
    out, mask = finish(win, changed, mask)
    return out, mask, ("striations", "smoothed", "contrast")[v]


# ------------------------------------------------------------------------------ missing material
def _jagged_polygon(rng: np.random.Generator, S: int) -> np.ndarray:
    """Polygon attached to one side of the window (chipped edge) or free-floating (break)."""
    f = S / 256.0
    fray = rng.random() < 0.5
    if rng.random() < 0.7:  # attached: built in "bottom side" coordinates, then rotated
        L = float(rng.uniform(0.15, 0.55)) * S
        D = float(rng.uniform(0.05, 0.3)) * S
        c = float(rng.uniform(L / 2, S - L / 2))
        n = int(rng.integers(5, 12)) * (3 if fray else 1)
        t = np.linspace(0.0, 1.0, n)
        prof = np.sin(np.pi * t) ** float(rng.uniform(0.4, 1.2))
        jit = rng.uniform(0.5, 1.0, size=n)
        if fray:
            jit = jit * rng.uniform(0.6, 1.0, size=n) + rng.normal(0, 4 * f, size=n) / max(D, 1)
        xs = c - L / 2 + L * t
        ys = (S + 2) - D * prof * np.clip(jit, 0.1, 1.2)
        pts = np.stack([xs, ys], 1)
        pts = np.vstack([[xs[0], S + 4], pts, [xs[-1], S + 4]])
        k = int(rng.integers(0, 4))  # which side: rotate about the window centre
        c0 = (S - 1) / 2.0
        for _ in range(k):
            pts = np.stack([c0 - (pts[:, 1] - c0), pts[:, 0]], 1)
        return pts
    r = float(rng.uniform(0.06, 0.22)) * S
    cx, cy = rng.uniform(r, S - r, size=2)
    n = int(rng.integers(6, 14)) * (3 if fray else 1)
    ang = np.sort(rng.uniform(0, 2 * math.pi, size=n))
    rad = r * rng.uniform(0.5, 1.0, size=n)
    return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)


def _fill(win: np.ndarray, rng: np.random.Generator, foreign: Foreign | None,
          background: np.ndarray | None) -> tuple[np.ndarray, str]:
    S = win.shape[0]
    if background is not None and rng.random() < 0.7:
        return background, "background"
    kind = int(rng.integers(0, 4 if foreign is not None else 3))
    noise = rng.normal(0.0, float(rng.uniform(0.0, 3.0)), size=(S, S, 1)).astype(np.float32)
    if kind == 0:
        col = np.full(3, float(rng.uniform(0, 45)), np.float32)
        return np.clip(col + noise, 0, 255), "dark"
    if kind == 1:
        col = np.full(3, float(rng.uniform(210, 255)), np.float32)
        return np.clip(col + noise, 0, 255), "bright"
    if kind == 2:
        col = win.reshape(-1, 3).mean(0).astype(np.float32)
        return np.clip(col + noise, 0, 255), "mean"
    return foreign(S).astype(np.float32), "foreign"  # type: ignore[misc]


def make_missing(win: np.ndarray, rng: np.random.Generator, obj: np.ndarray | None = None,
                 foreign: Foreign | None = None, background: np.ndarray | None = None,
                 ) -> tuple[np.ndarray, np.ndarray, str]:
    """Chipped edge / break / missing material: a jagged polygon attached to a window side (or
    free-floating; with an object, centred on the object's outline and clipped to it) filled
    flat (dark, bright, mean colour), with foreign content, or with the object-free
    `background`. Returns (changed, mask, fill kind); mask = polygon."""
    S = win.shape[0]
    mask = np.zeros((S, S), np.uint8)
    if obj is not None and rng.random() < 0.85:
        edge = obj - cv2.erode(obj, np.ones((3, 3), np.uint8))
        ys, xs = np.nonzero(edge)
        if len(ys):
            i = int(rng.integers(0, len(ys)))
            r = float(rng.uniform(0.06, 0.2)) * S
            n = int(rng.integers(6, 20))
            ang = np.sort(rng.uniform(0, 2 * math.pi, size=n))
            rad = r * rng.uniform(0.4, 1.0, size=n)
            pts = np.stack([xs[i] + rad * np.cos(ang), ys[i] + rad * np.sin(ang)], 1)
            cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
            mask &= obj
    if not mask.any():
        pts = _jagged_polygon(rng, S)
        cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    fill, kind = _fill(win, rng, foreign, background)
    changed, mask = finish(win, fill, mask)
    return changed, mask, kind


# ------------------------------------------------------------------------------ frame level
def make_global(win: np.ndarray, rng: np.random.Generator, foreign: Foreign | None = None,
                ) -> tuple[np.ndarray, np.ndarray, str]:
    """Whole-frame failures: blank frame (black/white/grey/random colour, mask all ones), heavy
    blur or noise of the whole frame (mask all ones), or a half / >= 25 % region replaced by a
    constant or foreign content (mask = region). May exceed the usual local area limits."""
    S = win.shape[0]
    img = win.astype(np.float32)
    v = int(rng.integers(0, 4))
    ones = np.ones((S, S), np.uint8)
    if v == 0:
        c = int(rng.integers(0, 4))
        col = [np.zeros(3), np.full(3, 255.0), np.full(3, float(rng.uniform(60, 200))),
               rng.uniform(0, 255, size=3)][c]
        out = np.broadcast_to(np.round(col).astype(np.uint8), win.shape).copy()
        return out, ones, "blank_" + ("black", "white", "grey", "color")[c]
    if v == 1:
        out = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(4.0, 10.0)) * S / 256.0 + 1.0)
        out = out + float(rng.choice([-1, 1]) * rng.uniform(20, 50))
        return np.clip(np.round(out), 0, 255).astype(np.uint8), ones, "blur"
    if v == 2:
        out = img + rng.normal(0.0, float(rng.uniform(30.0, 70.0)), size=img.shape).astype(np.float32)
        return np.clip(np.round(out), 0, 255).astype(np.uint8), ones, "noise"
    mask = np.zeros((S, S), np.uint8)
    if rng.random() < 0.5:  # a half
        side = int(rng.integers(0, 4))
        h = S // 2
        sl = [(slice(0, h), slice(None)), (slice(h, S), slice(None)),
              (slice(None), slice(0, h)), (slice(None), slice(h, S))][side]
        mask[sl] = 1
    else:  # a rectangle of 25-60 % of the frame
        frac = float(rng.uniform(0.25, 0.6))
        asp = float(rng.uniform(0.5, 2.0))
        w = int(min(S, round(math.sqrt(frac * S * S * asp))))
        h = int(min(S, math.ceil(frac * S * S / max(w, 1))))
        x, y = int(rng.integers(0, S - w + 1)), int(rng.integers(0, S - h + 1))
        mask[y:y + h, x:x + w] = 1
    if foreign is not None and rng.random() < 0.4:
        fill, kind = foreign(S).astype(np.float32), "foreign"
    else:
        fill = np.broadcast_to(rng.uniform(0, 255, size=3).astype(np.float32), img.shape)
        kind = "constant"
    out, mask = finish(win, fill, mask)
    return out, mask, "region_" + kind
