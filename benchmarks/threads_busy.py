#!/usr/bin/env python3
"""Thread defaults on a busy machine: metauas's default (passive OpenMP waiting) vs the old behaviour.

The benchmark starts its own background load (one Python busy loop, one core), then runs, in
interleaved rounds (the arms' order alternates each round, so drifting load hits all alike):

(a) ``steady``: a fresh process builds ``Segmenter()`` (default model, torch's default thread
    count), sets the bundled example prompt, runs 2 warm-up queries and times STEADY queries
    (``segment_one`` of the bundled 512 x 512 example query); reported: median ms per query and
    the Segmenter set-up time.
(b) ``cli``: ``metauas segment`` on N small queries (256 x 256 crops of the example query) with
    default options, timed as a whole process (wall and CPU seconds, start-up included).

Arms (OMP_WAIT_POLICY is removed from the environment of every arm except ``active``):

* ``default``: the code as shipped: importing metauas sets ``OMP_WAIT_POLICY=PASSIVE`` before
  torch loads.
* ``before``: the old behaviour, emulated with the same code: the process imports torch
  *before* metauas, so the OpenMP runtime (libgomp, which reads its environment once when it is
  loaded) starts with no wait policy, as it did before metauas set one. Each worker records
  `metauas.threads.wait_policy_status()`, which shows ``effective: false`` for this arm.
* ``active``: a user who sets ``OMP_WAIT_POLICY=ACTIVE`` explicitly (honoured): steady only.

Ratios are before/default (and active/default) of per-round medians; > 1 means the default is
faster. Results go to benchmarks/results/threads_busy.json.

    python benchmarks/threads_busy.py                 # ~5 minutes on a loaded 2-core machine
    python benchmarks/threads_busy.py --rounds 1 --steady 5 --cli-queries 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "threads_busy.json"
EXAMPLES = REPO / "src" / "metauas" / "examples"

# Run before anything else in a worker: the arm decides whether torch loads before metauas.
PRELUDE = {
    "default": "import metauas\n",
    "before": "import torch\nimport metauas\n",
    "active": "import metauas\n",
}

STEADY = """
import json, sys, time, statistics
from metauas.threads import wait_policy_status
from metauas.inference.images import load_image
t0 = time.perf_counter()
from metauas.inference.segmenter import Segmenter
from metauas.atomic import atomic_write_text
seg = Segmenter()
setup_ms = (time.perf_counter() - t0) * 1000
seg.set_prompt(load_image(sys.argv[1]))
query = load_image(sys.argv[2])
for _ in range(2):
    seg.segment_one(query)
times = []
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter()
    seg.segment_one(query)
    times.append((time.perf_counter() - t0) * 1000)
print(json.dumps({"median_ms": statistics.median(times), "setup_ms": setup_ms, "status": wait_policy_status()}))
"""

CLI = "import sys\nfrom metauas.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def start_load() -> subprocess.Popen:
    """One busy core: a Python loop in its own process (ended by the caller)."""
    return subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"])


def env_for(arm: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    if arm == "active":
        env["OMP_WAIT_POLICY"] = "ACTIVE"
    return env


def timed_child(cmd: list[str], env: dict[str, str],
                timeout: int = 600) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run a child; return it, its wall seconds and its CPU seconds (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return out, wall, cpu


def make_queries(folder: Path, count: int) -> None:
    """``count`` different 256 x 256 crops of the bundled example query."""
    from PIL import Image

    image = Image.open(EXAMPLES / "query.png").convert("RGB")
    for i in range(count):
        x, y = (37 * i) % 256, (53 * i) % 256
        image.crop((x, y, x + 256, y + 256)).save(folder / f"q{i:03d}.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steady", type=int, default=6, help="timed queries per steady worker")
    p.add_argument("--cli-queries", type=int, default=6)
    p.add_argument("--no-load", action="store_true", help="do not start the background load (for comparison)")
    p.add_argument("--out", type=Path, default=RESULTS)
    opts = p.parse_args(argv)
    prompt, query = EXAMPLES / "prompt.png", EXAMPLES / "query.png"
    load_average = [round(v, 2) for v in os.getloadavg()]  # other work on the machine, before ours
    load = None if opts.no_load else start_load()
    rows: dict[str, list[dict]] = {"steady": [], "cli": []}
    start = time.time()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            qdir = Path(tmp) / "queries"
            qdir.mkdir()
            make_queries(qdir, opts.cli_queries)
            for r in range(opts.rounds):
                arms = ["default", "before", "active"] if r % 2 == 0 else ["active", "before", "default"]
                for arm in arms:
                    out, wall, cpu = timed_child([sys.executable, "-c", PRELUDE[arm] + STEADY, str(prompt), str(query),
                                                  str(opts.steady)], env_for(arm))
                    row = {"round": r, "arm": arm, **json.loads(out.stdout.strip().splitlines()[-1]),
                           "process_wall_s": round(wall, 2), "process_cpu_s": round(cpu, 2)}
                    rows["steady"].append(row)
                    print(json.dumps(row), flush=True)
                for arm in [a for a in arms if a != "active"]:
                    target = Path(tmp) / f"out_{r}_{arm}"
                    _, wall, cpu = timed_child([sys.executable, "-c", PRELUDE[arm] + CLI, "segment", "--prompt",
                                                str(prompt), "--query", str(qdir), "--out", str(target), "--quiet"],
                                               env_for(arm))
                    row = {"round": r, "arm": arm, "queries": opts.cli_queries, "wall_s": round(wall, 2),
                           "cpu_s": round(cpu, 2)}
                    rows["cli"].append(row)
                    print(json.dumps(row), flush=True)
    finally:
        if load is not None:
            load.kill()
            load.wait()

    def per_round(kind: str, arm: str, key: str) -> list[float]:
        return [row[key] for row in rows[kind] if row["arm"] == arm]

    def ratio(kind: str, arm: str, key: str) -> float:
        pairs = zip(per_round(kind, arm, key), per_round(kind, "default", key))
        return round(statistics.median(a / b for a, b in pairs), 2)

    summary = {
        "steady_median_ms": {a: round(statistics.median(per_round("steady", a, "median_ms")), 1)
                             for a in ("default", "before", "active")},
        "setup_median_ms": {a: round(statistics.median(per_round("steady", a, "setup_ms")), 1)
                            for a in ("default", "before", "active")},
        "steady_ratio_before_over_default": ratio("steady", "before", "median_ms"),
        "steady_ratio_active_over_default": ratio("steady", "active", "median_ms"),
        "setup_ratio_before_over_default": ratio("steady", "before", "setup_ms"),
        "cli_median_wall_s": {a: statistics.median(per_round("cli", a, "wall_s")) for a in ("default", "before")},
        "cli_median_cpu_s": {a: statistics.median(per_round("cli", a, "cpu_s")) for a in ("default", "before")},
        "cli_wall_ratio_before_over_default": ratio("cli", "before", "wall_s"),
        "cli_cpu_ratio_before_over_default": ratio("cli", "before", "cpu_s"),
    }
    report = {"background_load": None if opts.no_load else "one Python busy loop (1 core)",
              "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                          "load_average_at_start": load_average},
              "rounds": opts.rounds, "steady_queries": opts.steady, "cli_queries": opts.cli_queries,
              "elapsed_s": round(time.time() - start, 1), "summary": summary, "rows": rows}
    print(json.dumps(summary, indent=2))
    atomic_write_text(opts.out, json.dumps(report, indent=2) + "\n")  # creates the folder
    return 0


if __name__ == "__main__":
    sys.exit(main())
