"""Hostile image files: one boundary (allow-listed Pillow formats), one-line skips in a CLI batch,
4xx {"error"} answers from the web API, and Ghostscript never started."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hostile import POSTSCRIPT, encode, fake_ghostscript, hostile_images, path_with, rgb_image
from metauas.cli import main
from metauas.errors import InputError, UnsupportedImageError
from metauas.inference.images import decode_image


@pytest.fixture
def ghostscript_trap(tmp_path, monkeypatch) -> Path:
    """A fake `gs` first on PATH; Pillow's cached Ghostscript lookup is reset so it would be found."""
    from PIL import EpsImagePlugin

    record = fake_ghostscript(tmp_path / "fakebin")
    monkeypatch.setenv("PATH", path_with(tmp_path / "fakebin"))
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)
    return record


def test_the_ghostscript_trap_catches_an_unrestricted_pillow(tmp_path):
    """The detector works: plain `Image.open(...).load()` on the PostScript file starts `gs`."""
    record = fake_ghostscript(tmp_path / "fakebin")
    ps = tmp_path / "postscript.png"
    ps.write_bytes(POSTSCRIPT)
    code = "from PIL import Image\ntry:\n    Image.open(%r).load()\nexcept Exception:\n    pass\n" % str(ps)
    subprocess.run([sys.executable, "-c", code], env={"PATH": path_with(tmp_path / "fakebin")}, check=True,
                   timeout=120)
    assert record.exists()


def test_decode_image_refuses_every_hostile_file(ghostscript_trap):
    for name, data, why in hostile_images():
        with pytest.raises(InputError) as info:
            decode_image(data, name)
        message = str(info.value)
        assert "\n" not in message and name in message, (why, message)
    assert not ghostscript_trap.exists()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF", "WEBP"])
def test_random_mutations_end_in_an_input_error_or_an_image(fmt):
    """200 seeded byte mutations per allowed format: decoded, or refused with InputError, nothing else."""
    data = encode(rgb_image(48, 40, 3), fmt)
    rng = np.random.default_rng(len(fmt))
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(200):
        mutant = bytearray(data)
        if rng.random() < 0.3:
            mutant = mutant[: int(rng.integers(1, len(mutant)))]
        for pos in rng.integers(0, len(mutant), int(rng.integers(1, 8))):
            mutant[pos] = int(rng.integers(0, 256))
        try:
            rgb = decode_image(bytes(mutant), "mutant")
        except InputError as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
        else:
            assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
            outcomes["decoded"] += 1
    assert outcomes["refused"] > 0


def test_allowed_formats_still_decode():
    rgb = rgb_image(40, 48, 5)
    for fmt in ("PNG", "BMP", "TIFF"):
        assert np.array_equal(decode_image(encode(rgb, fmt), fmt), rgb)
    for fmt in ("JPEG", "WEBP"):
        assert decode_image(encode(rgb, fmt), fmt).shape == rgb.shape
    with pytest.raises(UnsupportedImageError):
        decode_image(encode(rgb, "GIF"), "gif")


def test_cli_batch_skips_each_hostile_file_with_one_line(tmp_path, tiny_model, ghostscript_trap, capsys,
                                                         monkeypatch):
    monkeypatch.setenv("METAUAS_HOME", str(tmp_path / "home"))
    folder = tmp_path / "queries"
    folder.mkdir()
    hostile = []
    for name, data, _ in hostile_images():
        (folder / name).write_bytes(data)
        hostile.append(folder / name)
    good = folder / "good.png"
    good.write_bytes(encode(rgb_image(70, 80, 1), "PNG"))
    prompt = tmp_path / "prompt.png"
    prompt.write_bytes(encode(rgb_image(64, 64, 2), "PNG"))
    out = tmp_path / "out"
    code = main(["segment", "--prompt", str(prompt), "--query", str(good), *map(str, hostile), "--out", str(out),
                 "--model", str(tiny_model), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    skipped_lines = [line for line in err.splitlines() if line.startswith("metauas: skipped ")]
    assert len(skipped_lines) == len(hostile), err
    for path in hostile:
        assert sum(str(path) in line for line in skipped_lines) == 1
    data = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in data["results"]] == ["good"]
    assert (out / "good_map.png").is_file()
    assert {Path(s["path"]).name for s in data["skipped"]} == {p.name for p in hostile}
    assert not ghostscript_trap.exists(), ghostscript_trap.read_text()


def test_cli_hostile_prompt_is_one_error_line(tmp_path, tiny_model, ghostscript_trap, capsys, monkeypatch):
    monkeypatch.setenv("METAUAS_HOME", str(tmp_path / "home"))
    prompt = tmp_path / "prompt.png"
    prompt.write_bytes(POSTSCRIPT)
    query = tmp_path / "q.png"
    query.write_bytes(encode(rgb_image(64, 64, 1), "PNG"))
    code = main(["segment", "--prompt", str(prompt), "--query", str(query), "--out", str(tmp_path / "out"),
                 "--model", str(tiny_model)])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("metauas: error: "), lines
    assert "supported" in lines[0]
    assert not ghostscript_trap.exists()


# ---------------------------------------------------------------------------- web API
fastapi = pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def web_base():
    from test_web import LiveServer

    from metauas.inference.segmenter import Segmenter
    from metauas.models import MetaUAS, ModelConfig
    from metauas.web.app import SegmentService, WebConfig, create_app

    torch.manual_seed(0)
    model = MetaUAS(ModelConfig(encoder="efficientnet-lite0", image_size=64)).eval()
    service = SegmentService(Segmenter(model), "tiny-test", backend="torch", config=WebConfig())
    with LiveServer(create_app(service)) as url:
        yield url


def test_web_answers_each_hostile_file_with_a_4xx_json_error(web_base, ghostscript_trap):
    from test_web import post

    prompt = [("prompt", "p.png", encode(rgb_image(64, 64, 2), "PNG"))]
    for name, data, why in hostile_images():
        status, body, kind = post(web_base, prompt + [("query", name, data)])
        assert 400 <= status < 500 and kind.startswith("application/json"), (why, status, body)
        assert set(body) == {"error"} and name in body["error"] and "\n" not in body["error"], (why, body)
        # the same file as the prompt
        status, body, _ = post(web_base, [("prompt", name, data), ("query", "q.png", prompt[0][2])])
        assert 400 <= status < 500 and "error" in body, (why, status, body)
    for name in ("postscript.png", "texture.dds", "sprite.blp", "anim.gif", "icon.ico"):
        data = dict((n, d) for n, d, _ in hostile_images())[name]
        status, body, _ = post(web_base, prompt + [("query", name, data)])
        assert status == 415, (name, status, body)
    status, body, _ = post(web_base, prompt + [("query", "ok.png", prompt[0][2])])
    assert status == 200 and len(body["results"]) == 1
    assert not ghostscript_trap.exists()
