#!/usr/bin/env python3
"""Peak memory of ``metauas segment --size S`` on N queries with default options (issue 13).

Writes N different S x S queries (the bundled example query, resized to S and shifted by a few
pixels each) and runs the CLI in a child process; the peak RSS is the child's ``ru_maxrss``
(``resource.getrusage(RUSAGE_CHILDREN)`` after it exits; only that child has run).

    python benchmarks/cli_memory.py                 # --size 1024, 8 queries
    python benchmarks/cli_memory.py --size 512 --queries 8 --extra --batch-size 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "src" / "metauas" / "examples"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `metauas segment` options")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (default: print only)")
    opts = p.parse_args(argv)
    from PIL import Image

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        qdir = Path(tmp) / "q"
        qdir.mkdir()
        base = Image.open(EXAMPLES / "query.png").convert("RGB").resize((opts.size + 32, opts.size + 32),
                                                                        Image.BICUBIC)
        for i in range(opts.queries):
            base.crop((i * 3, i * 2, i * 3 + opts.size, i * 2 + opts.size)).save(qdir / f"q{i}.png")
        prompt = Path(tmp) / "prompt.png"
        base.crop((16, 16, 16 + opts.size, 16 + opts.size)).save(prompt)
        cmd = [sys.executable, "-m", "metauas.cli", "segment", "--prompt", str(prompt), "--query", str(qdir),
               "--out", str(Path(tmp) / "out"), "--size", str(opts.size), "--quiet", *opts.extra]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            return 1
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    report = {"command": "metauas segment --size {} ({} queries) {}".format(opts.size, opts.queries,
                                                                          " ".join(opts.extra)).strip(),
              "peak_rss_gib": round(peak / 1024**3, 3), "wall_s": round(wall, 1),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    print(json.dumps(report))
    if opts.out:
        from metauas.atomic import atomic_write_text  # here: importing metauas sets OMP_WAIT_POLICY

        atomic_write_text(opts.out, json.dumps(report, indent=2) + "\n")  # creates the folder
    return 0


if __name__ == "__main__":
    sys.exit(main())
