"""Offline study of the default map rule: network logits and patch-matching maps, fused by rules.

    python benchmarks/fusion_study.py --model metauas-lite0-256 --root ../shared/realdev \
        --cache /tmp/fusion --seeds 1 3 [--rule "0.2*sig(L)+0.8*E2" ...] [--json out.json]

Step 1 (cached per model, category and seed in ``--cache``): the same images, masks and random
prompts as `metauas eval --dataset mvtec --seeds ...` (exact protocol, the model's size); for
every test image the network logits ``L`` (before the sigmoid) and the training-free
patch-matching maps ``P1`` (plain f3/f4 nearest cosine distance, the `--method patchmatch`
baseline), ``P2`` (two scales: plain and 3x3 neighbourhoods, cosine distance, the previous
default's term) and ``E2`` (the same two scales with the relative Euclidean distance,
``patchmatch_distance: l2``, the bundled default's term).
Step 2: every rule (a numpy expression of L, P1, P2, E2 with ``sig`` = sigmoid) becomes an anomaly
map; the metrics are those of `metauas eval` (image score: mean of the top 0.1 %), mean over
seeds, then over categories.

It reproduces the README's rows for the default, the baseline and the network alone, and its
table of fusion rules (one network pass per image, any number of rules). The patch-matching
variants of the README's other table (3x3 only, f2, a rotation bank) came from one-off scripts
and are not covered here. Use it to validate and select, never to fit anything on the
evaluation data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from metauas.atomic import atomic_write_text
from metauas.data import open_dataset
from metauas.evaluation.runner import _load_category, _PromptImages
from metauas.metrics import evaluate
from metauas.models import load_model
from metauas.models.comparison import patchmatch_map
from metauas.prompts import random_prompts
from metauas.scoring import image_scores

DEFAULT_RULES = ("P1", "P2", "E2", "sig(L)", "0.2*sig(L)+0.8*P1", "0.2*sig(L)+0.8*P2",
                 "0.2*sig(L)+0.8*E2", "0.33*sig(L)+0.67*E2", "0.5*sig(L)+0.5*E2")
# dumped patch-matching maps: key -> (neighbourhood, distance)
PATCHMATCH_TERMS = {"P1": (1, "cosine"), "P2": (3, "cosine"), "E2": (3, "l2")}
ARRAYS = ("L", *PATCHMATCH_TERMS)
KEYS = ("I-AUROC", "I-AP", "P-AUROC", "P-AP", "P-AUPRO")


def dump(model_name: str, root: str, seeds: list[int], cache: Path, dtype: type = np.float16) -> list[Path]:
    """Network logits and patch-matching maps (``dtype``) per category and seed -> npz files."""
    cache.mkdir(parents=True, exist_ok=True)
    model = load_model(model_name).eval()
    size = int(model.config.image_size)
    files = []
    for name, cat in open_dataset("mvtec", root).categories.items():
        loaded, prompts = None, _PromptImages(size, True)
        for seed in seeds:
            f = cache / f"{name}_{seed}.npz"
            files.append(f)
            if f.exists():
                continue
            loaded = loaded or _load_category(cat, size, "exact")
            t = time.time()
            out: dict[str, list[np.ndarray]] = {k: [] for k in ARRAYS}
            with torch.inference_mode():
                pf = model.encode(prompts.stack(random_prompts(cat.train, seed, 1)).float() / 255)
                prompt = model.prompt_from_features(pf)
                for i in range(0, len(loaded.samples), 16):
                    qf = model.encode(loaded.images[i:i + 16].float() / 255)
                    out["L"].append(model.forward_features(qf, prompt)[:, 0].numpy())
                    for key, (k, distance) in PATCHMATCH_TERMS.items():
                        out[key].append(patchmatch_map(qf, pf, (size, size), neighbourhood=k,
                                                       distance=distance)[:, 0].numpy())
            masks = np.stack([m if m is not None else np.zeros((size, size), bool) for m in loaded.masks])
            np.savez_compressed(f, masks=masks, labels=np.asarray(loaded.labels),
                                **{k: np.concatenate(v).astype(dtype) for k, v in out.items()})
            print(f"{name} seed {seed}: {len(masks)} images, {time.time() - t:.0f} s", flush=True)
    return files


def load(files: list[Path]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The dumped arrays of every file, read once: (category, {L, P1, P2, E2, masks, labels})."""
    return [(f.stem.rsplit("_", 1)[0], dict(np.load(f))) for f in files]


def score(rule: str, dumped: list[tuple[str, dict[str, np.ndarray]]]) -> dict:
    """Metrics of one rule: per category (mean over seeds) and their mean."""
    per: dict[str, list[dict]] = {}
    env = {"np": np, "sig": lambda x: 1.0 / (1.0 + np.exp(-x))}
    for cat, z in dumped:
        arrays = {k: z[k].astype(np.float32) for k in ARRAYS}
        maps = np.asarray(eval(rule, env, arrays), dtype=np.float32)  # noqa: S307 (a study script)
        m = evaluate(list(z["masks"]), list(maps), labels=z["labels"], image_scores=image_scores(maps))
        per.setdefault(cat, []).append(m)
    cats = {c: {k: float(np.mean([m[k] for m in ms])) for k in KEYS} for c, ms in per.items()}
    return {"categories": cats, "mean": {k: float(np.mean([v[k] for v in cats.values()])) for k in KEYS}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="metauas-lite0-256", help="bundled name or model file")
    ap.add_argument("--root", required=True, help="MVTec-layout folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--cache", type=Path, required=True, help="folder for the dumped maps (per model)")
    ap.add_argument("--rule", action="append", default=[], help="numpy expression of L, P1, P2, E2")
    ap.add_argument("--json", type=Path, default=None)
    opts = ap.parse_args()
    dumped = load(dump(opts.model, opts.root, opts.seeds, opts.cache))
    report = {"model": opts.model, "root": opts.root, "seeds": opts.seeds, "rules": {}}
    print(f"{'rule':28s} " + " ".join(f"{k:>8s}" for k in KEYS) + "   P-AUROC per category")
    for rule in opts.rule or DEFAULT_RULES:
        r = report["rules"][rule] = score(rule, dumped)
        per_cat = " / ".join(f"{100 * v['P-AUROC']:.1f}" for v in r["categories"].values())
        print(f"{rule:28s} " + " ".join(f"{100 * r['mean'][k]:8.1f}" for k in KEYS) + f"   {per_cat}", flush=True)
    if opts.json:
        atomic_write_text(opts.json, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
