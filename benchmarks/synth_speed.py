"""Pair-generation speed on ONE core at 256x256 (issue target: >= 20 pairs/s local-region
changes, >= 5 pairs/s object changes with inpainting).

    python benchmarks/synth_speed.py                       # data/train_images if present
    python benchmarks/synth_speed.py --synthetic            # generated images (no data needed)
    python benchmarks/synth_speed.py --images DIR [--objects DIR] [--textures DIR] [--masks J]

Every object removal is done by inpainting here (sprite_inpaint_prob=1), so the object
numbers include the OpenCV Telea inpainting cost. Image decoding is included (real files).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from metauas.synthesis import ALL_TYPES, ImageSources, PairGenerator, SynthesisConfig  # noqa: E402
from metauas.synthesis.fixtures import make_tiny_image_tree  # noqa: E402

TARGETS = {"local": 20.0, "object (inpainting)": 5.0}


def bench(gen: PairGenerator, ctype: str | None, n: int, seed0: int) -> float:
    gen.generate(seed0 - 1, change_type=ctype)  # warm-up (imports, caches)
    t0 = time.perf_counter()
    for i in range(n):
        gen.generate(np.random.default_rng([seed0, i]), change_type=ctype)
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=Path)
    ap.add_argument("--objects", type=Path)
    ap.add_argument("--textures", type=Path)
    ap.add_argument("--masks", type=Path)
    ap.add_argument("--synthetic", action="store_true", help="use generated 480x640 images")
    ap.add_argument("-n", type=int, default=60, help="pairs per change type")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--json", type=Path, help="also write results here")
    args = ap.parse_args(argv)

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cv2.setNumThreads(1)

    tmp = None
    data = Path("data/train_images")
    if args.images:
        sources = ImageSources.from_dirs(args.images, objects=args.objects, textures=args.textures,
                                         masks=args.masks)
        label = str(args.images)
    elif not args.synthetic and (data / "photos").is_dir():
        sources = ImageSources.from_dirs(
            data / "photos", objects=data / "objects" if (data / "objects").is_dir() else None,
            textures=data / "textures" if (data / "textures").is_dir() else None)
        label = str(data)
    else:
        tmp = tempfile.TemporaryDirectory()
        tree = make_tiny_image_tree(tmp.name, n_photos=24, n_objects=24, n_textures=12,
                                    photo_size=(480, 640), seed=0)
        sources = ImageSources.from_dirs(tree["photos"], objects=tree["objects"],
                                         textures=tree["textures"])
        label = "generated 480x640 images"
    cfg = SynthesisConfig(size=args.size, sprite_inpaint_prob=1.0)
    gen = PairGenerator(sources, cfg)
    print(f"images: {label}  ({ {k: sum(v.values()) for k, v in sources.sources().items()} })")
    print(f"size {args.size}, one core, {args.n} pairs per type")
    results: dict[str, float] = {}
    for k, ctype in enumerate(ALL_TYPES):
        if ctype not in gen.available_types and ctype != "none":
            continue
        results[ctype] = bench(gen, ctype, args.n, 1000 + k)
        print(f"  {ctype:18s} {results[ctype]:7.1f} pairs/s")
    local = [results[t] for t in ("local_texture", "local_patch", "local_color") if t in results]
    obj = [results[t] for t in ("object_disappear", "object_appear", "object_exchange") if t in results]
    mixed = bench(gen, None, args.n, 5000)
    summary = {"local": len(local) / sum(1 / v for v in local) if local else None,
               "object (inpainting)": len(obj) / sum(1 / v for v in obj) if obj else None,
               "default mix": mixed}
    print("summary (harmonic means = throughput of an even mix):")
    ok = True
    for name, val in summary.items():
        if val is None:
            continue
        target = TARGETS.get(name)
        flag = "" if target is None else (" OK" if val >= target else f" BELOW target {target}")
        ok &= target is None or val >= target
        print(f"  {name:20s} {val:7.1f} pairs/s{flag}")
    if args.json:
        args.json.write_text(json.dumps({"images": label, "size": args.size, "per_type": results,
                                         "summary": summary}, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
