"""Per-query cost of the default pipeline against another model, measured in the same run.

    python benchmarks/pipeline_speed.py --baseline runs/default/stage5/last.safetensors \
        [--model metauas-lite0-256] [--size 256] [--iters 40] [--threads 2] [--json]

Both run through `metauas.inference.Segmenter` (what `metauas segment` runs: prompt encoded once,
inference-optimised model copy), on the same random query images, alternating query by query
(A, B, A, B, ...) so that load from other processes hits both alike. Reported: the median ms
per query of each and the ratio of the medians, and the median of the per-pair ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from metauas.inference import Segmenter  # noqa: E402
from metauas.models import DEFAULT_MODEL, load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--baseline", required=True, help="model name or weights file to compare with")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.rand(1, 3, args.size, args.size, generator=gen)
    queries = torch.rand(args.iters + args.warmup, 1, 3, args.size, args.size, generator=gen)
    segs = {}
    for key, name in (("model", args.model), ("baseline", args.baseline)):
        seg = Segmenter(load_model(name), size=args.size)
        seg.set_prompt_tensor(prompt)
        segs[key] = seg
    times: dict[str, list[float]] = {"model": [], "baseline": []}
    for i, q in enumerate(queries):
        for key, seg in segs.items():
            t = time.perf_counter()
            seg.predict_tensor(q)
            if i >= args.warmup:
                times[key].append(1000 * (time.perf_counter() - t))
    med = {k: float(np.median(v)) for k, v in times.items()}
    pair = np.array(times["model"]) / np.array(times["baseline"])
    out = {"model": args.model, "baseline": args.baseline, "size": args.size, "threads": args.threads,
           "iters": args.iters, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "ms_per_query": {k: round(v, 1) for k, v in med.items()},
           "ratio_of_medians": round(med["model"] / med["baseline"], 3),
           "median_pair_ratio": round(float(np.median(pair)), 3)}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{args.model}: {med['model']:.1f} ms/query, {args.baseline}: {med['baseline']:.1f} ms/query "
              f"at {args.size} px, {args.threads} threads -> ratio {out['ratio_of_medians']:.2f} "
              f"(median of per-query ratios {out['median_pair_ratio']:.2f})")


if __name__ == "__main__":
    main()
