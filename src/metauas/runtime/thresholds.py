"""Choosing decision thresholds for anomaly maps, and remembering them beside the model.

MetaUAS outputs per-pixel change probabilities; turning them into a yes/no decision needs a
threshold that depends on the model, the input size and the normal (prompt) image. Two ways:

* Good images only: the image threshold is a high quantile of the image scores
  (`metauas.scoring.image_score`) of known-good images, so at most (1 - quantile) of good
  images are flagged; the pixel threshold is the same quantile of the good maps' maxima (at
  least the image threshold), so good images at or below that quantile get empty masks.
* A few labelled bad images as well: thresholds maximise F1 (image level on scores of good
  and bad images; pixel level on pixels of bad images with masks plus the good images).

Decisions are strict: anomalous when score > image threshold, mask pixel when p > pixel
threshold. Results are saved as JSON beside the model file (or, for bundled/untrained models,
in the user data folder), keyed by model, input size, tile setting and a fingerprint of the
prompt images, so a later `metauas segment` with the same prompt and tile setting finds them.
Tiled maps are scored differently (`metauas.scoring.tiled_image_score`), so thresholds
calibrated with one tile setting are not used with another; entries written before the tile
setting was recorded count as tile "off".
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from metauas.atomic import atomic_write_text
from metauas.constants import IMAGE_SUFFIXES
from metauas.errors import InputError
from metauas.io.images import read_mask
from metauas.paths import metauas_home, safe_name
from metauas.runtime.predictor import Predictor
from metauas.schemas import check_threshold_entry, check_threshold_store

STORE_VERSION = 1
PIXEL_BINS = 4096  # histogram resolution of pixel-level F1 (threshold step 1/4096)


SegmenterLike = Predictor  # what calibration runs: any backend of metauas.runtime


@dataclass
class Thresholds:
    """Image- and pixel-level thresholds plus what they were derived from."""

    image: float
    pixel: float
    method: str = "manual"  # manual | good-quantile | f1
    model: str = ""
    model_digest: str = ""  # SHA-256 of the weights: thresholds belong to exactly these weights
    size: int = 0
    prompt_fingerprint: str = ""
    tile: str = "off"  # the tile setting calibrated with ("off", "auto" or a side in px, as text)
    quantile: float | None = None
    num_good: int = 0
    num_bad: int = 0
    good_scores: dict[str, float] = field(default_factory=dict)  # min / median / max
    image_f1: float | None = None
    pixel_f1: float | None = None
    good_flagged: float | None = None  # fraction of good images above the image threshold
    created: str = ""

    def __post_init__(self) -> None:
        for name in ("image", "pixel"):
            value = float(getattr(self, name))
            if not np.isfinite(value) or not 0.0 <= value <= 1.0:
                raise InputError(f"{name} threshold must be between 0 and 1, got {value}")
            setattr(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-ready dict (the threshold file's entry)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "threshold file") -> "Thresholds":
        """Raises InputError for a missing or mistyped field (see metauas.schemas)."""
        data = check_threshold_entry(data, source)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["tile"] = tile_key(known.get("tile", "off"))
        return cls(**known)

    def describe(self) -> str:
        """One line for people: both thresholds and how they were chosen, e.g. "image threshold
        0.4210, pixel threshold 0.5000 (good-quantile, q=0.99 of 20 good images)".
        """
        text = f"image threshold {self.image:.4f}, pixel threshold {self.pixel:.4f} ({self.method}"
        if self.method == "good-quantile":
            text += f", q={self.quantile} of {self.num_good} good images"
        elif self.method == "f1":
            text += f", {self.num_good} good + {self.num_bad} bad images"
            if self.image_f1 is not None:
                text += f", image F1 {self.image_f1:.3f}"
            if self.pixel_f1 is not None:
                text += f", pixel F1 {self.pixel_f1:.3f}"
        return text + ")"


def tile_key(tile: Any) -> str:
    """The stored form of a tile setting: "off" (also for None), "auto" or the side in px as text."""
    return "off" if tile is None else str(tile).strip().lower()


# ---------------------------------------------------------------------------- maths
def quantile_threshold(good_scores: Sequence[float], quantile: float) -> float:
    """Smallest observed good score with at least `quantile` of good scores at or below it.

    Raises:
        InputError: quantile outside (0, 1], or no good scores.
    """
    if not 0.0 < quantile <= 1.0:
        raise InputError(f"quantile must be in (0, 1], got {quantile}")
    scores = np.asarray(good_scores, dtype=np.float64)
    if scores.size == 0:
        raise InputError("no good images to calibrate on")
    return float(np.quantile(scores, quantile, method="inverted_cdf"))


def f1_threshold(scores: Sequence[float], labels: Sequence[int]) -> tuple[float, float]:
    """Threshold t maximising F1 of the rule `score > t`; returns (t, F1).

    t lies half-way between the lowest score still called anomalous and the next lower score,
    so the rule is robust to tiny numerical differences between backends.
    Raises:
        InputError: no bad (anomalous) example.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.size == 0 or not y.any():
        raise InputError("F1 calibration needs at least one bad (anomalous) example")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # last index of each distinct value
    tp = np.cumsum(y)[distinct]
    fp = (distinct + 1) - tp
    f1 = 2 * tp / (2 * tp + fp + (y.sum() - tp))
    best = int(np.argmax(f1))
    lowest_positive = s[distinct[best]]
    below = s[distinct[best] + 1] if distinct[best] + 1 < s.size else max(0.0, lowest_positive - 1e-6)
    return float((lowest_positive + below) / 2.0), float(f1[best])


