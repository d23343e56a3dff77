"""One runtime behind every face: the Python API, the CLI, the web JSON API and the onnxruntime
backend give the same scores, decisions, masks and results.csv columns for the same prompt,
queries and stored calibration (issue 12)."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from metauas.cli import build_parser, main
from metauas.models import MetaUAS, ModelConfig, save_safetensors
from metauas.runtime import open_engine
from metauas.runtime.results import CSV_COLUMNS, FolderSink, ResultWriter
from metauas.runtime.thresholds import Thresholds, fingerprint, save_thresholds

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

SIZE = 64


def _texture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8), (w, h))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model with spread-out probabilities, a prompt, four queries (two with a defect)
    and a stored calibration whose pixel threshold differs from its image threshold."""
    root = tmp_path_factory.mktemp("one")
    torch.manual_seed(0)
    model = MetaUAS(ModelConfig(encoder="efficientnet-lite0", image_size=SIZE), pretrained_encoder=True).eval()
    with torch.no_grad():  # logits with std ~3, so maps cover (0, 1) and thresholds matter
        x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
        logits = model.logits(x[:1], x[1:])
        scale = 3.0 / float(logits.std())
        model.mask_head.weight.mul_(scale)
        model.mask_head.bias.mul_(scale).sub_(float(logits.mean()) * scale)
    model_path = root / "spread.safetensors"
    save_safetensors(model, model_path)
    base = _texture(80, 96, 1)
    prompt = root / "prompt.png"
    Image.fromarray(base).save(prompt)
    queries = []
    for i in range(4):
        q = base.copy() if i < 2 else _texture(80, 96, 10 + i)
        if i % 2:
            q[20:44, 30:60] = (250, 20, 200)  # a defect
        queries.append(root / f"q{i}.png")
        Image.fromarray(q).save(queries[-1])
    return root, model_path, prompt, queries


def _api(model_path: Path, prompt: Path, queries: list[Path], out: Path, backend: str = "torch"):
    engine = open_engine(model=str(model_path), backend=backend)
    engine.segmenter.set_prompt([str(prompt)])
    thresholds, _ = engine.thresholds(fingerprint([prompt]))
    names = [q.stem for q in queries]
    writer = ResultWriter(FolderSink(out), thresholds, [str(prompt)])
    for outcome in engine.segmenter.iter_segment([str(q) for q in queries], names=names):
        writer.add(str(outcome.source), outcome.name, outcome.image.rgb, outcome.result)
    writer.close()
    writer.write_tables({"model": engine.model_name})
    return engine, thresholds, writer.rows


def _read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _masks(folder_or_zip, names: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        data = folder_or_zip(f"{name}_mask.png")
        out[name] = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) > 0
    return out


def test_python_cli_web_and_onnx_agree(setup, tmp_path, monkeypatch):
    root, model_path, prompt, queries = setup
    monkeypatch.setenv("METAUAS_HOME", str(tmp_path / "home"))
    names = [q.stem for q in queries]

    # store a calibration for this model, size and prompt: image and pixel thresholds differ
    engine = open_engine(model=str(model_path))
    engine.segmenter.set_prompt([str(prompt)])
    first = engine.segmenter.segment([str(q) for q in queries])
    scores = sorted(r.score for r in first)
    image_t = (scores[1] + scores[2]) / 2  # between two scores: two queries on each side
    pixel_t = float(np.quantile(np.concatenate([r.anomaly_map.ravel() for r in first]), 0.8))
    assert abs(image_t - pixel_t) > 0.01
    save_thresholds(Thresholds(image=image_t, pixel=pixel_t, method="f1", model=engine.model_name,
                               model_digest=engine.digest, size=engine.size,
                               prompt_fingerprint=fingerprint([prompt])), engine.store_path())

    # 1) Python API
    api_engine, thresholds, api_rows = _api(model_path, prompt, queries, tmp_path / "api")
    assert thresholds is not None and thresholds.pixel == pytest.approx(pixel_t)
    api = {r["name"]: r for r in api_rows}
    api_masks = _masks(lambda n: (tmp_path / "api" / n).read_bytes(), names)

    # 2) CLI (torch) and 4) CLI with the onnxruntime backend
    outs = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / f"cli-{backend}"
        code = main(["segment", "--prompt", str(prompt), "--query", *map(str, queries), "--out", str(out),
                     "--model", str(model_path), "--backend", backend, "--quiet"])
        assert code == 0
        outs[backend] = out

    # 3) the web JSON API (and its zip) through the ASGI app
    from starlette.testclient import TestClient

    from metauas.web.app import create_app
    from metauas.web.commands import build_service

    service = build_service(build_parser().parse_args(["serve", "--model", str(model_path)]))
    files = [("prompt", ("prompt.png", prompt.read_bytes()))] + [("query", (q.name, q.read_bytes())) for q in queries]
    with TestClient(create_app(service), base_url="http://localhost") as client:
        web_json = client.post("/api/segment", files=files).json()
        web_zip = zipfile.ZipFile(io.BytesIO(client.post("/api/segment", files=files,
                                                         data={"format": "zip"}).content))
    assert web_json["threshold"] == pytest.approx(image_t) and web_json["pixel_threshold"] == pytest.approx(pixel_t)

    cli = {b: {r["name"]: r for r in json.loads((o / "results.json").read_text())["results"]} for b, o in outs.items()}
    web = {r["name"]: r for r in web_json["results"]}
    for name in names:
        for other in (cli["torch"][name], web[name], cli["onnxruntime"][name]):
            assert other["score"] == pytest.approx(api[name]["score"], abs=1e-4)
            assert other["decision"] == api[name]["decision"]
        assert cli["torch"][name]["anomalous_fraction"] == pytest.approx(api[name]["anomalous_fraction"])
        assert web[name]["anomalous_fraction"] == pytest.approx(api[name]["anomalous_fraction"])
    assert sorted(r["decision"] for r in api.values()) == ["anomalous"] * 2 + ["normal"] * 2

    # masks: identical for the torch faces; onnxruntime may differ only where p is within 1e-3 of the threshold
    cli_masks = _masks(lambda n: (outs["torch"] / n).read_bytes(), names)
    web_masks = _masks(web_zip.read, names)
    onnx_masks = _masks(lambda n: (outs["onnxruntime"] / n).read_bytes(), names)
    maps = {r.name: r.anomaly_map for r in first}
    for name, path in zip(names, queries):
        assert api_masks[name].any() and not api_masks[name].all()
        assert np.array_equal(cli_masks[name], api_masks[name]) and np.array_equal(web_masks[name], api_masks[name])
        differ = onnx_masks[name] != api_masks[name]
        amap = maps[str(path)]
        assert np.all(np.abs(amap[differ] - pixel_t) < 1e-3)

    # results.csv: the same columns from every face
    tables = [(tmp_path / "api" / "results.csv").read_text(), (outs["torch"] / "results.csv").read_text(),
              (outs["onnxruntime"] / "results.csv").read_text(), web_zip.read("results.csv").decode()]
    for text in tables:
        rows = _read_csv(text)
        assert tuple(rows[0].keys()) == CSV_COLUMNS and len(rows) == len(queries)
        assert [r["decision"] for r in rows] == [api[n]["decision"] for n in names]
        assert all(r["anomalous_fraction"] != "" for r in rows)
