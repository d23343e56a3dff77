"""Tiny generated image trees for tests, benchmarks and demos (no downloaded data).

Why: tests must run anywhere in seconds without the real image set; these images have the
same structure (photos/<source>/, objects/<source>/ RGBA, textures/<source>/, a COCO JSON)
and enough texture for every change type to be visible.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from metauas.synthesis.perlin import perlin_noise


def smooth_color_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Colourful multi-scale noise plus a few shapes: a stand-in for a photo."""
    chans = []
    for _ in range(3):
        n = perlin_noise((h, w), (2, 2), rng) + 0.5 * perlin_noise((h, w), (8, 8), rng)
        chans.append(n)
    img = np.stack(chans, -1)
    img = (img - img.min()) / max(1e-6, float(img.max() - img.min())) * 200.0 + 25.0
    img = img.astype(np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.5:
            cv2.circle(img, center, int(rng.integers(4, max(5, min(h, w) // 4))), color, -1)
        else:
            x2, y2 = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.rectangle(img, center, (x2, y2), color, -1)
    return np.ascontiguousarray(img)


def texture_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Stripes / checker / noise textures."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = int(rng.integers(0, 3))
    f = float(rng.uniform(0.1, 0.5))
    if kind == 0:
        base = np.sin(f * (xx * np.cos(f * 7) + yy * np.sin(f * 7)))
    elif kind == 1:
        base = np.sign(np.sin(f * xx) * np.sin(f * yy))
    else:
        base = perlin_noise((h, w), (16, 16), rng) * 2.0
    col_a = rng.integers(0, 256, 3).astype(np.float32)
    col_b = rng.integers(0, 256, 3).astype(np.float32)
    t = ((base + 1.0) / 2.0).clip(0, 1)[..., None]
    return (col_a * t + col_b * (1 - t)).astype(np.uint8)


def object_sprite(rng: np.random.Generator, side: int) -> np.ndarray:
    """RGBA sprite: a textured blob with a hard-ish alpha edge."""
    rgb = smooth_color_image(rng, side, side)
    alpha = np.zeros((side, side), np.uint8)
    pts = []
    n = int(rng.integers(5, 9))
    for k in range(n):
        ang = 2 * np.pi * k / n
        r = float(rng.uniform(0.25, 0.48)) * side
        pts.append((side / 2 + r * np.cos(ang), side / 2 + r * np.sin(ang)))
    cv2.fillPoly(alpha, [np.round(np.array(pts)).astype(np.int32)], 255)
    alpha = cv2.GaussianBlur(alpha, (3, 3), 0)
    return np.dstack([rgb, alpha])


def make_tiny_image_tree(root: str | Path, n_photos: int = 6, n_objects: int = 4,
                         n_textures: int = 3, photo_size: tuple[int, int] = (96, 128),
                         seed: int = 0, coco: bool = True) -> dict[str, Path]:
    """Write photos (2 sources), objects, textures and a COCO JSON below `root`.

    Returns {"photos", "objects", "textures", "masks"} paths (masks only if `coco`).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    h, w = photo_size
    photos, objects, textures = root / "photos", root / "objects", root / "textures"
    images, annotations = [], []
    for i in range(n_photos):
        src = "srcA" if i % 2 == 0 else "srcB"
        d = photos / src
        d.mkdir(parents=True, exist_ok=True)
        img = smooth_color_image(rng, h, w)
        # one annotated ellipse "object" per photo, drawn into the photo
        cx, cy = int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 4, 3 * h // 4))
        ax, ay = int(rng.integers(8, w // 5)), int(rng.integers(8, h // 5))
        m = np.zeros((h, w), np.uint8)
        cv2.ellipse(m, (cx, cy), (ax, ay), 0, 0, 360, 1, -1)
        img[m > 0] = rng.integers(0, 256, 3)
        name = f"photo_{i:02d}.png"
        Image.fromarray(img).save(d / name)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        poly = contours[0].reshape(-1).astype(float).tolist()
        images.append({"id": i + 1, "file_name": f"{src}/{name}", "height": h, "width": w})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                            "segmentation": [poly], "area": float(m.sum()),
                            "bbox": [cx - ax, cy - ay, 2 * ax, 2 * ay]})
    (objects / "blobs").mkdir(parents=True, exist_ok=True)
    for i in range(n_objects):
        Image.fromarray(object_sprite(rng, int(rng.integers(32, 64)))).save(
            objects / "blobs" / f"obj_{i:02d}.png")
    (textures / "synthetic").mkdir(parents=True, exist_ok=True)
    for i in range(n_textures):
        Image.fromarray(texture_image(rng, 80, 80)).save(textures / "synthetic" / f"tex_{i:02d}.png")
    out = {"photos": photos, "objects": objects, "textures": textures}
    if coco:
        masks = root / "instances.json"
        masks.write_text(json.dumps({"images": images, "annotations": annotations,
                                     "categories": [{"id": 1, "name": "blob"}]}))
        out["masks"] = masks
    return out