class PixelF1:
    """Streaming pixel-level F1 over histograms (images may be large; nothing is stored)."""

    def __init__(self, bins: int = PIXEL_BINS) -> None:
        self.bins = bins
        self.pos = np.zeros(bins, np.int64)
        self.neg = np.zeros(bins, np.int64)

    def add(self, anomaly_map: np.ndarray, mask: np.ndarray | None) -> None:
        """Count one map's pixels into the histograms.

        Args:
            anomaly_map: (H, W) float in [0, 1].
            mask: (H, W) ground truth, nonzero = anomalous; None for a good image (all normal).
        """
        index = np.clip((anomaly_map * self.bins).astype(np.int64), 0, self.bins - 1).ravel()
        truth = np.zeros(index.shape, bool) if mask is None else mask.ravel().astype(bool)
        self.pos += np.bincount(index[truth], minlength=self.bins)
        self.neg += np.bincount(index[~truth], minlength=self.bins)

    def best(self) -> tuple[float, float]:
        """The pixel threshold with the best F1 over all added pixels (resolution 1 / bins).

        Returns:
            (threshold in [0, 1], its F1).
        Raises:
            InputError: no anomalous pixel was added.
        """
        if self.pos.sum() == 0:
            raise InputError("pixel calibration needs masks with at least one anomalous pixel")
        # predicting bins >= i positive  <=>  p > i / bins (up to the bin width)
        tp = np.cumsum(self.pos[::-1])[::-1]
        fp = np.cumsum(self.neg[::-1])[::-1]
        fn = self.pos.sum() - tp
        f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        best = int(np.argmax(f1))
        return float(best / self.bins), float(f1[best])


# ---------------------------------------------------------------------------- calibration
def _load_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A user's ground-truth mask: pixels brighter than half scale, resized (nearest) to `shape`."""
    return read_mask(path, shape, level=0.5)


