"""Peak server memory under load: N concurrent requests of Q large images each (issue 14).

Starts the web app with its default limits in a separate process (so its peak resident memory,
VmHWM from /proc, belongs to the server only), sends `--requests` concurrent POSTs, each with
one prompt and `--queries` queries of `--side` x `--side` pixels (smooth JPEG textures, so a
file stays under the 10 MiB limit), and reports the answers (200 / 503), their correctness
(each 200 answer lists every query with a score in [0, 1] at the right size) and the peak RSS.

    python benchmarks/web_load.py                      # 8 requests x 8 images of 6000x6000
    python benchmarks/web_load.py --side 2000 --requests 4 --queries 4   # quick run
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

SERVER = """
import sys, torch, uvicorn
torch.set_num_threads({threads})
from metauas.inference.segmenter import Segmenter
from metauas.models import MetaUAS, ModelConfig
from metauas.web.app import SegmentService, WebConfig, create_app
torch.manual_seed(0)
model = MetaUAS(ModelConfig(encoder="efficientnet-lite0", image_size=256)).eval()
service = SegmentService(Segmenter(model), "bench", config=WebConfig())
print("ready", flush=True)
uvicorn.run(create_app(service), host="127.0.0.1", port={port}, log_level="warning")
"""


def smooth_jpeg(side: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((side, side), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def multipart(files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{n}"\r\n'
             f"Content-Type: image/jpeg\r\n\r\n".encode() + d + b"\r\n" for k, n, d in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--side", type=int, default=6000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-gib", type=float, default=3.0, help="documented server RSS limit")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", SERVER.format(port=port, threads=args.threads)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{base}/api/info", timeout=5).read()
                break
            except OSError:
                time.sleep(0.2)
        idle = peak_rss_mib(server.pid)
        bodies = []
        for r in range(args.requests):
            files = [("prompt", "p.jpg", smooth_jpeg(args.side, 1000 + r))]
            files += [("query", f"q{j}.jpg", smooth_jpeg(args.side, 10 * r + j)) for j in range(args.queries)]
            bodies.append(multipart(files))
        print(f"server idle peak RSS {idle:.0f} MiB; request bodies "
              f"{np.mean([len(b) for b, _ in bodies]) / 2**20:.1f} MiB each", flush=True)

        def send(i: int):
            body, ctype = bodies[i]
            req = urllib.request.Request(f"{base}/api/segment", data=body, headers={"Content-Type": ctype})
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=1800) as response:
                    status, data = response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                status, data = exc.code, json.loads(exc.read())
            except (urllib.error.URLError, ConnectionError) as exc:  # closed before the answer could be read
                status, data = 0, {"error": f"connection: {exc}"}
            return status, data, time.perf_counter() - started

        started = time.perf_counter()
        with ThreadPoolExecutor(args.requests) as pool:
            replies = list(pool.map(send, range(args.requests)))
        wall = time.perf_counter() - started
        peak = peak_rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    statuses = [s for s, _, _ in replies]
    correct = all(len(d["results"]) == args.queries and all(
        0.0 <= r["score"] <= 1.0 and (r["width"], r["height"]) == (args.side, args.side) for r in d["results"])
        for s, d, _ in replies if s == 200)
    result = {"requests": args.requests, "queries": args.queries, "side": args.side, "statuses": statuses,
              "seconds": [round(t, 1) for _, _, t in replies], "wall_s": round(wall, 1),
              "errors": sorted({d["error"] for s, d, _ in replies if s != 200}),
              "answers_correct": correct, "idle_peak_rss_mib": round(idle), "peak_rss_mib": round(peak),
              "budget_mib": round(args.budget_gib * 1024), "within_budget": peak <= args.budget_gib * 1024}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if correct and result["within_budget"] and statuses.count(200) >= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
