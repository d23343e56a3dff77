"""Generate a small MVTec-format data set from any images (or procedural textures).

Why: tests, demos and smoke runs of `metauas eval` need a benchmark-shaped tree with known
ground truth, and the real benchmarks cannot be shipped.  Each category is one source image;
normal images are mildly jittered copies of it (shift, brightness, noise), anomalous ones add a
synthetic defect whose mask is written alongside:

* ``patch``   a region replaced by a rotated patch from elsewhere in the image,
* ``scratch`` a thick random polyline in a contrasting colour,
* ``stain``   an irregular blob blended with a random colour.

The numbers this tree produces say nothing about real-benchmark accuracy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from metauas.atomic import atomic_write_text as _atomic_text
from metauas.data.samples import BenchmarkData
from metauas.errors import InputError
from metauas.io.images import load_image

__all__ = ["MakeDatasetConfig", "make_mvtec_dataset", "procedural_texture", "write_metauas_meta"]

DEFECT_TYPES = ("patch", "scratch", "stain")


@dataclass
class MakeDatasetConfig:
    """What to generate.  ``images`` empty = procedural textures."""

    out: Path
    images: list[Path] = field(default_factory=list)
    categories: int = 2
    n_train: int = 8
    n_test_good: int = 4
    n_test_anomalous: int = 6
    size: int = 128
    seed: int = 0
    defects: tuple[str, ...] = DEFECT_TYPES
    overwrite: bool = False


def procedural_texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth colourful texture (sum of oriented sinusoids + blurred noise), uint8 RGB."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.zeros((size, size, 3), np.float32)
    for c in range(3):
        for _ in range(3):
            f = rng.uniform(1, 5)
            th = rng.uniform(0, np.pi)
            ph = rng.uniform(0, 2 * np.pi)
            img[..., c] += np.sin(2 * np.pi * f * (xx * np.cos(th) + yy * np.sin(th)) + ph)
    noise = cv2.GaussianBlur(rng.standard_normal((size, size, 3)).astype(np.float32), (0, 0), size / 16)
    img = img / 6 + noise * 2
    img = (img - img.min()) / (img.max() - img.min() + 1e-6)
    base = rng.uniform(0.2, 0.8, 3).astype(np.float32)
    img = 0.5 * img + 0.5 * base
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def _read_rgb(path: Path, size: int) -> np.ndarray:
    """Centre square of an image (the one reader of `metauas.io`), resized to size x size RGB."""
    rgb = load_image(path)
    h, w = rgb.shape[:2]
    s = min(h, w)
    crop = rgb[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def _jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible 'other normal sample': small shift, brightness change and sensor noise."""
    size = img.shape[0]
    dx, dy = rng.integers(-(size // 64) - 1, size // 64 + 2, 2)
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    out = cv2.warpAffine(img, m, (size, size), borderMode=cv2.BORDER_REFLECT)
    out = out.astype(np.float32) * rng.uniform(0.95, 1.05) + rng.normal(0, 2.0, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def _blob_mask(size: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cx, cy = rng.integers(size // 5, size - size // 5, 2)
    for _ in range(rng.integers(2, 5)):
        ax = int(max(2, rng.uniform(0.3, 1.0) * scale * size))
        ay = int(max(2, rng.uniform(0.3, 1.0) * scale * size))
        ox, oy = rng.integers(-ax // 2 - 1, ax // 2 + 2, 2)
        cv2.ellipse(mask, (int(cx + ox), int(cy + oy)), (ax, ay), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask.astype(bool)


def _add_defect(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    out = img.copy()
    if kind == "scratch":
        mask = np.zeros((size, size), np.uint8)
        pts = [rng.integers(size // 8, size - size // 8, 2)]
        for _ in range(rng.integers(2, 4)):
            pts.append(np.clip(pts[-1] + rng.integers(-size // 4, size // 4 + 1, 2), 0, size - 1))
        cv2.polylines(mask, [np.array(pts, np.int32)], False, 1, max(2, size // 40))
        mask = mask.astype(bool)
        colour = 255 - np.median(img[mask], axis=0) if mask.any() else np.array([255, 255, 255])
        out[mask] = colour.astype(np.uint8)
    elif kind == "stain":
        mask = _blob_mask(size, rng, 0.08)
        colour = rng.integers(0, 256, 3).astype(np.float32)
        out[mask] = (0.25 * out[mask] + 0.75 * colour).astype(np.uint8)
    elif kind == "patch":
        mask = _blob_mask(size, rng, 0.1)
        src = cv2.rotate(np.roll(img, (size // 2, size // 3), axis=(0, 1)), cv2.ROTATE_90_CLOCKWISE)
        src = 255 - src[..., rng.permutation(3)]  # foreign, clearly different material
        out[mask] = src[mask]
    else:
        raise InputError(f"unknown defect type {kind!r}; choose from {', '.join(DEFECT_TYPES)}")
    if not mask.any():  # cannot happen with the sizes above, but never write an empty defect mask
        mask[size // 2, size // 2] = True
        out[size // 2, size // 2] = 255 - out[size // 2, size // 2]
    return out, mask


def _write_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    path.write_bytes(buf.tobytes())


def make_mvtec_dataset(cfg: MakeDatasetConfig) -> Path:
    """Write the tree to ``cfg.out`` (categories ``cat0``, ``cat1``, ... or image stems).

    Raises:
        InputError: the output folder is not empty (without overwrite), a size below 32 or a
            zero count, or an unknown defect type.
    """
    out = Path(cfg.out).expanduser()
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise InputError(f"{out} exists and is not empty (use --overwrite)")
    if cfg.size < 32 or cfg.categories < 1 or cfg.n_train < 1 or cfg.n_test_good < 1 or cfg.n_test_anomalous < 1:
        raise InputError("need size >= 32 and at least one category, train, good and anomalous image")
    for d in cfg.defects:
        if d not in DEFECT_TYPES:
            raise InputError(f"unknown defect type {d!r}; choose from {', '.join(DEFECT_TYPES)}")
    rng = np.random.default_rng(cfg.seed)
    sources = [Path(p) for p in cfg.images]
    names: list[str] = []
    for c in range(cfg.categories):
        if sources:
            src = sources[c % len(sources)]
            base = _read_rgb(src, cfg.size)
            name = src.stem if cfg.categories <= len(sources) else f"{src.stem}{c}"
            name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or f"cat{c}"
            while name in names:
                name += "_"
        else:
            base = procedural_texture(cfg.size, rng)
            name = f"cat{c}"
        names.append(name)
        cdir = out / name
        for i in range(cfg.n_train):
            _write_png(cdir / "train" / "good" / f"{i:03d}.png", _jitter(base, rng))
        for i in range(cfg.n_test_good):
            _write_png(cdir / "test" / "good" / f"{i:03d}.png", _jitter(base, rng))
        counters: dict[str, int] = {}
        for i in range(cfg.n_test_anomalous):
            kind = cfg.defects[i % len(cfg.defects)]
            img, mask = _add_defect(_jitter(base, rng), kind, rng)
            j = counters.get(kind, 0)
            counters[kind] = j + 1
            _write_png(cdir / "test" / kind / f"{j:03d}.png", img)
            _write_png(cdir / "ground_truth" / kind / f"{j:03d}_mask.png", mask.astype(np.uint8) * 255)
    return out


def write_metauas_meta(data: BenchmarkData, meta_dir: str | Path, seeds: tuple[int, ...] = (1, 3, 5, 7, 9),
                       top_k: int = 10, drop_masks: bool = False) -> Path:
    """Write official-format meta files for ``data`` (paths relative to ``data.root``).

    ``test-train-top10pair-eb4.json`` is ranked here by distance of 16x16 grey thumbnails (a
    fixture for tests and demos, not the EfficientNet-B4 ranking of the official files).
    ``drop_masks`` omits ``maskname`` so anomalous entries mean "whole image" (format rule).
    """
    meta = Path(meta_dir)
    root = data.root

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    test_lines, train_lines, top_lines = [], [], []
    rng = np.random.default_rng(0)
    prompts: dict[int, dict] = {s: {} for s in seeds}

    def thumb(p: Path) -> np.ndarray:
        g = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        return cv2.resize(g, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()

    for cat in data.categories.values():
        for s in cat.test:
            entry = {"filename": rel(s.path), "label": s.label,
                     "label_name": "good" if s.label == 0 else "defective", "clsname": cat.name,
                     "specie_name": s.defect}
            if s.mask is not None and not drop_masks:
                entry["maskname"] = rel(s.mask)
            test_lines.append(json.dumps(entry))
        for p in cat.train:
            train_lines.append(json.dumps({"filename": rel(p), "label": 0, "label_name": "good",
                                           "clsname": cat.name}))
        for seed in seeds:
            pick = cat.train[int(np.random.default_rng(seed).integers(len(cat.train)))]
            prompts[seed][cat.name] = {"filename": rel(pick), "label": 0, "label_name": "good",
                                       "clsname": cat.name}
        train_thumbs = np.stack([thumb(p) for p in cat.train])
        for s in cat.test:
            d = np.linalg.norm(train_thumbs - thumb(s.path), axis=1) + rng.random(len(cat.train)) * 1e-6
            order = np.argsort(d)[:top_k]
            top_lines.append(json.dumps({rel(s.path): [rel(cat.train[i]) for i in order]}))
    _atomic_text(meta / "test.json", "\n".join(test_lines) + "\n")
    _atomic_text(meta / "train.json", "\n".join(train_lines) + "\n")
    _atomic_text(meta / "test-train-top10pair-eb4.json", "\n".join(top_lines) + "\n")
    for seed, obj in prompts.items():
        _atomic_text(meta / f"oneprompt_seed{seed}.json", json.dumps(obj, indent=4))
    return meta
