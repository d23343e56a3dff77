#!/usr/bin/env python3
"""Query throughput: PyTorch (eager and the optimized Segmenter path) vs the ONNX export in
onnxruntime, all with the prompt encoded once (so each query = encoder + alignment + decoder).

Times `predict` on model-sized batches (no image decoding or resizing), median ms per query
over several alternating rounds so background load on a shared machine hits all backends
alike. Weights: ImageNet encoders where available (Lite0), seeded random decoder; B4 is a
seeded random init (speed does not depend on the values). A bundled model name in --encoders
(e.g. metauas-lite0-256, the shipped default) runs that model with its trained weights.
max_abs_diff = ONNX vs eager.

    python benchmarks/onnx_speed.py                       # lite0 + b4 at 256, batch 1 and 8
    python benchmarks/onnx_speed.py --encoders efficientnet-lite0 --batches 1 --json
    python benchmarks/onnx_speed.py --encoders metauas-lite0-256 --batches 1 \
        --out benchmarks/results/shipped_speed.json    # README speed table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _time(fn, reps: int) -> list[float]:
    fn()  # warm-up (first call allocates / creates kernels)
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench(encoder: str, size: int, batch: int, threads: int, reps: int, rounds: int) -> dict:
    from metauas.inference.export import OnnxExportConfig, export_onnx
    from metauas.inference.onnx_backend import OnnxRunner
    from metauas.inference.segmenter import Segmenter
    from metauas.models import available_models, build_model, load_model

    torch.manual_seed(0)
    if encoder in available_models():  # a bundled model: its trained weights
        model = load_model(encoder).eval()
    else:
        model = build_model(encoder, pretrained=True, image_size=size).eval()
    gen = torch.Generator().manual_seed(0)
    prompt = torch.rand(1, 3, size, size, generator=gen)
    queries = torch.rand(batch, 3, size, size, generator=gen)
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        meta = export_onnx(model, folder, OnnxExportConfig(size=size), model_name=encoder, verify=False)
        export_s = time.perf_counter() - t0
        runner = OnnxRunner(folder, threads=threads, meta=meta)
        runner.set_prompt_tensor(prompt.numpy())
        eager = Segmenter(model, size=size, optimize=False)
        eager.set_prompt_tensor(prompt)
        fast = Segmenter(model, size=size, optimize=True)
        fast.set_prompt_tensor(prompt)
        diff = float(np.abs(runner.predict(queries.numpy()) - eager.predict_tensor(queries).numpy()).max())
        q_np = queries.numpy()
        paths = {"torch_eager": lambda: eager.predict_tensor(queries),
                 "torch_fast": lambda: fast.predict_tensor(queries),
                 "onnxruntime": lambda: runner.predict(q_np)}
        times: dict[str, list[float]] = {k: [] for k in paths}
        order = list(paths)
        for r in range(rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                times[name] += _time(paths[name], reps)
        prompt_ms = {"torch": 1000 * statistics.median(_time(lambda: eager.set_prompt_tensor(prompt), 3)),
                     "onnxruntime": 1000 * statistics.median(_time(lambda: runner.set_prompt_tensor(prompt.numpy()), 3))}
    ms = {k: 1000 * statistics.median(v) / batch for k, v in times.items()}
    return {"encoder": encoder, "size": size, "batch": batch, "threads": threads,
            "ms_per_query": {k: round(v, 2) for k, v in ms.items()},
            "onnx_speedup_vs_eager": round(ms["torch_eager"] / ms["onnxruntime"], 2),
            "onnx_speedup_vs_fast": round(ms["torch_fast"] / ms["onnxruntime"], 2),
            "prompt_ms": {k: round(v, 1) for k, v in prompt_ms.items()},
            "export_s": round(export_s, 1), "max_abs_diff_onnx_vs_eager": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", default=["efficientnet-lite0", "efficientnet-b4"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", default=None, help="also write the JSON report to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [bench(e, args.size, b, args.threads, args.reps, args.rounds) for e in args.encoders for b in args.batches]
    report = {"torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_average_end": list(os.getloadavg()),
              "results": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'encoder':<20}{'size':>5}{'batch':>6}{'eager ms':>10}{'fast ms':>9}{'onnx ms':>9}"
          f"{'x eager':>8}{'x fast':>8}{'max diff':>10}")
    for r in rows:
        m = r["ms_per_query"]
        print(f"{r['encoder']:<20}{r['size']:>5}{r['batch']:>6}{m['torch_eager']:>10.1f}{m['torch_fast']:>9.1f}"
              f"{m['onnxruntime']:>9.1f}{r['onnx_speedup_vs_eager']:>8.2f}{r['onnx_speedup_vs_fast']:>8.2f}"
              f"{r['max_abs_diff_onnx_vs_eager']:>10.1e}")


if __name__ == "__main__":
    main()
