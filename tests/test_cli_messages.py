"""Small behaviours of `metauas segment` a new user hit (issue 12): skip messages, symlinks,
glob case, --no-overlay, and result files that are never silently lost (writer thread)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metauas.cli import main
from metauas.errors import InputError
from metauas.io.files import resolve_inputs
from metauas.runtime.results import FolderSink, ResultWriter
from metauas.runtime.predictor import SegmentationResult


def _image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def test_skip_messages_name_the_file_once(tmp_path, tiny_model, capsys):
    prompt = _image(tmp_path / "p.png", 0)
    good = _image(tmp_path / "good.png", 1)
    tiny = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tiny)
    code = main(["segment", "--prompt", str(prompt), "--query", str(good), str(tiny), "--out", str(tmp_path / "o"),
                 "--model", str(tiny_model)])
    out = capsys.readouterr().out
    assert code == 1
    line = next(l for l in out.splitlines() if "too small" in l)
    assert line.count(str(tiny)) == 1, line


def test_symlinks_to_one_file_are_reported(tmp_path, tiny_model, capsys):
    prompt = _image(tmp_path / "p.png", 0)
    folder = tmp_path / "links"
    folder.mkdir()
    target = _image(tmp_path / "real.png", 2)
    for i in range(3):
        os.symlink(target, folder / f"l{i}.png")
    resolved = resolve_inputs([str(folder)])
    assert len(resolved.paths) == 1 and len(resolved.duplicates) == 2
    out = tmp_path / "o"
    code = main(["segment", "--prompt", str(prompt), "--query", str(folder), "--out", str(out),
                 "--model", str(tiny_model), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and err.count("same file") == 2
    data = json.loads((out / "results.json").read_text())
    assert len(data["results"]) == 1 and len(data["duplicates"]) == 2


def test_globs_match_file_names_in_any_case(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    upper = _image(folder / "A.JPG", 1)
    lower = _image(folder / "b.jpg", 2)
    _image(folder / "c.png", 3)
    assert resolve_inputs([str(folder / "*.jpg")]).paths == sorted([upper, lower])
    with pytest.raises(InputError, match="no query images match"):
        resolve_inputs([str(folder / "*.gif")])


def test_no_overlay_writes_maps_and_rows_without_overlays(tmp_path, tiny_model, capsys):
    prompt = _image(tmp_path / "p.png", 0)
    query = _image(tmp_path / "q.png", 1)
    out = tmp_path / "o"
    code = main(["segment", "--prompt", str(prompt), "--query", str(query), "--out", str(out), "--model",
                 str(tiny_model), "--threshold", "0.5", "--no-overlay", "--quiet"])
    assert code == 0
    assert (out / "q_map.png").is_file() and (out / "q_mask.png").is_file()
    assert not (out / "q_overlay.png").exists()
    row = json.loads((out / "results.json").read_text())["results"][0]
    assert row["overlay"] is None and row["mask"] == "q_mask.png"


class _FailingSink(FolderSink):
    def write(self, name: str, data: bytes) -> None:
        if name.endswith("_overlay.png"):
            raise OSError(28, "No space left on device")
        super().write(name, data)


def test_writer_thread_surfaces_write_errors_and_flushes(tmp_path):
    result = SegmentationResult(np.random.default_rng(0).random((20, 24)).astype(np.float32), 0.5, "x")
    rgb = np.zeros((20, 24, 3), np.uint8)
    writer = ResultWriter(FolderSink(tmp_path), queue_size=2)
    for i in range(6):
        writer.add(f"q{i}.png", f"q{i}", rgb, result)
    writer.close()  # every queued file is on disk after close
    assert all((tmp_path / f"q{i}_overlay.png").is_file() for i in range(6))
    failing = ResultWriter(_FailingSink(tmp_path / "f"), queue_size=2)
    (tmp_path / "f").mkdir()
    with pytest.raises(OSError, match="No space"):
        for i in range(6):
            failing.add(f"q{i}.png", f"q{i}", rgb, result)
        failing.close()


def test_cli_reports_a_failing_result_write_as_one_error_line(tmp_path, tiny_model, capsys, monkeypatch):
    import metauas.inference.commands as commands

    monkeypatch.setattr(commands, "FolderSink", _FailingSink)
    prompt = _image(tmp_path / "p.png", 0)
    query = _image(tmp_path / "q.png", 1)
    code = main(["segment", "--prompt", str(prompt), "--query", str(query), "--out", str(tmp_path / "o"),
                 "--model", str(tiny_model), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write results" in err and "No space" in err
