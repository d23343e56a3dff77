#!/usr/bin/env python3
"""Write docs/synthesis_<change type>.png preview grids from data/train_images.

Only sources with permissive licenses are used (so the committed previews can be shipped
with an Apache-2.0 project): see PREVIEW_SOURCES and docs/data.md.

Usage: python scripts/make_synthesis_previews.py [--data data/train_images] [--out docs]
       [--rows 4] [--size 192] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from metauas.synthesis import ALL_TYPES, ImageSources, PairGenerator, SynthesisConfig
from metauas.synthesis.commands import atomic_write_bytes, preview_grid

# public domain / CC0 / Apache / BSD / MIT sources only
PREVIEW_SOURCES = ("skimage-data", "sway-backgrounds", "sklearn-images", "matplotlib-sample-data",
                   "openclipart", "noto-emoji", "arcade-sprites")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("data/train_images"))
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import cv2
    from PIL import Image
    import io

    cv2.setNumThreads(1)
    full = ImageSources.from_dirs(args.data / "photos", objects=args.data / "objects")
    sources = full.subset(PREVIEW_SOURCES)
    print("preview sources:", {k: v for k, v in sources.sources().items() if v})
    gen = PairGenerator(sources, SynthesisConfig(size=args.size))
    for k, ctype in enumerate(ALL_TYPES):
        pairs = [gen.generate(np.random.default_rng([args.seed, k, i]), change_type=ctype)
                 for i in range(args.rows)]
        grid = preview_grid(pairs)
        buf = io.BytesIO()
        Image.fromarray(grid).save(buf, format="PNG", optimize=True)
        path = args.out / f"synthesis_{ctype}.png"
        atomic_write_bytes(path, buf.getvalue())
        print(f"{path}  {len(buf.getvalue()) / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