def find_mask(image: Path, mask_dir: Path) -> Path | None:
    """Mask for `image` in `mask_dir`: same stem, or stem + '_mask' (MVTec AD layout)."""
    for stem in (image.stem, f"{image.stem}_mask"):
        for suffix in IMAGE_SUFFIXES:
            candidate = mask_dir / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def calibrate(segmenter: SegmenterLike, good: Sequence[Path], bad: Sequence[Path] = (),
              mask_dir: Path | None = None, quantile: float = 0.99, model: str = "",
              model_digest: str = "", prompt_fingerprint: str = "", skipped: list[dict[str, str]] | None = None) -> Thresholds:
    """Run the model on good (and optional bad) images and choose thresholds.

    Args:
        segmenter: a `Predictor` with its prompt set (torch or onnxruntime backend).
        good, bad: image files; `mask_dir` holds masks of the bad images (`find_mask`).
        quantile: with good images only, the share of good images kept below the threshold.
    Returns:
        `Thresholds` (image and pixel, in [0, 1]); see the module docstring for the rules.
    Raises:
        InputError: no readable good image, F1 without bad examples, missing mask folder.

    Unreadable files are skipped and appended to `skipped` ({path, error}).
    """
    skipped = skipped if skipped is not None else []
    if not good:
        raise InputError("calibration needs at least one good image")
    if bad and mask_dir is not None and not Path(mask_dir).is_dir():
        raise InputError(f"mask folder not found: {mask_dir}")

    def run(paths: Iterable[Path]):
        paths = list(paths)
        for outcome in segmenter.iter_segment(paths, names=[str(p) for p in paths], skip_unreadable=True):
            if outcome.result is None:
                skipped.append({"path": str(outcome.source), "error": str(outcome.error)})
                continue
            yield Path(outcome.source), outcome.result.anomaly_map, float(outcome.result.score)  # type: ignore

    pixels = PixelF1()
    use_masks = bool(bad) and mask_dir is not None
    good_scores: list[float] = []
    good_maxima: list[float] = []
    for _, amap, score in run(good):
        good_scores.append(score)
        good_maxima.append(float(amap.max()))
        if use_masks:
            pixels.add(amap, None)
    if not good_scores:
        raise InputError("none of the good calibration images could be read")
    bad_scores: list[float] = []
    masked = 0
    for path, amap, score in run(bad):
        bad_scores.append(score)
        if use_masks:
            mask_path = find_mask(path, Path(mask_dir))  # type: ignore[arg-type]
            if mask_path is None:
                skipped.append({"path": str(path), "error": f"no mask in {mask_dir} (used for image level only)"})
                continue
            pixels.add(amap, _load_mask(mask_path, amap.shape))
            masked += 1

    stats = {"min": float(np.min(good_scores)), "median": float(np.median(good_scores)),
             "max": float(np.max(good_scores))}
    common = dict(model=model, model_digest=model_digest, size=int(segmenter.size), prompt_fingerprint=prompt_fingerprint,
                  tile=tile_key(getattr(segmenter, "tile", "off")),
                  num_good=len(good_scores), num_bad=len(bad_scores), good_scores=stats,
                  created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if not bad_scores:
        t = quantile_threshold(good_scores, quantile)
        # the same quantile of the map maxima: a good image below it gets an empty mask
        t_pixel = max(t, quantile_threshold(good_maxima, quantile))
        flagged = float(np.mean(np.asarray(good_scores) > t))
        return Thresholds(image=t, pixel=t_pixel, method="good-quantile", quantile=quantile,
                          good_flagged=flagged, **common)
    t_image, f1_image = f1_threshold(good_scores + bad_scores, [0] * len(good_scores) + [1] * len(bad_scores))
    t_pixel, f1_pixel = (pixels.best() if masked else (t_image, None))
    flagged = float(np.mean(np.asarray(good_scores) > t_image))
    return Thresholds(image=t_image, pixel=t_pixel, method="f1", image_f1=f1_image, pixel_f1=f1_pixel,
                      good_flagged=flagged, **common)


# ---------------------------------------------------------------------------- storage
def fingerprint(items: Sequence[Any]) -> str:
    """SHA-256 over the prompt images' bytes (files) or pixels (arrays), in order."""
    digest = hashlib.sha256()
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            with open(item, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        elif isinstance(item, bytes):
            digest.update(item)
        else:
            array = np.ascontiguousarray(np.asarray(item))
            digest.update(str(array.shape).encode())
            digest.update(array.tobytes())
        digest.update(b"\0")
    return digest.hexdigest()


def store_path(model_ref: str | None, model_name: str) -> Path:
    """Where thresholds for a model live: beside a model file, else in the user data folder."""
    if model_ref:
        path = Path(model_ref).expanduser()
        if path.is_file():
            return path.with_name(f"{path.name}.thresholds.json")
    return metauas_home() / "thresholds" / f"{safe_name(model_name) if model_name else 'model'}.json"


def _read_store(path: Path) -> list[dict[str, Any]]:
    """The checked entries of a store; [] when there is none. Raises InputError when corrupt."""
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        raise InputError(f"threshold file {path} is unreadable or not a metauas threshold file") from None
    return check_threshold_store(data, str(path))


def store_lock(path: Path):
    """An inter-process lock for read-modify-write of the store at `path` (a hidden .lock beside it)."""
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path.with_name(f".{path.name}.lock")), timeout=60)


