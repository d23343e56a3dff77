"""THE results writer: decision rule, result rows, results.json / results.csv, map, overlay
and mask PNGs, for the CLI (a folder) and the web app (a zip) alike.

Rules (written into every results.json as ``decision_rule``):

* image decision: ``anomalous`` when score > thresholds.image, else ``normal`` (None without
  thresholds);
* mask: pixel anomalous when p > thresholds.pixel; ``anomalous_fraction`` is their share.

PNG encoding runs on a writer thread behind a bounded queue (`ResultWriter`), so the model does
not wait for it; `ResultWriter.close` waits for every file and re-raises the first write error,
so no command reports success while results are missing. Files in a folder are written
atomically (temporary file + rename): an interrupted run never leaves half a PNG.
"""

from __future__ import annotations

import csv
import io
import json
import queue
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from metauas.atomic import atomic_write_bytes
from metauas.paths import safe_name
from metauas.runtime.predictor import SegmentationResult
from metauas.runtime.thresholds import Thresholds
from metauas.runtime.visualize import binary_mask, encode_png, map_to_uint16, render_overlay

CSV_COLUMNS = ("query", "name", "width", "height", "score", "decision", "anomalous_fraction", "map", "overlay",
               "mask", "scaling", "prompts")
DECISION_RULE = "anomalous when score > thresholds.image; mask pixel when p > thresholds.pixel"
SCORE_RULE = ("mean of the top 0.1 % of the anomaly map (metauas.scoring.image_score); tiled maps: of the top "
              "0.1 % of one tile's pixel count (metauas.scoring.tiled_image_score)")
RESULT_SUFFIXES = ("_map.png", "_overlay.png", "_mask.png")
TABLE_FILES = ("results.json", "results.csv", "thresholds.json")


# ============================================================================ rules
def decide(score: float, thresholds: Thresholds | None) -> str | None:
    """"anomalous" when score > thresholds.image, "normal" otherwise, None without thresholds."""
    if thresholds is None:
        return None
    return "anomalous" if score > thresholds.image else "normal"


def anomalous_fraction(anomaly_map: np.ndarray, thresholds: Thresholds | None) -> float | None:
    """Share of pixels with p > thresholds.pixel (None without thresholds)."""
    if thresholds is None:
        return None
    return float(np.count_nonzero(anomaly_map > thresholds.pixel)) / anomaly_map.size


def output_names(paths: Sequence[Path]) -> list[str]:
    """A unique, file-system-safe base name per query (stem; parent_stem or _2 on clashes)."""
    stems = [safe_name(p.stem) for p in paths]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    names: list[str] = []
    used: set[str] = set()
    for path, stem in zip(paths, stems):
        name = stem if counts[stem] == 1 else safe_name(f"{path.parent.name}_{path.stem}")
        names.append(unique_name(name, used, limit=None))
    return names


def unique_name(stem: str, used: set[str], limit: int | None = 80) -> str:
    """`stem` made file-system-safe and unique in `used` (case-insensitive: _2, _3, ...); adds it."""
    stem = safe_name(stem, limit)
    name, i = stem, 2
    while name.lower() in used:
        name, i = f"{stem}_{i}", i + 1
    used.add(name.lower())
    return name


def result_row(query: str, name: str, result: SegmentationResult, hw: tuple[int, int],
               thresholds: Thresholds | None, prompts: Sequence[str], overlay: bool = True) -> dict[str, Any]:
    """One row of results.json/csv: scores, decision, anomalous fraction and file names."""
    return {"query": query, "name": name, "width": int(hw[1]), "height": int(hw[0]),
            "score": float(result.score), "decision": decide(result.score, thresholds),
            "anomalous_fraction": anomalous_fraction(result.anomaly_map, thresholds),
            "map": f"{name}_map.png", "overlay": f"{name}_overlay.png" if overlay else None,
            "mask": f"{name}_mask.png" if thresholds is not None else None,
            "prompts": [prompts[i] for i in result.prompts if i < len(prompts)], "scaling": result.scaling,
            "tile": result.tile}


