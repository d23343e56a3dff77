"""Time `metauas.metrics.evaluate` on a category-sized synthetic problem.

Default: 2,000 float32 maps of 256x256 (131 M pixels, a large benchmark category at the
paper's resolution), ~30% of images anomalous with a few blob-shaped regions each, and
scores quantised to float32 with ties (as real sigmoid outputs).  Prints seconds per protocol.

    python benchmarks/metrics_speed.py [--n 2000] [--size 256] [--json]
    python benchmarks/metrics_speed.py --n 200 --check-sklearn   # also compare with sklearn
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from metauas.metrics import evaluate


def make_problem(n: int, size: int, seed: int = 0, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in np.flatnonzero(rng.random(n) < 0.3):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            r = rng.integers(size // 40 + 1, size // 8 + 2)
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    maps = rng.random((n, size, size), dtype=np.float32)
    maps *= 0.6
    maps += masks * rng.random((n, size, size), dtype=np.float32) * 0.6
    if ties:
        maps = np.round(maps, 4).astype(np.float32)  # ties, as saturated/quantised outputs
    return masks, maps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-ties", action="store_true", help="continuous scores (almost all distinct)")
    ap.add_argument("--check-sklearn", action="store_true", help="compare P-AUROC/P-AP with sklearn")
    args = ap.parse_args()
    t = time.perf_counter()
    masks, maps = make_problem(args.n, args.size, ties=not args.no_ties)
    gen = time.perf_counter() - t
    out: dict = {
        "n_maps": args.n,
        "size": args.size,
        "pixels": int(masks.size),
        "anomalous_pixels": int(masks.sum()),
        "machine": f"{platform.processor() or platform.machine()}",
        "generate_s": round(gen, 2),
        "ties": not args.no_ties,
    }
    for protocol in ("exact", "metauas"):
        t = time.perf_counter()
        res = evaluate(list(masks), list(maps), protocol=protocol)
        out[f"{protocol}_s"] = round(time.perf_counter() - t, 2)
        out[f"{protocol}_metrics"] = {k: round(v, 6) for k, v in res.items()}
    if args.check_sklearn:
        from sklearn.metrics import average_precision_score, roc_auc_score

        t = time.perf_counter()
        y, s = masks.ravel(), maps.ravel()
        out["sklearn_P-AUROC"] = roc_auc_score(y, s)
        out["sklearn_P-AP"] = average_precision_score(y, s)
        out["sklearn_s"] = round(time.perf_counter() - t, 2)
        out["max_abs_diff"] = max(
            abs(out["sklearn_P-AUROC"] - out["exact_metrics"]["P-AUROC"]),
            abs(out["sklearn_P-AP"] - out["exact_metrics"]["P-AP"]),
        )
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
