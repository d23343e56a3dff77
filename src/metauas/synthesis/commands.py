"""`metauas synth`: write synthetic change pairs and a preview grid to disk.

Output layout (files written atomically: temp file + os.replace):
    OUT/pairs/00000/{prompt,query,mask}.png   mask: 0 / 255 greyscale
    OUT/pairs.csv                             id,change_type,background,background_source
    OUT/preview.png                           rows of prompt | query | mask overlay
    OUT/config.json                           the SynthesisConfig used
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from metauas.atomic import atomic_write_bytes
from metauas.errors import InputError

PREVIEW_ROWS = 8


# ------------------------------------------------------------------------------ writing
def png_bytes(arr: np.ndarray) -> bytes:
    """PNG file bytes of a uint8 array, (H, W) grey or (H, W, 3) RGB."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def overlay(query: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Query with the change mask tinted red and outlined (for human inspection)."""
    import cv2

    out = query.astype(np.float32)
    m = mask > 0
    out[m] = 0.5 * out[m] + 0.5 * np.array([255.0, 0.0, 0.0])
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (255, 255, 0), 1)
    return out


def preview_grid(pairs: Sequence, labels: bool = True, gap: int = 4) -> np.ndarray:
    """Rows of [prompt | query | mask overlay]; the change type is written on the prompt."""
    import cv2

    rows = []
    for p in pairs:
        prompt = p.prompt.copy()
        if labels:
            cv2.putText(prompt, p.change_type, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                        (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(prompt, p.change_type, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                        (255, 255, 255), 1, cv2.LINE_AA)
        h = prompt.shape[0]
        sep = np.full((h, gap, 3), 255, np.uint8)
        rows.append(np.hstack([prompt, sep, p.query, sep, overlay(p.query, p.mask)]))
        rows.append(np.full((gap, rows[-1].shape[1], 3), 255, np.uint8))
    return np.vstack(rows[:-1]) if rows else np.zeros((1, 1, 3), np.uint8)


# ------------------------------------------------------------------------------ command
def _float_pair(text: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected two numbers 'LO,HI', got {text!r}") from exc
    return a, b


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `synth` subcommand to the `metauas` parser."""
    p = subparsers.add_parser(
        "synth",
        help="write synthetic change pairs (prompt, query, mask) and a preview grid",
        description="Synthesise MetaUAS training pairs from real images: object disappearance/"
                    "appearance/exchange (objects folder or COCO masks), local-region changes and "
                    "inspection defects (cracks, pits, stains, missing material, frame failures).",
    )
    p.add_argument("--images", required=True, type=Path, help="folder of photos (backgrounds)")
    p.add_argument("--masks", type=Path, help="COCO instances JSON for the photos (optional)")
    p.add_argument("--objects", type=Path, help="folder of RGBA cut-outs (PNG with alpha)")
    p.add_argument("--textures", type=Path, help="folder of texture images (anomaly sources)")
    p.add_argument("-n", "--num", type=int, required=True, help="number of pairs")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--types", default=None,
                   help="comma-separated change types to draw from (default: all available): "
                        "local_texture,local_patch,local_color,object_disappear,object_appear,"
                        "object_exchange,defect_crack,defect_pit,defect_stain,defect_missing,"
                        "global_change; opt-in: defect_finish")
    p.add_argument("--no-change-rate", type=float, default=None)
    p.add_argument("--max-rotation", type=float, default=None, help="degrees (default 30)")
    p.add_argument("--max-translation", type=float, default=None, help="fraction (default 0.05)")
    p.add_argument("--scale-range", type=_float_pair, default=None, help="LO,HI (default 0.95,1.05)")
    p.add_argument("--misalign-prob", type=float, default=None)
    p.add_argument("--photometric-jitter", type=float, default=None)
    p.add_argument("--inpainter", default=None, help="telea (default), ns or module:factory")
    p.add_argument("--preview-rows", type=int, default=PREVIEW_ROWS)
    p.add_argument("--workers", type=int, default=1, help="processes (pairs stay identical)")
    p.set_defaults(func=run_synth)


def _config_from_args(args: argparse.Namespace):
    from metauas.synthesis.generator import CHANGE_TYPES, SynthesisConfig

    cfg = SynthesisConfig(size=args.size)
    if args.types:
        wanted = [t.strip() for t in args.types.split(",") if t.strip()]
        bad = [t for t in wanted if t not in CHANGE_TYPES]
        if bad:
            raise InputError(f"unknown change type(s) {bad}; known: {', '.join(CHANGE_TYPES)}")
        cfg.change_weights = {t: (1.0 if t in wanted else 0.0) for t in CHANGE_TYPES}
    for opt, name in (("no_change_rate", "no_change_rate"), ("max_rotation", "max_rotation"),
                      ("max_translation", "max_translation"), ("scale_range", "scale_range"),
                      ("misalign_prob", "misalign_prob"),
                      ("photometric_jitter", "photometric_jitter"), ("inpainter", "inpainter")):
        val = getattr(args, opt)
        if val is not None:
            setattr(cfg, name, val)
    return cfg.validate()


_WORKER_GEN = None


def _init_worker(gen) -> None:  # pragma: no cover - runs in child processes
    global _WORKER_GEN
    import cv2

    cv2.setNumThreads(1)
    _WORKER_GEN = gen


def _make_one(args: tuple[int, int]):  # pragma: no cover - runs in child processes
    seed, i = args
    return _WORKER_GEN.generate(np.random.default_rng([seed, i]))


def run_synth(args: argparse.Namespace) -> int:
    """`metauas synth`: write N synthetic (prompt, query, mask) pairs, pairs.csv, config.json and
    a preview grid to ``--out``; returns exit status 0.

    Raises:
        InputError: -n or --workers not positive, ``--out`` not a folder (and the errors of
            the image sources and the synthesis config).
    """
    from metauas.synthesis.generator import PairGenerator
    from metauas.synthesis.io import ImageSources

    if args.num <= 0:
        raise InputError(f"-n must be positive, got {args.num}")
    if args.workers <= 0:
        raise InputError(f"--workers must be positive, got {args.workers}")
    cfg = _config_from_args(args)
    sources = ImageSources.from_dirs(args.images, objects=args.objects, textures=args.textures,
                                     masks=args.masks)
    gen = PairGenerator(sources, cfg)
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise InputError(f"--out is not a folder: {out}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "config.json", json.dumps(cfg.to_dict(), indent=2).encode())

    import cv2

    cv2.setNumThreads(1)
    jobs = [(args.seed, i) for i in range(args.num)]
    if args.workers > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn" if sys.platform == "darwin" else "fork").Pool(
            args.workers, initializer=_init_worker, initargs=(gen,))
        results = pool.imap(_make_one, jobs, chunksize=4)
    else:
        pool = None
        results = (gen.generate(np.random.default_rng([s, i])) for s, i in jobs)

    width = max(5, len(str(args.num - 1)))
    rows, preview = [], []
    counts: dict[str, int] = {}
    try:
        for i, pair in enumerate(results):
            d = out / "pairs" / f"{i:0{width}d}"
            atomic_write_bytes(d / "prompt.png", png_bytes(pair.prompt))
            atomic_write_bytes(d / "query.png", png_bytes(pair.query))
            atomic_write_bytes(d / "mask.png", png_bytes(pair.mask * 255))
            rows.append([f"{i:0{width}d}", pair.change_type, pair.meta.get("background", ""),
                         pair.meta.get("background_source", "")])
            counts[pair.change_type] = counts.get(pair.change_type, 0) + 1
            if len(preview) < args.preview_rows:
                preview.append(pair)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "change_type", "background", "background_source"])
    w.writerows(rows)
    atomic_write_bytes(out / "pairs.csv", buf.getvalue().encode())
    if preview:
        atomic_write_bytes(out / "preview.png", png_bytes(preview_grid(preview)))
    summary = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    print(f"wrote {len(rows)} pairs to {out / 'pairs'} ({summary}); preview: {out / 'preview.png'}")
    return 0
