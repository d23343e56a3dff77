"""Segmenting a list of query files into result files (what `metauas segment` does, minus the CLI).

`segment_files` runs the predictor's one loop (`Predictor.iter_segment`, unreadable queries
skipped and listed), hands every result to a `ResultWriter` (PNGs written on its thread) and
returns the rows; `summary` is the header of results.json.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from metauas.errors import InputError
from metauas.runtime.engine import Engine
from metauas.runtime.predictor import Predictor
from metauas.runtime.results import ResultWriter
from metauas.runtime.thresholds import Thresholds, fingerprint
from metauas.tiling import should_tile


@dataclass
class BatchRun:
    """What `segment_files` produced: result rows, skipped inputs ({path, error}), seconds."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def skip_message(path: str, error: str) -> str:
    """"<path>: <error>" without repeating the path when the error already starts with it."""
    return error if error.startswith(f"{path}:") or error.endswith(f": {path}") else f"{path}: {error}"


def tiling_hint(segmenter: Predictor, hw: tuple[int, int]) -> str | None:
    """A one-line hint when a query of size ``hw`` (H, W) is much larger than the model size
    (`metauas.tiling.should_tile`) and tiling is off; None otherwise."""
    if segmenter.tile != "off" or not should_tile(hw[0], hw[1], segmenter.size):
        return None
    factor = max(hw) / segmenter.size
    return (f"a {hw[1]}x{hw[0]} px query is shrunk {factor:.1f}x to the model size ({segmenter.size} px), so small "
            "defects may be missed; --tile auto segments large queries at their own scale (docs/highres.md)")


def segment_files(engine: Engine, queries: Sequence[Path], names: Sequence[str], writer: ResultWriter,
                  progress: Callable[[int], None] | None = None,
                  notice: Callable[[str], None] | None = None) -> BatchRun:
    """Segment `queries` (prompt already set) and record each result in `writer`.

    Args:
        engine: the engine whose predictor runs.
        queries: image files; `names`: one output base name per query (`output_names`).
        writer: receives every result (rows + PNG files); closed (flushed, errors raised) here.
        progress: called with the number of queries finished after each one.
        notice: receives `tiling_hint` once, for the first query that gets one.
    Returns:
        `BatchRun`. Unreadable queries are skipped with their error.
    Raises:
        InputError: none of the queries could be read. OSError: a result file could not be written.
    """
    started = time.perf_counter()
    run = BatchRun()
    try:
        for outcome in engine.segmenter.iter_segment(list(queries), names=list(names), skip_unreadable=True):
            if outcome.result is None:
                path = str(outcome.source)
                run.skipped.append({"path": path, "error": skip_message(path, str(outcome.error))})
            else:
                if notice is not None:
                    hint = tiling_hint(engine.segmenter, outcome.image.rgb.shape[:2])  # type: ignore[union-attr]
                    if hint is not None:
                        notice(hint)
                        notice = None
                label = Path(str(outcome.source)).name
                writer.add(str(outcome.source), outcome.name, outcome.image.rgb, outcome.result, label)  # type: ignore
            if progress is not None:
                progress(1)
    finally:
        writer.close()  # waits for every PNG; raises the first write error
    run.rows = writer.rows
    run.seconds = time.perf_counter() - started
    if not run.rows:
        if len(run.skipped) == 1:
            raise InputError(run.skipped[0]["error"])
        raise InputError(f"none of the {len(run.skipped)} query images could be read "
                         f"(first: {run.skipped[0]['error']})")
    return run


def summary(engine: Engine, prompts: Sequence[Path], prompt_mode: str, thresholds: Thresholds | None,
            source: str, run: BatchRun, duplicates: Sequence[tuple[Path, Path]] = ()) -> dict[str, Any]:
    """The header of results.json (rows are added by `ResultWriter.write_tables`)."""
    return {
        "model": engine.model_name, "model_digest": engine.digest, "backend": engine.backend,
        "onnx": engine.onnx_dir, "size": engine.size, "tile": engine.segmenter.tile,
        "batch_size": engine.segmenter.batch_size or engine.segmenter.auto_batch(),
        "memory_budget_gib": engine.segmenter.memory_budget, "prompts": [str(p) for p in prompts],
        "prompt_mode": prompt_mode, "prompt_fingerprint": fingerprint(prompts),
        "thresholds": None if thresholds is None else {**thresholds.to_dict(), "source": source},
        "skipped": run.skipped, "duplicates": [{"path": str(a), "same_as": str(b)} for a, b in duplicates],
        "seconds": round(run.seconds, 3),
    }
