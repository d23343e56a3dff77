"""Engine assembly without argparse: open a model with a backend, find its thresholds.

    from metauas.runtime import open_engine
    engine = open_engine(backend="onnxruntime")      # default model, exported once into the cache
    engine.segmenter.set_prompt("good.png")
    thresholds, source = engine.thresholds(prompt_key=fingerprint(["good.png"]))

The CLI (`metauas segment/calibrate/serve`) and the web app build their engines here; so do
evaluation and any Python user, so all of them run the very same predictor.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from metauas.constants import check_size
from metauas.errors import InputError, MetaUASError
from metauas.models.store import UNTRAINED_NAME, model_digest, open_model
from metauas.paths import onnx_cache_dir
from metauas.runtime.export import OnnxExportConfig, export_onnx
from metauas.runtime.onnx_backend import OnnxSegmenter
from metauas.runtime.onnx_format import DECODER_FILE, ENCODER_FILE, OnnxMetadata
from metauas.runtime.predictor import DEFAULT_MEMORY_BUDGET_GIB, Predictor, check_tile
from metauas.runtime.thresholds import (Thresholds, calibrate, fingerprint, load_thresholds, read_threshold_file,
                                        save_thresholds, store_path, tile_key)
from metauas.runtime.torch_backend import Segmenter
from metauas.threads import configure_threads

BACKENDS = ("torch", "onnxruntime")
Log = Callable[[str], None]


def _stderr(text: str) -> None:
    print(f"metauas: {text}", file=sys.stderr)


@dataclass
class Engine:
    """A ready predictor plus what identifies it (for result files and threshold lookup).

    Attributes:
        segmenter: the `Predictor` (torch `Segmenter` or `OnnxSegmenter`).
        model_name: bundled name, file path, or "untrained-lite0".
        model_ref: what the user asked for (a file path means: store thresholds beside it).
        digest: SHA-256 of the weights (`metauas.models.store.model_digest`).
        backend: "torch" or "onnxruntime".
        onnx_dir: the export folder used by the onnxruntime backend.
        notes: what assembly did on the way (e.g. an export written to the cache).
    """

    segmenter: Predictor
    model_name: str
    model_ref: str | None
    digest: str
    backend: str
    onnx_dir: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Model input size S in px of the segmenter."""
        return int(self.segmenter.size)

    @property
    def untrained(self) -> bool:
        """True when no trained model was found and the untrained fallback runs (maps are meaningless)."""
        return self.model_name == UNTRAINED_NAME

    def store_path(self) -> Path:
        """Threshold store of this model (beside a model file, else in the user data folder)."""
        return store_path(self.model_ref, self.model_name)

    @property
    def tile(self) -> str:
        """The segmenter's tile setting in stored form ("off", "auto" or the side in px as text)."""
        return tile_key(getattr(self.segmenter, "tile", "off"))

    def stored_thresholds(self, prompt_key: str, warn: Log | None = None,
                          note: Log | None = None) -> Thresholds | None:
        """Thresholds calibrated for this model, size, prompt (fingerprint) and tile setting, or
        None; a corrupt store is ignored (and reported through `warn`). An entry calibrated
        with another tile setting is not used; `note` is told why in one line."""
        path = self.store_path()
        try:
            found = load_thresholds(path, self.digest, self.size, prompt_key, tile=self.tile)
            other = None if found is not None else load_thresholds(path, self.digest, self.size, prompt_key)
        except InputError as exc:
            if warn is not None:
                warn(f"ignoring stored thresholds: {exc}")
            return None
        if other is not None and note is not None:
            note(f"stored thresholds for this model and prompt were calibrated with --tile {other.tile}, not "
                 f"--tile {self.tile}, so they are not used (tiled and untiled scores differ); calibrate with "
                 f"the same --tile")
        return found

    def thresholds(self, prompt_key: str, threshold: float | None = None, pixel_threshold: float | None = None,
                   thresholds_file: str | None = None, warn: Log | None = None,
                   note: Log | None = None) -> tuple[Thresholds | None, str]:
        """(thresholds, where they came from): a manual `threshold` (image and, unless
        `pixel_threshold`, pixel), a threshold file, or the stored calibration for this prompt and
        tile setting (`stored_thresholds`; `note` hears why one for another tile setting is not
        used); (None, "") when none is known. `pixel_threshold` overrides the pixel threshold of any.

        Raises:
            InputError: unreadable threshold file, or `pixel_threshold` with no image threshold.
        """
        if threshold is not None:
            pixel = pixel_threshold if pixel_threshold is not None else threshold
            return Thresholds(image=threshold, pixel=pixel, method="manual", model=self.model_name,
                              model_digest=self.digest, size=self.size, tile=self.tile), "--threshold"
        if thresholds_file:
            found, source = read_threshold_file(thresholds_file), str(thresholds_file)
        else:
            found, source = self.stored_thresholds(prompt_key, warn, note), f"stored calibration {self.store_path()}"
        if found is None:
            if pixel_threshold is not None:
                raise InputError("--pixel-threshold needs an image threshold too (--threshold, --thresholds or "
                                 "--calibrate)")
            return None, ""
        if pixel_threshold is not None:
            found.pixel = pixel_threshold
        return found, source

    def calibrate(self, prompts: Sequence[Any], good: Sequence[Path], bad: Sequence[Path] = (),
                  masks: Path | None = None, quantile: float = 0.99, save: Path | None = None,
                  warn: Log = _stderr) -> tuple[Thresholds, Path | None, list[dict[str, str]]]:
        """Choose thresholds on good (and bad) images with the prompt already set, and save them.

        Returns:
            (thresholds, the file they were saved to or None when saving failed, skipped files).
        Raises:
            InputError: see `metauas.runtime.thresholds.calibrate`.
        """
        skipped: list[dict[str, str]] = []
        found = calibrate(self.segmenter, list(good), list(bad), masks, quantile=quantile, model=self.model_name,
                          model_digest=self.digest, prompt_fingerprint=fingerprint(prompts), skipped=skipped)
        target = Path(save).expanduser() if save else self.store_path()
        try:
            saved: Path | None = save_thresholds(found, target, warn=lambda text: warn(f"WARNING: {text}"))
        except (OSError, MetaUASError) as exc:  # the result is still returned (filelock's Timeout is an OSError)
            warn(f"WARNING: could not save thresholds to {target}: {getattr(exc, 'strerror', None) or exc}")
            saved = None
        return found, saved, skipped


