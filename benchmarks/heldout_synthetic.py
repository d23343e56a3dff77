"""Held-out synthetic validation: a trained model vs. the training-free patch-matching baseline.

    python benchmarks/heldout_synthetic.py --model metauas-lite0-256 [--pairs 200] [--json]

The pairs are synthesised from images of sources *not used in training*: the same
`split_by_source(seed)` the trainer uses puts whole image sources aside for validation, and a
seed different from the trainer's validation seed is used. Both methods see the same pairs
and use the same frozen encoder; metrics are exact (metauas.metrics.evaluate): pixel-level
P-AUROC / P-AP / P-F1max / P-AUPRO over all pairs and image-level I-AUROC / I-AP (image score =
max of the map; no-change pairs are the normal images).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from metauas.evaluation.patchmatch import patchmatch_map
from metauas.metrics import evaluate
from metauas.models import load_model
from metauas.synthesis import ImageSources, SynthesisConfig, SyntheticPairDataset


def metrics_by_type(masks, maps: dict, types: list[str]) -> dict:
    """Pixel metrics over the pairs of each change type (no-change pairs have no positives)."""
    out = {}
    for change in sorted(set(types)):
        idx = [i for i, t in enumerate(types) if t == change]
        if not any(masks[i].any() for i in idx):
            continue
        out[change] = {}
        for name, predicted in maps.items():
            m = evaluate([masks[i] for i in idx], [predicted[i] for i in idx])
            out[change][name] = {k: round(float(m[k]), 4) for k in ("P-AUROC", "P-AP", "P-AUPRO")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="metauas-lite0-256")
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=2024, help="pair seed (trainer validation uses 12345)")
    ap.add_argument("--split-seed", type=int, default=0, help="the trainer's cfg.seed")
    ap.add_argument("--photos", default="data/train_images/photos")
    ap.add_argument("--objects", default="data/train_images/objects")
    ap.add_argument("--textures", default="data/train_images/textures")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--by-type", action="store_true",
                    help="also pixel metrics per change type (that type's pairs only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    sources = ImageSources.from_dirs(photos=args.photos, objects=args.objects or None,
                                     textures=args.textures or None)
    _, held_out = sources.split_by_source(seed=args.split_seed)
    data = SyntheticPairDataset(held_out, SynthesisConfig(size=args.size), length=args.pairs, seed=args.seed)
    model = load_model(args.model).eval()

    maps = {"metauas": [], "patchmatch": []}
    masks, labels, types = [], [], []
    t0 = time.time()
    with torch.inference_mode():
        for start in range(0, args.pairs, 8):
            items = [data[i] for i in range(start, min(args.pairs, start + 8))]
            q = torch.stack([it["query"] for it in items])
            p = torch.stack([it["prompt"] for it in items])
            fq, fp = model.encode(q), model.encode(p)
            prob = torch.sigmoid(model.forward_features(fq, model.prompt_from_features(fp)))
            base = patchmatch_map(fq, fp, args.size)
            for j, it in enumerate(items):
                mask = it["mask"][0].numpy() > 0.5
                masks.append(mask)
                labels.append(int(mask.any()))
                types.append(it.get("change_type", ""))
                maps["metauas"].append(prob[j, 0].numpy())
                maps["patchmatch"].append(base[j, 0].numpy())
    result = {"model": args.model, "pairs": args.pairs, "size": args.size, "seed": args.seed,
              "held_out_sources": held_out.sources(), "seconds": round(time.time() - t0, 1),
              "change_types": {t: types.count(t) for t in sorted(set(types))}}
    for name, predicted in maps.items():
        metrics = evaluate(masks, predicted, labels=np.array(labels))
        result[name] = {k: round(float(v), 4) for k, v in metrics.items()}
    if args.by_type:
        result["by_type"] = metrics_by_type(masks, maps, types)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        keys = list(result["metauas"])
        print("| method | " + " | ".join(keys) + " |")
        print("|---|" + "---|" * len(keys))
        for name in maps:
            print(f"| {name} | " + " | ".join(f"{100 * result[name][k]:.1f}" for k in keys) + " |")
        print(f"{args.pairs} held-out pairs, sources: {result['held_out_sources']}")
        for change, per_method in result.get("by_type", {}).items():
            print(f"{change:18s} " + "  ".join(
                f"{name}: P-AUROC {100 * m['P-AUROC']:.1f} P-AUPRO {100 * m['P-AUPRO']:.1f} P-AP {100 * m['P-AP']:.1f}"
                for name, m in per_method.items()))


if __name__ == "__main__":
    main()
