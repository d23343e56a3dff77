#!/usr/bin/env python3
"""A small defect in a large image: tiled inference (metauas.tiling) vs the whole image at 256.

The pair: scikit-image's ``gravel`` texture (CC0, 512 x 512 grey, bundled with the package, no
download), coloured and upscaled 4x (bicubic) to SIZE x SIZE. The prompt is the normal surface;
the query is the same surface shifted by (3, -2) px (camera misalignment), 3 % brighter
(illumination), with its own sensor noise (sigma 2 grey levels), and one dark, reddish round
defect of DEFECT px diameter (soft edge). The defect mask is the disc.

Modes (each runs in its own subprocess, so ``ru_maxrss`` is the peak of that mode alone,
including Python, torch, the weights and the two uint8 images, which the parent makes and
passes in an .npz file):

* ``untiled``: ``Segmenter(default model).segment`` as a user gets today: query and prompt are
  resized to 256, the map is resized back.
* ``tiled``: ``tiled_anomaly_map(query, prompt, model_predictor(model))`` with the defaults
  (tile 256, overlap 25 %, prompt margin 32 px at native scale, batch from `auto_batch_size`).
* ``tiled-center`` / ``tiled-resize``: the other prompt modes, for the design comparison.

Reported per mode: whether the defect holds the map's maximum (the maximum over the defect's
pixels equals the maximum over the image), P-AUROC on this image (all pixels, the disc
positive), the image score (`metauas.scoring.image_score`), peak RSS and wall time of the map
(model load excluded, listed separately).

``--fit-memory`` instead measures the peak RSS of `Segmenter.predict_tensor` on batches of
B queries of s x s px (default model, cached prompt) and fits the linear model that
`metauas.tiling.auto_batch_size` uses.

    python benchmarks/highres.py                       # 2048 px, writes benchmarks/results/highres.json
    python benchmarks/highres.py --size 768 --defect 6 --modes tiled untiled
    python benchmarks/highres.py --fit-memory          # adds the memory fit to the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from metauas.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "highres.json"
MODES = ("tiled", "untiled", "tiled-center", "tiled-resize")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def make_pair(size: int = 2048, defect: int = 12, seed: int = 0, shift: tuple[int, int] = (3, -2),
              texture: str = "gravel") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query, prompt, mask): (size, size, 3) uint8 RGB images and the (size, size) bool defect mask.

    ``shift`` (dy, dx) in px moves the query's view against the prompt's (|d| <= 32);
    ``texture`` names a scikit-image sample (gravel, brick, grass).
    """
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    grey = getattr(data, texture)().astype(np.float32)
    rgb = np.stack([grey * 0.85 + 25, grey * 0.75 + 30, grey * 0.6 + 35], -1).clip(0, 255).astype(np.uint8)
    pad = 32
    big = np.asarray(Image.fromarray(rgb).resize((size + 2 * pad, size + 2 * pad), Image.BICUBIC)).astype(np.float32)
    prompt = big[pad:pad + size, pad:pad + size]
    dy, dx = shift  # the query's view is shifted
    query = big[pad + dy:pad + dy + size, pad + dx:pad + dx + size] * 1.03
    query = query + rng.normal(0.0, 2.0, query.shape)
    prompt = prompt + rng.normal(0.0, 2.0, prompt.shape)
    # one round defect, soft edge, in the lower-right quadrant (off any tile grid line)
    cy, cx = int(size * 0.62) + 7, int(size * 0.71) + 5
    yy, xx = np.ogrid[:size, :size]
    r = np.hypot(yy - cy, xx - cx)
    radius = defect / 2.0
    alpha = np.clip(radius + 0.5 - r, 0.0, 1.0)[..., None]  # 1 inside, linear 1-px edge
    stain = np.array([95.0, 45.0, 35.0])
    query = query * (1 - 0.8 * alpha) + stain * 0.8 * alpha
    mask = r <= radius
    return (np.clip(query, 0, 255).round().astype(np.uint8), np.clip(prompt, 0, 255).round().astype(np.uint8),
            mask)


def evaluate_map(anomaly_map: np.ndarray, mask: np.ndarray) -> dict:
    from metauas.metrics.ranking import binary_metrics
    from metauas.scoring import image_score

    peak = float(anomaly_map.max())
    inside = float(anomaly_map[mask].max())
    y, x = np.unravel_index(int(anomaly_map.argmax()), anomaly_map.shape)
    cy, cx = np.argwhere(mask).mean(axis=0)
    radius = np.sqrt(mask.sum() / np.pi)
    yy, xx = np.ogrid[:mask.shape[0], :mask.shape[1]]
    far = np.hypot(yy - cy, xx - cx) > radius + 8  # normal pixels at least 8 px from the defect
    normal_max = float(anomaly_map[far].max())
    return {"defect_holds_max": bool(inside >= peak), "map_max": round(peak, 4), "defect_max": round(inside, 4),
            "normal_max_8px_away": round(normal_max, 4),
            "defect_to_normal_ratio": round(inside / max(normal_max, 1e-12), 3),
            "argmax_distance_px": round(float(np.hypot(y - cy, x - cx)), 1),
            "p_auroc": round(binary_metrics(mask, anomaly_map)["AUROC"], 4),
            "image_score": round(image_score(anomaly_map), 4)}


