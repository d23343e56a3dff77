"""The web app's JSON API against a real uvicorn server on a free localhost port: results equal
the Segmenter's, limits and bad uploads give clear JSON errors, 8 concurrent requests with
different prompts are all answered correctly."""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from metauas.scoring import image_score
import torch
from PIL import Image

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from metauas.inference.segmenter import Segmenter  # noqa: E402
from metauas.models import MetaUAS, ModelConfig  # noqa: E402
from metauas.web.app import SegmentService, WebConfig, create_app  # noqa: E402


# ---------------------------------------------------------------------------- helpers
def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def texture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 255, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8), (w, h))
    return base


def multipart(files: list[tuple[str, str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for key, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    for key, filename, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post(base: str, files, fields=None, timeout: float = 60) -> tuple[int, dict | bytes, str]:
    body, ctype = multipart(files, fields)
    request = urllib.request.Request(f"{base}/api/segment", data=body, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data, status, kind = response.read(), response.status, response.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        data, status, kind = exc.read(), exc.code, exc.headers.get("content-type", "")
    return status, (json.loads(data) if kind.startswith("application/json") else data), kind


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, app) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)



@pytest.fixture(scope="module")
def model() -> MetaUAS:
    torch.manual_seed(0)
    return MetaUAS(ModelConfig(encoder="efficientnet-lite0", image_size=64)).eval()


@pytest.fixture(scope="module")
def service(model) -> SegmentService:
    config = WebConfig(max_file_mb=1, max_request_mb=3, max_queries=4, max_prompts=2, max_pixels=2_000_000)
    return SegmentService(Segmenter(model), "tiny-test", backend="torch", config=config)


@pytest.fixture(scope="module")
def base(service):
    with LiveServer(create_app(service)) as url:
        yield url


def expected_scores(model, prompt: np.ndarray, queries: list[np.ndarray]) -> list[float]:
    seg = Segmenter(model)
    seg.set_prompt(prompt)
    return [r.score for r in seg.segment(queries)]


# ---------------------------------------------------------------------------- page and info
def test_page_info_and_examples(base):
    html = urllib.request.urlopen(f"{base}/").read().decode()
    assert "/static/app.js" in html and "threshold" in html
    assert b"applyThreshold" in urllib.request.urlopen(f"{base}/static/app.js").read()
    info = json.loads(urllib.request.urlopen(f"{base}/api/info").read())
    assert info["model"] == "tiny-test" and info["size"] == 64
    assert info["limits"]["max_file_bytes"] == 2**20 and info["limits"]["max_queries"] == 4
    assert info["examples"], "the repository's examples/ pair should be offered"
    image = urllib.request.urlopen(base + info["examples"][0]["prompt"]).read()
    assert Image.open(io.BytesIO(image)).size == (512, 512)
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"{base}/api/examples/..%2Fapp.py")
    assert exc.value.code == 404


# ---------------------------------------------------------------------------- results
def test_segment_json_matches_segmenter(base, model):
    prompt, q1, q2 = texture(60, 80, 1), texture(60, 80, 2), texture(90, 50, 3)
    status, data, _ = post(base, [("prompt", "p.png", png_bytes(prompt)), ("query", "a.png", png_bytes(q1)),
                                  ("query", "a.png", png_bytes(q2))])
    assert status == 200, data
    assert [r["name"] for r in data["results"]] == ["a", "a_2"]  # clashing names made unique
    want = expected_scores(model, prompt, [q1, q2])
    for r, score, rgb in zip(data["results"], want, (q1, q2)):
        assert r["score"] == pytest.approx(score, abs=1e-6)
        assert (r["height"], r["width"]) == rgb.shape[:2]
        assert r["decision"] is None  # no threshold known for this prompt
        overlay = Image.open(io.BytesIO(__import__("base64").b64decode(r["overlay"].split(",", 1)[1])))
        assert overlay.size == (rgb.shape[1], rgb.shape[0])
    status, data, _ = post(base, [("prompt", "p.png", png_bytes(prompt)), ("query", "a.png", png_bytes(q1))],
                           {"threshold": "0.25"})
    assert data["threshold"] == 0.25 and data["results"][0]["decision"] == (
        "anomalous" if data["results"][0]["score"] > 0.25 else "normal")


def test_prompt_pool_mode_compares_each_query_with_its_most_similar_prompt(base, model):
    good_a, good_b = texture(60, 80, 11), texture(60, 80, 12)
    files = [("prompt", "a.png", png_bytes(good_a)), ("prompt", "b.png", png_bytes(good_b)),
             ("query", "qa.png", png_bytes(good_a)), ("query", "qb.png", png_bytes(good_b))]
    status, data, _ = post(base, files, {"prompt_mode": "pool"})
    assert status == 200, data
    assert data["prompt_mode"] == "pool"
    assert [r["prompts"] for r in data["results"]] == [["a.png"], ["b.png"]]
    for r, good in zip(data["results"], (good_a, good_b)):
        assert r["score"] == pytest.approx(expected_scores(model, good, [good])[0], abs=1e-6)
    status, data, _ = post(base, files[:1] + files[2:3], {"prompt_mode": "best"})
    assert status == 400 and "prompt_mode" in data["error"]


def test_tile_option_tiles_large_queries_per_request(base, model):
    prompt = texture(160, 160, 21)
    query = prompt.copy()
    query[100:108, 40:48] = (250, 10, 10)
    files = [("prompt", "p.png", png_bytes(prompt)), ("query", "q.png", png_bytes(query))]
    status, data, _ = post(base, files, {"tile": "auto"})
    assert status == 200, data
    assert data["tile"] == "auto" and data["results"][0]["tile"] == 64
    seg = Segmenter(model, tile="auto")
    seg.set_prompt(prompt)
    assert data["results"][0]["score"] == pytest.approx(seg.segment_one(query).score, abs=1e-6)
    status, data, _ = post(base, files)  # no field: the server's own setting (off)
    assert status == 200 and data["tile"] == "off" and data["results"][0]["tile"] is None
    assert data["results"][0]["score"] == pytest.approx(expected_scores(model, prompt, [query])[0], abs=1e-6)
    status, data, _ = post(base, files, {"tile": "huge"})
    assert status == 400 and "tile" in data["error"]
    page = (Path(__file__).resolve().parents[1] / "src/metauas/web/static")
    assert 'id="tile-mode"' in (page / "index.html").read_text()
    assert '"tile"' in (page / "app.js").read_text()


def test_segment_zip_download(base):
    prompt, query = texture(64, 64, 4), texture(64, 64, 5)
    status, data, kind = post(base, [("prompt", "p.png", png_bytes(prompt)), ("query", "q.png", png_bytes(query))],
                              {"format": "zip", "threshold": "0.4"})
    assert status == 200 and kind == "application/zip"
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = set(zf.namelist())
        assert names == {"q_map.png", "q_overlay.png", "q_mask.png", "results.json", "results.csv"}
        amap = cv2.imdecode(np.frombuffer(zf.read("q_map.png"), np.uint8), cv2.IMREAD_UNCHANGED)
        assert amap.dtype == np.uint16 and amap.shape == (64, 64)
        results = json.loads(zf.read("results.json"))
        assert results["threshold"] == 0.4
        assert results["results"][0]["score"] == pytest.approx(image_score(amap / 65535), abs=1e-4)
        assert "q_mask.png" in zf.read("results.csv").decode()


# ---------------------------------------------------------------------------- errors
def _bomb_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 32)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("case,status,needle", [
    ("text", 415, "not a supported image"),
    ("corrupt", 415, "not a supported image"),
    ("truncated", 400, "truncated"),
    ("empty", 400, "empty file"),
    ("tiny", 400, "too small"),
    ("bomb", 413, "too large"),
    ("big_file", 413, "file too large"),
    ("no_query", 400, "missing 'query'"),
    ("no_prompt", 400, "missing 'prompt'"),
    ("too_many", 413, "too many files"),
    ("bad_threshold", 400, "threshold must be"),
    ("bad_format", 400, "format must be"),
])
def test_bad_uploads_get_json_errors(base, case, status, needle):
    good = png_bytes(texture(64, 64, 6))
    prompt = [("prompt", "p.png", good)]
    full = png_bytes(texture(128, 128, 7))
    payloads = {
        "text": [("query", "notes.txt", b"hello, not an image")],
        "corrupt": [("query", "x.png", bytes(np.random.default_rng(0).integers(0, 255, 500, dtype=np.uint8)))],
        "truncated": [("query", "t.png", full[: len(full) // 2])],
        "empty": [("query", "e.png", b"")],
        "tiny": [("query", "s.png", png_bytes(texture(5, 5, 1)))],
        "bomb": [("query", "bomb.png", _bomb_png())],
        "big_file": [("query", "big.bmp", b"BM" + b"\0" * (2**20 + 10))],
        "no_query": [],
        "too_many": [("query", f"q{i}.png", good) for i in range(5)],
    }
    files = ([] if case == "no_prompt" else prompt) + payloads.get(case, [("query", "q.png", good)])
    fields = {"bad_threshold": {"threshold": "2"}, "bad_format": {"format": "xml"}}.get(case)
    code, data, kind = post(base, files, fields)
    assert code == status and kind.startswith("application/json"), (code, data)
    assert needle in data["error"]


def send_raw(base: str, head: str, pieces) -> bytes:
    """POST over a raw socket; the server may answer 413 and close before the body is sent.

    urllib cannot read such an early answer (it fails with a broken pipe while still sending),
    so both size-limit cases talk HTTP/1.1 directly.
    """
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /api/segment HTTP/1.1\r\nHost: {host}\r\n{head}Connection: close\r\n\r\n".encode())
        try:
            for piece in pieces:
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass  # the answer, if any, was read before the reset
    return reply


def test_request_size_limit_with_and_without_content_length(base):
    big = b"\0" * (3 * 2**20 + 100)
    body, ctype = multipart([("prompt", "p.png", big)])
    pieces = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    # with Content-Length: refused before the body is read
    reply = send_raw(base, f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n", pieces)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"request too large" in reply
    # chunked upload (no Content-Length): cut off while streaming
    chunked = [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces] + [b"0\r\n\r\n"]
    reply = send_raw(base, f"Content-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n", chunked)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"request too large" in reply


def test_json_body_is_rejected(base):
    request = urllib.request.Request(f"{base}/api/segment", data=b'{"prompt": "x"}',
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(request)
    assert exc.value.code == 415 and "multipart/form-data" in json.loads(exc.value.read())["error"]


# ---------------------------------------------------------------------------- concurrency
def test_eight_concurrent_requests_with_different_prompts(base, model, service):
    pairs = [(texture(64, 64, 100 + i), texture(64 + 8 * i, 64, 200 + i)) for i in range(8)]
    want = [expected_scores(model, p, [q])[0] for p, q in pairs]
    assert len({round(w, 6) for w in want}) > 1  # requests are distinguishable by their answers
    barrier = threading.Barrier(8)

    def one(i: int):
        p, q = pairs[i]
        files = [("prompt", f"p{i}.png", png_bytes(p)), ("query", f"q{i}.png", png_bytes(q))]
        barrier.wait()
        return post(base, files, timeout=120)

    calls_before = service.calls
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(one, range(8)))
    for i, (status, data, _) in enumerate(replies):
        assert status == 200, data
        assert data["results"][0]["name"] == f"q{i}"
        assert data["results"][0]["height"] == 64 + 8 * i
        assert data["results"][0]["score"] == pytest.approx(want[i], abs=1e-6)
    assert service.calls - calls_before == 8


# ---------------------------------------------------------------------------- serve command
def test_serve_reports_busy_port_in_one_line(capsys):
    from metauas.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        code = main(["serve", "--port", str(s.getsockname()[1])])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("metauas: error: cannot listen") and err.count("\n") == 1


def test_stored_calibration_sets_the_default_threshold(tmp_path, monkeypatch, model):
    from metauas.inference.calibration import Thresholds, fingerprint, save_thresholds, store_path

    monkeypatch.setenv("METAUAS_HOME", str(tmp_path))
    prompt_png = png_bytes(texture(64, 64, 9))
    service = SegmentService(Segmenter(model), "tiny-cal", digest="abc", config=WebConfig())
    save_thresholds(Thresholds(image=0.3, pixel=0.3, model="tiny-cal", model_digest="abc", size=64,
                               prompt_fingerprint=fingerprint([prompt_png])), store_path(None, "tiny-cal"))
    payload, _ = service.run([("p.png", prompt_png)], [("q.png", png_bytes(texture(64, 64, 10)))], None, False)
    assert payload["threshold"] == 0.3 and payload["threshold_source"] == "calibration"
    other, _ = service.run([("p.png", png_bytes(texture(64, 64, 11)))], [("q.png", png_bytes(texture(64, 64, 10)))],
                           None, False)
    assert other["threshold"] is None
