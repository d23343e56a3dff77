#!/usr/bin/env python3
"""Peak memory of 1024x1024 queries on the official architecture (limit: 3 GB RSS).

Each path runs in a fresh subprocess (the speed.py worker) that builds the model, segments one
1024x1024 query against a 1024x1024 prompt and reports its peak RSS (ru_maxrss), so the
number includes Python, torch, the weights and every activation. The soft-alignment
attention at the /8 level then has 16384 query x 16384 prompt positions: 1 GiB as one float32
matrix, a few hundred MiB in the chunks the model computes it in.

    python benchmarks/memory.py            # JSON report; exit code 1 if a path exceeds the limit
    python benchmarks/memory.py --size 2048 --encoders efficientnet-b4 efficientnet-lite0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (the worker lives there)

LIMIT_MB = 3 * 1000**3 / 2**20  # 3 GB = 2861 MiB


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--encoders", nargs="+", default=["efficientnet-b4"])
    p.add_argument("--paths", nargs="+", default=list(speed.PATHS), choices=speed.PATHS)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--limit-mb", type=float, default=LIMIT_MB)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--omp-wait-policy", default=os.environ.get("OMP_WAIT_POLICY", "passive").lower(),
                   choices=["passive", "active", "inherit"])
    opts = p.parse_args(argv)
    results = []
    start = time.time()
    for encoder in opts.encoders:
        for path in opts.paths:
            r = speed.run_worker(encoder, opts.size, path, opts, iters=1, warmup=0)
            ok = r["rss_peak_mb"] <= opts.limit_mb
            results.append({"encoder": encoder, "size": opts.size, "path": path, "weights": r["weights"],
                            "peak_rss_mb": round(r["rss_peak_mb"], 1),
                            "rss_after_model_mb": round(r["rss_model_mb"], 1),
                            "cold_seconds_one_query": round(r["ms"][path][0] / 1000, 2), "within_limit": ok})
    report = {"limit_mb": round(opts.limit_mb, 1), "threads": opts.threads, "elapsed_s": round(time.time() - start, 1),
              "results": results}
    print(json.dumps(report, indent=2))
    return 0 if all(r["within_limit"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