def worker(mode: str, pair: Path, threads: int, batch: int | None) -> dict:
    import torch

    torch.set_num_threads(threads)
    with np.load(pair) as arrays:  # made by the parent, so this process's peak is the method's
        query, prompt, mask = arrays["query"], arrays["prompt"], arrays["mask"]
    size = query.shape[0]
    from metauas.models import load_model

    t0 = time.perf_counter()
    model = load_model()
    load_s = time.perf_counter() - t0
    rss_model = peak_rss_bytes()
    t0 = time.perf_counter()
    if mode == "untiled":
        from metauas.inference.segmenter import Segmenter

        seg = Segmenter(model)
        seg.set_prompt(prompt)
        anomaly_map = seg.segment_one(query).anomaly_map
        extra: dict = {}
    else:
        from metauas.tiling import model_predictor, plan_tiles, tiled_anomaly_map

        prompt_mode = {"tiled": "native", "tiled-center": "center", "tiled-resize": "resize"}[mode]
        anomaly_map = tiled_anomaly_map(query, prompt, model_predictor(model), prompt_mode=prompt_mode,
                                        batch_size=batch)
        extra = {"prompt_mode": prompt_mode, "tiles": len(plan_tiles(size, size, 256))}
    seconds = time.perf_counter() - t0
    return {"mode": mode, **extra, **evaluate_map(anomaly_map, mask), "seconds": round(seconds, 2),
            "model_load_seconds": round(load_s, 2), "peak_rss_gib": round(peak_rss_bytes() / 1024**3, 3),
            "rss_after_model_load_gib": round(rss_model / 1024**3, 3)}


def memory_worker(side: int, batch: int, threads: int) -> dict:
    """Peak RSS of Segmenter.predict_tensor on `batch` queries of side x side (default model)."""
    import torch

    torch.set_num_threads(threads)
    from metauas.inference.segmenter import Segmenter

    seg = Segmenter(size=side)
    g = torch.Generator().manual_seed(0)
    seg.set_prompt_tensor(torch.rand(1, 3, side, side, generator=g))
    base = peak_rss_bytes()
    t0 = time.perf_counter()
    seg.predict_tensor(torch.rand(batch, 3, side, side, generator=g))
    return {"side": side, "batch": batch, "peak_rss_bytes": peak_rss_bytes(), "rss_before_bytes": base,
            "seconds": round(time.perf_counter() - t0, 2)}


def run_sub(args: list[str], timeout: int = 900) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit_memory(points: list[dict]) -> dict:
    """Least-squares fit peak = base + per_pixel * batch * side^2 over the measured points."""
    x = np.array([p["batch"] * p["side"] ** 2 for p in points], dtype=np.float64)
    y = np.array([p["peak_rss_bytes"] for p in points], dtype=np.float64)
    a = np.stack([np.ones_like(x), x], 1)
    (base, per_pixel), *_ = np.linalg.lstsq(a, y, rcond=None)
    worst = float(np.max(y - (base + per_pixel * x)))
    return {"base_bytes": round(float(base)), "bytes_per_pixel": round(float(per_pixel), 1),
            "worst_underestimate_bytes": round(worst)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--defect", type=int, default=12, help="defect diameter in px")
    p.add_argument("--modes", nargs="+", default=["tiled", "untiled"], choices=MODES)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--shift", type=int, nargs=2, default=[3, -2], metavar=("DY", "DX"),
                   help="query view shift against the prompt in px (default 3 -2)")
    p.add_argument("--texture", default="gravel", choices=["gravel", "brick", "grass"])
    p.add_argument("--batch", type=int, default=None, help="tiles per model call (default: auto)")
    p.add_argument("--fit-memory", action="store_true")
    p.add_argument("--memory-points", default="256x1,256x8,512x1,512x4,768x1,768x2,1024x1,1024x2")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--pair", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.worker:
        print(json.dumps(worker(opts.worker, opts.pair, opts.threads, opts.batch)))
        return 0
    if opts.memory_worker:
        side, batch = (int(v) for v in opts.memory_worker.split("x"))
        print(json.dumps(memory_worker(side, batch, opts.threads)))
        return 0
    report = json.loads(opts.out.read_text()) if opts.out.is_file() else {}
    report["machine"] = {"cpu_count": os.cpu_count(), "threads": opts.threads, "python": platform.python_version(),
                         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                         "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}
    if opts.fit_memory:
        points = [run_sub(["--memory-worker", spec, "--threads", str(opts.threads)])
                  for spec in opts.memory_points.split(",")]
        report["auto_batch_measurement"] = {"points": points, "fit": fit_memory(points)}
        print(json.dumps(report["auto_batch_measurement"], indent=2))
    else:
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            pair = Path(tmp) / "pair.npz"
            query, prompt, mask = make_pair(opts.size, opts.defect, shift=tuple(opts.shift), texture=opts.texture)
            np.savez(pair, query=query, prompt=prompt, mask=mask)
            del query, prompt, mask
            for mode in opts.modes:
                args = ["--worker", mode, "--pair", str(pair), "--threads", str(opts.threads)] + \
                    (["--batch", str(opts.batch)] if opts.batch else [])
                r = run_sub(args)
                print(json.dumps(r))
                results.append(r)
        key = f"size{opts.size}_defect{opts.defect}" + ("" if opts.shift == [3, -2] else
                                                         f"_shift{opts.shift[0]}_{opts.shift[1]}")
        key += "" if opts.texture == "gravel" else f"_{opts.texture}"
        report[key] = {"size": opts.size, "defect_px": opts.defect, "shift_px": opts.shift, "texture": opts.texture,
                       "results": results}
    atomic_write_text(opts.out, json.dumps(report, indent=2) + "\n")  # creates the folder
    return 0


if __name__ == "__main__":
    sys.exit(main())
