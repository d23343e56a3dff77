"""CLI: `metauas segment` and `metauas info`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from metauas.errors import InputError, MetaUASError


def register(subparsers: argparse._SubParsersAction) -> None:
    seg = subparsers.add_parser("segment", help="segment query images against normal prompt image(s)")
    seg.add_argument("--prompt", nargs="+", required=True, help="normal (good) image(s); several = k-shot")
    seg.add_argument("--query", nargs="+", required=True, help="query image(s), folder(s) or glob(s)")
    seg.add_argument("--out", required=True, help="output folder")
    seg.add_argument("--model", default=None, help="bundled model name or checkpoint path")
    seg.add_argument("--size", type=int, default=None, help="model input size (multiple of 32)")
    seg.add_argument("--batch-size", type=int, default=8)
    seg.set_defaults(func=run_segment)

    info = subparsers.add_parser("info", help="models available offline, encoders, versions")
    info.set_defaults(func=run_info)


def resolve_queries(items: list[str]) -> list[Path]:
    from glob import glob

    from metauas.inference.images import IMAGE_SUFFIXES, list_images

    paths: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            paths.extend(list_images(p))
        elif p.exists():
            paths.append(p)
        else:
            matches = sorted(Path(m) for m in glob(item) if Path(m).suffix.lower() in IMAGE_SUFFIXES)
            if not matches:
                raise InputError(f"no such file, folder or matching images: {item}")
            paths.extend(matches)
    return paths


def load_model_or_untrained(name: str | None):
    """The requested model; without one, the bundled default, or (until it exists) an
    untrained decoder on the ImageNet Lite0 encoder, with a loud warning."""
    from metauas.models import DEFAULT_MODEL, available_models, build_model, load_model

    if name:
        return load_model(name), name
    if DEFAULT_MODEL in available_models():
        return load_model(DEFAULT_MODEL), DEFAULT_MODEL
    print("metauas: WARNING: no trained default model is installed; using an UNTRAINED decoder on the "
          "ImageNet EfficientNet-Lite0 encoder. Maps are meaningless until a trained model is used.",
          file=sys.stderr)
    return build_model("efficientnet-lite0", pretrained=True), "untrained-lite0"


def run_segment(args: argparse.Namespace) -> int:
    from metauas.inference.segmenter import Segmenter
    from metauas.inference.visualize import save_map_png, save_overlay

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {out}: {exc.strerror}") from None
    queries = resolve_queries(args.query)
    model, model_name = load_model_or_untrained(args.model)
    segmenter = Segmenter(model, size=args.size, batch_size=args.batch_size)
    segmenter.set_prompt(args.prompt)
    records, failed = [], []
    for path in queries:
        try:
            result = segmenter.segment([path])[0]
        except InputError as exc:
            failed.append({"path": str(path), "error": str(exc)})
            print(f"metauas: skipped {path}: {exc}", file=sys.stderr)
            continue
        from metauas.inference.images import load_image

        map_path = out / f"{path.stem}_map.png"
        overlay_path = out / f"{path.stem}_overlay.png"
        save_map_png(result.anomaly_map, map_path)
        save_overlay(load_image(path), result.anomaly_map, overlay_path, title=f"score {result.score:.3f}")
        records.append({"query": str(path), "score": result.score, "map": str(map_path),
                        "overlay": str(overlay_path)})
        print(f"{path.name}: score {result.score:.4f} -> {overlay_path}")
    summary = {"model": model_name, "size": segmenter.size, "prompts": [str(p) for p in args.prompt],
               "results": records, "failed": failed}
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out / "results.json")
    if model_name == "untrained-lite0":
        print("NOTE: these maps come from an untrained decoder (no trained default model bundled yet).")
    return 0 if records else 2


def run_info(args: argparse.Namespace) -> int:
    import torch

    from metauas import __version__
    from metauas.models import available_encoders, available_models

    print(f"metauas {__version__}  torch {torch.__version__}  numpy {np.__version__}")
    print("bundled models:", ", ".join(available_models()) or "none")
    print("encoders:", ", ".join(available_encoders()))
    return 0


__all__ = ["register", "MetaUASError"]
