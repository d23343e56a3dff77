#!/usr/bin/env python3
"""Images/s of ``metauas segment`` on N queries of S x S px: two source trees side by side (issue 13).

Each *arm* is one command line run as a child process on the same queries: a source tree
(``--before SRC`` for an older checkout, this checkout's ``src`` for "after"), extra
``metauas segment`` options, and whether ``OMP_WAIT_POLICY`` is removed from the child's
environment (what a user who never set it gets). Arms run interleaved, ``--rounds`` times, in
an order rotated each round, so a change in the machine's load hits all arms alike. Time is
the child's wall time, start-up included (what a user waits for); images/s = N / median time.

    python benchmarks/throughput.py --before /tmp/before/src --rounds 3 \\
        --out benchmarks/results/throughput.json

The queries are the bundled example query resized to S + 64 and cropped at N different
offsets (PNG files of realistic size); the prompt is another crop.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from metauas.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "src" / "metauas" / "examples"


def make_inputs(folder: Path, size: int, count: int) -> tuple[Path, Path]:
    """(prompt file, query folder) of ``count`` S x S crops of the bundled example query."""
    from PIL import Image

    base = Image.open(EXAMPLES / "query.png").convert("RGB").resize((size + 64, size + 64), Image.BICUBIC)
    queries = folder / "q"
    queries.mkdir()
    for i in range(count):
        x, y = (i * 7) % 64, (i * 5) % 64
        base.crop((x, y, x + size, y + size)).save(queries / f"q{i:03d}.png")
    prompt = folder / "prompt.png"
    base.crop((32, 32, 32 + size, 32 + size)).save(prompt)
    return prompt, queries


def arms(before: Path | None, batch_sizes: list[int]) -> list[dict]:
    """The command lines compared: name, source tree, extra options, OMP_WAIT_POLICY kept or not."""
    after = REPO / "src"
    out = []
    if before is not None:
        out += [{"name": "before (no OMP_WAIT_POLICY)", "src": before, "extra": [], "passive_env": False},
                {"name": "before (OMP_WAIT_POLICY=PASSIVE)", "src": before, "extra": [], "passive_env": True}]
    out += [{"name": "after (defaults)", "src": after, "extra": [], "passive_env": False},
            {"name": "after --no-overlay", "src": after, "extra": ["--no-overlay"], "passive_env": False}]
    out += [{"name": f"after --batch-size {b}", "src": after, "extra": ["--batch-size", str(b)], "passive_env": False}
            for b in batch_sizes]
    return out


def run_arm(arm: dict, prompt: Path, queries: Path, out: Path) -> float:
    """Wall seconds of one `metauas segment` child process.

    Raises:
        RuntimeError: the command failed.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "PYTHONPATH")}
    env["PYTHONPATH"] = str(arm["src"])
    if arm["passive_env"]:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cmd = [sys.executable, "-m", "metauas.cli", "segment", "--prompt", str(prompt), "--query", str(queries),
           "--out", str(out), "--overwrite", "--quiet", *arm["extra"]]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out.parent)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{arm['name']} failed: {done.stderr[-1500:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", type=Path, default=None, help="src/ folder of the older checkout")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[], help="also run 'after' with these --batch-size")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (default: print only)")
    opts = p.parse_args(argv)
    chosen = arms(opts.before, opts.batch_sizes)
    times: dict[str, list[float]] = {a["name"]: [] for a in chosen}
    load_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        prompt, queries = make_inputs(Path(tmp), opts.size, opts.queries)
        for r in range(opts.rounds):
            order = chosen[r % len(chosen):] + chosen[:r % len(chosen)]
            for arm in order:
                seconds = run_arm(arm, prompt, queries, Path(tmp) / "out")
                times[arm["name"]].append(round(seconds, 2))
                print(f"round {r + 1}: {arm['name']}: {seconds:.1f} s", file=sys.stderr, flush=True)
    rate = {name: opts.queries / statistics.median(t) for name, t in times.items()}
    report = {"queries": opts.queries, "size": opts.size, "rounds": opts.rounds, "cpu_count": os.cpu_count(),
              "load_average_start": load_start, "seconds": times,
              "images_per_s": {k: round(v, 2) for k, v in rate.items()}}
    if opts.before is not None:
        base = rate["before (no OMP_WAIT_POLICY)"]
        passive = rate["before (OMP_WAIT_POLICY=PASSIVE)"]
        report["ratio_vs_before_default"] = {k: round(v / base, 2) for k, v in rate.items()}
        report["ratio_vs_before_passive"] = {k: round(v / passive, 2) for k, v in rate.items()}
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))
    if opts.out:
        atomic_write_text(opts.out, json.dumps(report, indent=2) + "\n")  # creates the folder
    return 0


if __name__ == "__main__":
    sys.exit(main())
