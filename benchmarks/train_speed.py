"""Training throughput on CPU: on-the-fly synthesis + frozen encoder vs. cached encoder features.

    python benchmarks/train_speed.py [--size 128] [--steps 6] [--batch-size 8] [--json]

(a) "online": every step synthesises pairs and runs the frozen encoder on prompt and query;
(b) "cached": a pool of pairs is synthesised and encoded once (cost reported separately and
    amortised over the pool), each step only runs alignment + decoder forward/backward.
Both use the real training step (metauas.training.trainer.ChangeStep) and the same config.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from metauas.training.config import TrainConfig
from metauas.training.losses import change_loss
from metauas.training.trainer import CachedPairs, ChangeStep, build_datasets, build_model_from_config, collate


def timed_steps(model, step, loader_items, steps: int) -> float:
    opt = torch.optim.AdamW(model.trainable_parameters(), 1e-4)
    t0 = time.perf_counter()
    for i in range(steps):
        batch = collate(loader_items(i))
        logits = step(batch["query"], batch["prompt"])
        loss = change_loss(logits, batch["mask"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--pool", type=int, default=64)
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--photos", default="data/train_images/photos")
    ap.add_argument("--objects", default="data/train_images/objects")
    ap.add_argument("--textures", default="data/train_images/textures")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(image_size=args.size, batch_size=args.batch_size, data=args.data, photos=args.photos,
                      objects=args.objects, textures=args.textures, decoder_channels=[128, 64, 48, 32, 16])
    model = build_model_from_config(cfg).train()
    step = ChangeStep(model)
    train_set, _, _ = build_datasets(cfg, length=10_000)
    b = args.batch_size

    online = timed_steps(model, step, lambda i: [train_set[i * b + j] for j in range(b)], args.steps)
    t0 = time.perf_counter()
    cached_set = CachedPairs(model, train_set, args.pool, seed=0)
    build = time.perf_counter() - t0
    cached = timed_steps(model, step, lambda i: [cached_set[i * b + j] for j in range(b)], args.steps)
    pairs = args.steps * b
    result = {
        "size": args.size, "batch_size": b, "steps": args.steps, "threads": args.threads,
        "online_pairs_per_s": pairs / online,
        "cached_pairs_per_s": pairs / cached,
        "cache_build_s_per_pair": build / args.pool,
        "cached_speedup_per_step": online / cached,
        "note": "cached reuses a fixed pool (less diversity); build cost is paid once per pool",
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:>26}: {v:.3f}" if isinstance(v, float) else f"{k:>26}: {v}")


if __name__ == "__main__":
    main()