def _open_onnx_folder(folder: str, size: int | None, threads: int | None, options: dict[str, Any]) -> Engine:
    meta = OnnxMetadata.read(Path(folder))
    if size and size != meta.size:
        raise InputError(f"the ONNX export {folder} is for size {meta.size}, not {size}")
    seg = OnnxSegmenter(folder, threads=threads, **options)
    return Engine(seg, meta.model or "onnx-export", meta.model or None, meta.model_digest, "onnxruntime", str(folder))


def _cached_export(model: Any, name: str, digest: str, size: int, shots: int, onnx_dir: str | None,
                   log: Log) -> tuple[Path, list[str]]:
    """An export of `model` matching digest/size (from `onnx_dir` or the user cache; written when missing)."""
    requested, shots = shots, 1  # one-shot graphs serve any number of prompts (pixel-wise minimum)
    folder = Path(onnx_dir) if onnx_dir else onnx_cache_dir(digest, size, shots)
    try:
        meta: OnnxMetadata | None = OnnxMetadata.read(folder)
    except InputError:
        meta = None
    if meta is not None and (meta.model_digest != digest or meta.size != size or meta.shots not in (1, requested)):
        if onnx_dir:
            raise InputError(f"the ONNX export {folder} does not match this model/size/prompt count "
                             f"(export: size {meta.size}, {meta.shots} prompt(s)); export again")
        meta = None
    if meta is not None:
        return folder, []
    if onnx_dir and any((folder / n).exists() for n in (ENCODER_FILE, DECODER_FILE)):
        raise InputError(f"{folder} holds an incomplete or foreign ONNX export; export again")
    log(f"exporting the model to ONNX (size {size}, {shots} prompt(s)) into {folder} ...")
    export_onnx(model, folder, OnnxExportConfig(size=size, shots=shots), model_name=name, overwrite=True)
    return folder, [f"ONNX export written to {folder}"]


def open_engine(model: str | None = None, backend: str = "torch", size: int | None = None, shots: int = 1,
                onnx_dir: str | None = None, threads: int | None = None, batch_size: int | None = None,
                log: Log = _stderr, tile: str | int | None = "off",
                memory_budget: float = DEFAULT_MEMORY_BUDGET_GIB) -> Engine:
    """A ready `Engine`: the model (bundled name, file, or None for the default) on a backend.

    Args:
        model: bundled model name or checkpoint path; None: the default model.
        backend: "torch" or "onnxruntime" (an export from `onnx_dir`, else exported once into
            the user cache, `metauas.paths.onnx_cache_dir`).
        size: input size in px (multiple of 32; default: the model's own).
        shots: number of prompt images the engine will get (k-shot).
        onnx_dir: an existing export folder (onnxruntime backend only).
        threads: CPU threads for torch and onnxruntime (`metauas.threads.configure_threads`).
        batch_size: queries (and tiles) per model call; None: from ``memory_budget``.
        log: receives one-line progress notes (default: stderr).
        tile: "off", "auto" or a tile side in px (`metauas.runtime.predictor`).
        memory_budget: peak-memory budget in GiB for automatic batch sizes (default 2).
    Raises:
        InputError: invalid size, backend, export folder, tile option or budget. CheckpointError: the model cannot be opened.
    """
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    configure_threads(threads)
    options: dict[str, Any] = {"batch_size": batch_size, "tile": check_tile(tile), "memory_budget": memory_budget}
    if size is not None:
        check_size(size, "--size")
    if onnx_dir and backend != "onnxruntime":
        raise InputError("--onnx needs --backend onnxruntime")
    if backend == "onnxruntime" and onnx_dir and not model:
        return _open_onnx_folder(onnx_dir, size, threads, options)
    net, name = open_model(model, warn=lambda text: log(f"WARNING: {text}"))
    digest = model_digest(net)
    size = int(size or net.config.image_size)
    if backend == "torch":
        return Engine(Segmenter(net, size=size, **options), name, model, digest, "torch")
    folder, notes = _cached_export(net, name, digest, size, shots, onnx_dir, log)
    seg = OnnxSegmenter(folder, threads=threads, **options)
    return Engine(seg, name, model, digest, "onnxruntime", str(folder), notes)