def _key(entry: dict[str, Any]) -> tuple[Any, ...]:
    return (entry.get("model_digest"), int(entry.get("size", 0)), entry.get("prompt_fingerprint"),
            tile_key(entry.get("tile", "off")))


def save_thresholds(thresholds: Thresholds, path: Path, warn: Any = None) -> Path:
    """Insert/replace the entry for (model, size, prompt, tile) in the JSON store, atomically and under
    an inter-process lock (two concurrent calibrations keep both entries).

    A corrupt store is moved aside to `<name>.corrupt` and replaced by a fresh one; `warn(text)`
    is told so (a corrupt store never loses the new result).

    Raises:
        OSError: the folder is not writable.
    """
    path = Path(path)
    with store_lock(path):
        try:
            entries = _read_store(path)
        except InputError as exc:
            backup = path.with_name(f"{path.name}.corrupt")
            os.replace(path, backup)
            if warn is not None:
                warn(f"{exc}; moved it to {backup} and started a new one")
            entries = []
        entries = [e for e in entries if _key(e) != _key(thresholds.to_dict())]
        entries.append(thresholds.to_dict())
        payload = json.dumps({"version": STORE_VERSION, "entries": entries}, indent=2) + "\n"
        return atomic_write_text(path, payload)


def load_thresholds(path: Path, model_digest: str | None = None, size: int | None = None,
                    prompt_fingerprint: str | None = None, tile: Any = None) -> Thresholds | None:
    """The stored entry matching the given fields (None = any); the newest one if several.

    ``tile`` compares with `tile_key` (an entry without a tile setting counts as "off").

    Raises:
        InputError: the store is unreadable or not a threshold store.
    """
    matches = [e for e in _read_store(Path(path))
               if (model_digest is None or e.get("model_digest") == model_digest)
               and (size is None or int(e.get("size", 0)) == size)
               and (prompt_fingerprint is None or e.get("prompt_fingerprint") == prompt_fingerprint)
               and (tile is None or tile_key(e.get("tile", "off")) == tile_key(tile))]
    return Thresholds.from_dict(matches[-1], f"threshold file {path}") if matches else None


def read_threshold_file(path: str | os.PathLike) -> Thresholds:
    """A threshold file given by the user: a store (newest entry) or one bare entry.

    Raises:
        InputError: missing file, invalid JSON, not a threshold file, or no entries.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"threshold file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        raise InputError(f"threshold file {path} is not valid JSON") from None
    if isinstance(data, dict) and "entries" in data:
        entry = load_thresholds(path)
        if entry is None:
            raise InputError(f"threshold file {path} has no entries")
        return entry
    if isinstance(data, dict):
        return Thresholds.from_dict(data, f"threshold file {path}")
    raise InputError(f"threshold file {path} is not a metauas threshold file")
