"""CLI: `metauas eval` (benchmark evaluation) and `metauas make-dataset` (small MVTec-format tree)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from metauas.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` and `make-dataset` subcommands to the `metauas` parser."""
    from metauas.data.readers import DATASET_KINDS
    from metauas.evaluation.runner import METHODS
    from metauas.metrics import PROTOCOLS
    from metauas.prompts import PROMPT_STRATEGIES

    ev = subparsers.add_parser(
        "eval", help="evaluate a model on MVTec AD / VisA / GoodsAD / folders (7 metrics, reports)",
        description="Evaluate anomaly maps on a benchmark; writes OUT/metrics.json and OUT/metrics.md. "
                    "Re-running with the same options resumes (finished categories are kept).",
    )
    ev.add_argument("--dataset", required=True, choices=DATASET_KINDS)
    ev.add_argument("--root", required=True, help="data set root (image root for metauas-json)")
    ev.add_argument("--meta-dir", default=None,
                    help="metauas-json: folder with test.json, oneprompt_seedN.json, ... (default: --root)")
    ev.add_argument("--categories", nargs="+", default=None, help="subset of categories (default: all)")
    ev.add_argument("--prompt", default="random", choices=PROMPT_STRATEGIES,
                    help="random (seeded, default), best (most similar; MetaUAS*), best+ (best fused "
                         "with patch matching; MetaUAS*+), kshot (k random prompts)")
    ev.add_argument("--k", type=int, default=1, help="prompts per query for kshot/best (default 1)")
    ev.add_argument("--seeds", type=int, nargs="+", default=[1, 3, 5, 7, 9])
    ev.add_argument("--model", default=None, help="bundled model name or checkpoint path (default: bundled)")
    ev.add_argument("--size", type=int, default=256, help="model input and evaluation size (multiple of 32)")
    ev.add_argument("--method", default="metauas", choices=METHODS,
                    help="metauas (the default pipeline: what `metauas segment` computes), network (the "
                         "model without its built-in patch-matching fusion) or patchmatch (training-free "
                         "one-shot baseline)")
    ev.add_argument("--protocol", default="exact", choices=PROTOCOLS,
                    help="exact (default) or metauas (official evaluator's choices, for comparison)")
    ev.add_argument("--fusion-weight", type=float, default=0.5, help="best+: weight of the patch-matching map")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--out", required=True, help="output folder")
    ev.add_argument("--save-maps", action="store_true", help="also write heat-map overlays (first seed)")
    ev.add_argument("--no-resume", action="store_true", help="recompute every category")
    ev.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    ev.add_argument("--tile", default="off", metavar="auto|off|N",
                    help="auto: test images at least twice --size are segmented in tiles at their own scale "
                         "(as `metauas segment --tile auto`), maps then resized to --size for the metrics; "
                         "N: tiles of N px; off (default)")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=run_eval)

    mk = subparsers.add_parser(
        "make-dataset", help="generate a small MVTec-format data set (synthetic defects) for tests/demos",
        description="Each category is one source image (or a procedural texture); normal images are "
                    "jittered copies, anomalous ones get a synthetic patch/scratch/stain with its mask.",
    )
    mk.add_argument("--out", required=True)
    mk.add_argument("--images", nargs="*", default=[], help="source images or folders (default: textures)")
    mk.add_argument("--categories", type=int, default=2)
    mk.add_argument("--train", type=int, default=8, help="normal training images per category")
    mk.add_argument("--test-good", type=int, default=4)
    mk.add_argument("--test-anomalous", type=int, default=6)
    mk.add_argument("--size", type=int, default=256)
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--meta", action="store_true",
                    help="also write official-format meta files (test.json, oneprompt_seedN.json, ...) to OUT/meta")
    mk.add_argument("--overwrite", action="store_true")
    mk.set_defaults(func=run_make_dataset)


def run_eval(args: argparse.Namespace) -> int:
    """`metauas eval`: run `run_evaluation` with the command-line options, print metrics.md (and
    the mean metrics as JSON on stderr); returns exit status 0.

    Raises:
        InputError: invalid options (e.g. ``--threads`` below 1) or data set (from
            `EvalConfig.validate` and the readers).
    """
    from metauas.evaluation.runner import EvalConfig, run_evaluation
    from metauas.runtime.predictor import check_tile
    from metauas.threads import configure_threads

    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    configure_threads(args.threads)
    cfg = EvalConfig(
        dataset=args.dataset, root=Path(args.root), out=Path(args.out), categories=args.categories,
        prompt=args.prompt, k=args.k, seeds=tuple(args.seeds), model=args.model, size=args.size,
        method=args.method, protocol=args.protocol, save_maps=args.save_maps, batch_size=args.batch_size,
        meta_dir=Path(args.meta_dir) if args.meta_dir else None, fusion_weight=args.fusion_weight,
        resume=not args.no_resume, progress=not args.quiet, tile=check_tile(args.tile),
    )
    report = run_evaluation(cfg)
    print((Path(args.out) / "metrics.md").read_text(encoding="utf-8"))
    mean = report["mean"]
    print(json.dumps({k: (round(v, 4) if v is not None else None) for k, v in mean.items()}), file=sys.stderr)
    return 0


def run_make_dataset(args: argparse.Namespace) -> int:
    """`metauas make-dataset`: write a small MVTec-format data set (and with ``--meta`` the
    official meta files); returns exit status 0.

    Raises:
        InputError: an ``--images`` entry that does not exist, or folders without images.
    """
    from metauas.data import MakeDatasetConfig, make_mvtec_dataset, read_mvtec, write_metauas_meta
    from metauas.data.readers import IMAGE_SUFFIXES

    sources: list[Path] = []
    for item in args.images:
        p = Path(item).expanduser()
        if p.is_dir():
            sources.extend(sorted(x for x in p.iterdir() if x.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            sources.append(p)
        else:
            raise InputError(f"no such image or folder: {item}")
    if args.images and not sources:
        raise InputError("no images found in --images")
    out = make_mvtec_dataset(MakeDatasetConfig(
        out=Path(args.out), images=sources, categories=args.categories, n_train=args.train,
        n_test_good=args.test_good, n_test_anomalous=args.test_anomalous, size=args.size,
        seed=args.seed, overwrite=args.overwrite,
    ))
    if args.meta:
        write_metauas_meta(read_mvtec(out), out / "meta")
    print(f"wrote an MVTec-format data set to {out}")
    return 0