def results_csv(rows: Sequence[dict[str, Any]]) -> str:
    """results.csv text (columns CSV_COLUMNS; scores with 6 decimals, prompts joined by ';')."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([r["query"], r["name"], r["width"], r["height"], f"{r['score']:.6f}", r["decision"] or "",
                         "" if r["anomalous_fraction"] is None else f"{r['anomalous_fraction']:.6f}",
                         r["map"], r["overlay"] or "", r["mask"] or "", r.get("scaling", ""),
                         ";".join(r.get("prompts", []))])
    return buffer.getvalue()


def result_images(rgb: np.ndarray, result: SegmentationResult, label: str, thresholds: Thresholds | None,
                  overlay: bool = True) -> dict[str, bytes]:
    """PNG files of one result: {"_map.png": 16-bit map, "_overlay.png", "_mask.png" (0/255)}."""
    files = {"_map.png": encode_png(map_to_uint16(result.anomaly_map))}
    if thresholds is not None:
        files["_mask.png"] = encode_png(binary_mask(result.anomaly_map, thresholds.pixel))
    if overlay:
        title = f"{label}   score {result.score:.3f}"
        decision = decide(result.score, thresholds)
        if decision is not None:
            title += f"   {decision.upper()} (threshold {thresholds.image:.3f})"  # type: ignore[union-attr]
        canvas = render_overlay(rgb, result.anomaly_map, title=title,
                                threshold=thresholds.pixel if thresholds is not None else None)
        files["_overlay.png"] = encode_png(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    return files


# ============================================================================ sinks
class FolderSink:
    """Writes result files into a folder, each atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def write(self, name: str, data: bytes) -> None:
        """Write `data` to ``folder/name`` atomically.

        Raises:
            OSError: the file cannot be written.
        """
        atomic_write_bytes(self.folder / name, data)


class ZipSink:
    """Writes result files into an in-memory zip (`value()` returns its bytes after `close`)."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.zip = zipfile.ZipFile(self.buffer, "w", zipfile.ZIP_DEFLATED)

    def write(self, name: str, data: bytes) -> None:
        """Add `data` to the archive as `name`."""
        self.zip.writestr(name, data)

    def value(self) -> bytes:
        """Close the archive and return its bytes (no writes after this)."""
        self.zip.close()
        return self.buffer.getvalue()


# ============================================================================ writer
@dataclass
class ResultWriter:
    """Collects result rows and writes their files through `sink` on a background thread.

    Args:
        sink: `FolderSink` or `ZipSink` (anything with ``write(name, bytes)``).
        thresholds: decision/mask thresholds, or None (scores only, no masks).
        prompts: prompt labels (results record which were compared with each query).
        overlay: also write ``<name>_overlay.png`` (the slowest file; off: `--no-overlay`).
        queue_size: results waiting for the writer thread at most (bounds memory); 0: write
            in the caller's thread.
    """

    sink: Any
    thresholds: Thresholds | None = None
    prompts: Sequence[str] = ()
    overlay: bool = True
    queue_size: int = 4
    rows: list[dict[str, Any]] = field(default_factory=list)
    _queue: queue.Queue | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _error: BaseException | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.queue_size > 0:
            self._queue = queue.Queue(maxsize=self.queue_size)
            self._thread = threading.Thread(target=self._work, name="metauas-results", daemon=True)
            self._thread.start()

    def add(self, query: str, name: str, rgb: np.ndarray, result: SegmentationResult,
            label: str | None = None) -> dict[str, Any]:
        """Record one result: its row now, its PNG files on the writer thread.

        Raises:
            OSError: an earlier file could not be written (raised at the next call or `close`).
        """
        self._raise_pending()
        row = result_row(query, name, result, rgb.shape[:2], self.thresholds, self.prompts, self.overlay)
        self.rows.append(row)
        job = (name, rgb, result, label or name)
        if self._queue is None:
            self._write(job)
        else:
            self._queue.put(job)
        return row

    def _write(self, job: tuple[str, np.ndarray, SegmentationResult, str]) -> None:
        name, rgb, result, label = job
        for suffix, data in result_images(rgb, result, label, self.thresholds, self.overlay).items():
            self.sink.write(f"{name}{suffix}", data)

    def _work(self) -> None:
        assert self._queue is not None
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    self._write(job)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller in close()
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Wait until every queued file is written; re-raise the first write error.

        Raises:
            OSError (or any error of the sink): a result file could not be written.
        """
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)  # type: ignore[union-attr]
            self._thread.join()
        self._raise_pending()

    def write_tables(self, summary: dict[str, Any], thresholds_file: bool = True) -> None:
        """results.json (`summary` plus "results": the rows) and results.csv; thresholds.json
        when thresholds are known and `thresholds_file`. Call after `close`.

        Raises:
            OSError (or any error of the sink): a file could not be written.
        """
        payload = {**summary, "decision_rule": DECISION_RULE, "score_rule": SCORE_RULE, "results": self.rows}
        self.sink.write("results.json", (json.dumps(payload, indent=2) + "\n").encode())
        self.sink.write("results.csv", results_csv(self.rows).encode())
        if self.thresholds is not None and thresholds_file:
            self.sink.write("thresholds.json", (json.dumps(self.thresholds.to_dict(), indent=2) + "\n").encode())

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        elif self._thread is not None and self._thread.is_alive():
            self._queue.put(None)  # type: ignore[union-attr]
            self._thread.join()

