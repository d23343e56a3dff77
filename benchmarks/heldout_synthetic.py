"""Held-out synthetic validation: trained model(s) vs. the training-free patch-matching baseline.

    python benchmarks/heldout_synthetic.py --model metauas-lite0-256 [--model other.safetensors ...]
        [--pairs 200] [--mix classic|inspection] [--by-type] [--chunks 10] [--json]

Each model predicts through `metauas.inference.Segmenter`, the path `metauas segment` runs,
and images are scored with the product's rule (`metauas.scoring.image_score`); the baseline
keeps the map maximum. Several ``--model`` are compared on the same pairs in one run.
``--mix classic`` (default) is the change mix of the paper's recipe that earlier numbers were
measured on (object and local-region changes, 10 % no-change pairs); ``--mix inspection`` adds
the inspection-like defects (cracks, pits, stains, missing material, global changes).

The pairs are synthesised from images of sources *not used in training*: the same
`split_by_source(seed)` the trainer uses puts whole image sources aside for validation, and a
seed different from the trainer's validation seed is used. Both methods see the same pairs
and use the same frozen encoder; metrics are exact (metauas.metrics.evaluate): pixel-level
P-AUROC / P-AP / P-F1max / P-AUPRO over all pairs and image-level I-AUROC / I-AP (no-change
pairs are the normal images).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from metauas.evaluation.patchmatch import patchmatch_map
from metauas.runtime import Segmenter  # the runtime torch backend: the path `metauas segment` runs
from metauas.metrics import evaluate
from metauas.models import load_model
from metauas.scoring import image_scores
from metauas.synthesis import DEFECT_TYPES, ImageSources, SynthesisConfig, SyntheticPairDataset

MIXES = {
    "classic": {"change_weights": {t: 0.0 for t in DEFECT_TYPES}, "no_change_rate": 0.1},
    "inspection": {},  # SynthesisConfig defaults: every change type, 10 % no-change pairs
}


def pixel_metrics_on(masks, maps: dict, idx: list[int], keys: tuple[str, ...]) -> dict | None:
    """Pixel metrics of each method over the pairs `idx`; None when they hold no changed pixel."""
    if not any(masks[i].any() for i in idx):
        return None
    out = {}
    for name, predicted in maps.items():
        m = evaluate([masks[i] for i in idx], [predicted[i] for i in idx])
        out[name] = {k: round(float(m[k]), 4) for k in keys}
    return out


def metrics_by_type(masks, maps: dict, types: list[str]) -> dict:
    """Pixel metrics over the pairs of each change type (no-change pairs have no positives)."""
    out = {}
    for change in sorted(set(types)):
        row = pixel_metrics_on(masks, maps, [i for i, t in enumerate(types) if t == change],
                               ("P-AUROC", "P-AP", "P-AUPRO"))
        if row is not None:
            out[change] = row
    return out


def metrics_by_chunk(masks, maps: dict, chunks: int) -> dict:
    """Pixel metrics on disjoint consecutive chunks of the pairs, and how often the model wins.

    One number per set hides how much it depends on which pairs were drawn; independent chunks
    show whether the difference between the methods is larger than that spread."""
    keys = ("P-AUROC", "P-AUPRO")
    bounds = np.linspace(0, len(masks), chunks + 1).astype(int)
    rows = [row for lo, hi in zip(bounds[:-1], bounds[1:])
            if (row := pixel_metrics_on(masks, maps, list(range(lo, hi)), keys)) is not None]
    summary = {}
    for k in keys:
        model = next(name for name in rows[0] if name != "patchmatch")  # the first --model
        diff = np.array([r[model][k] - r["patchmatch"][k] for r in rows])
        summary[k] = {"model_wins": int((diff > 0).sum()), "chunks": len(rows),
                      "mean_diff": round(float(diff.mean()), 4), "std_diff": round(float(diff.std(ddof=1)), 4)
                      if len(rows) > 1 else 0.0, "min_diff": round(float(diff.min()), 4)}
    return {"chunks": rows, "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", default=None,
                    help="model name or file; repeat to compare several on the same pairs")
    ap.add_argument("--mix", choices=sorted(MIXES), default="classic")
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
    ap.add_argument("--chunks", type=int, default=0,
                    help="also P-AUROC / P-AUPRO on this many disjoint chunks of the pairs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    sources = ImageSources.from_dirs(photos=args.photos, objects=args.objects or None,
                                     textures=args.textures or None)
    _, held_out = sources.split_by_source(seed=args.split_seed)
    synth = SynthesisConfig(size=args.size, **{**MIXES[args.mix], "change_weights": {
        **SynthesisConfig().change_weights, **MIXES[args.mix].get("change_weights", {})}})
    data = SyntheticPairDataset(held_out, synth, length=args.pairs, seed=args.seed)
    names = args.model or ["metauas-lite0-256"]
    segmenters = {name: Segmenter(load_model(name)) for name in names}
    encoder = next(iter(segmenters.values())).model  # patch matching: the same frozen encoder

    maps: dict[str, list] = {name: [] for name in names}
    maps["patchmatch"] = []
    masks, labels, types = [], [], []
    t0 = time.time()
    with torch.inference_mode():
        for i in range(args.pairs):
            it = data[i]
            q, p = it["query"][None], it["prompt"][None]
            for name, seg in segmenters.items():
                seg.set_prompt_tensor(p)
                maps[name].append(seg.predict_tensor(q)[0, 0].numpy())
            maps["patchmatch"].append(patchmatch_map(encoder.encode(q), encoder.encode(p), args.size)[0, 0].numpy())
            mask = it["mask"][0].numpy() > 0.5
            masks.append(mask)
            labels.append(int(mask.any()))
            types.append(it.get("change_type", ""))
    result = {"models": names, "mix": args.mix, "pairs": args.pairs, "size": args.size, "seed": args.seed,
              "held_out_sources": held_out.sources(), "seconds": round(time.time() - t0, 1),
              "change_types": {t: types.count(t) for t in sorted(set(types))}}
    for name, predicted in maps.items():
        scores = None if name == "patchmatch" else image_scores(np.stack(predicted))
        metrics = evaluate(masks, predicted, labels=np.array(labels), image_scores=scores)
        result[name] = {k: round(float(v), 4) for k, v in metrics.items()}
    if args.by_type:
        result["by_type"] = metrics_by_type(masks, maps, types)
    if args.chunks > 1:
        result["by_chunk"] = metrics_by_chunk(masks, maps, args.chunks)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        keys = list(result["patchmatch"])
        print("| method | " + " | ".join(keys) + " |")
        print("|---|" + "---|" * len(keys))
        for name in maps:
            print(f"| {name} | " + " | ".join(f"{100 * result[name][k]:.1f}" for k in keys) + " |")
        print(f"{args.pairs} held-out pairs, sources: {result['held_out_sources']}")
        for change, per_method in result.get("by_type", {}).items():
            print(f"{change:18s} " + "  ".join(
                f"{name}: P-AUROC {100 * m['P-AUROC']:.1f} P-AUPRO {100 * m['P-AUPRO']:.1f} P-AP {100 * m['P-AP']:.1f}"
                for name, m in per_method.items()))
        for k, summary in result.get("by_chunk", {}).get("summary", {}).items():
            print(f"{k} over {summary['chunks']} disjoint chunks: model ahead in {summary['model_wins']}, "
                  f"difference {100 * summary['mean_diff']:+.1f} +- {100 * summary['std_diff']:.1f} "
                  f"(smallest {100 * summary['min_diff']:+.1f})")


if __name__ == "__main__":
    main()
