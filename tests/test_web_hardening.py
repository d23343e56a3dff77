"""Web server hardening: Host and Origin checks, {"error"} for every status, no CDN docs page,
server-wide limits (concurrent requests, pixels in flight, upload deadline)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from test_web import LiveServer, expected_scores, multipart, png_bytes, texture  # noqa: E402

from metauas.inference.segmenter import Segmenter  # noqa: E402
from metauas.models import MetaUAS, ModelConfig  # noqa: E402
from metauas.web.app import PixelBudget, SegmentService, WebConfig, create_app, host_name  # noqa: E402


@pytest.fixture(scope="module")
def model() -> MetaUAS:
    torch.manual_seed(0)
    return MetaUAS(ModelConfig(encoder="efficientnet-lite0", image_size=64)).eval()


def request(base: str, path: str, method: str = "GET", headers: dict | None = None, files=None,
            timeout: float = 60) -> tuple[int, dict | bytes, dict]:
    body = None
    headers = dict(headers or {})
    if files is not None:
        body, ctype = multipart(files)
        headers["Content-Type"] = ctype
    req = urllib.request.Request(f"{base}{path}", data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            data, status, head = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        data, status, head = exc.read(), exc.code, dict(exc.headers)
    kind = head.get("content-type", head.get("Content-Type", ""))
    return status, (json.loads(data) if kind.startswith("application/json") else data), head


def pair_files(seed: int = 0) -> list[tuple[str, str, bytes]]:
    return [("prompt", "p.png", png_bytes(texture(64, 64, seed))), ("query", "q.png", png_bytes(texture(64, 64, seed + 1)))]


@pytest.fixture(scope="module")
def base(model):
    config = WebConfig(allowed_hosts=["127.0.0.1", "localhost", "::1", "metauas.lan"],
                       allowed_origins=["http://tool.lan:9000"])
    with LiveServer(create_app(SegmentService(Segmenter(model), "tiny-test", config=config))) as url:
        yield url


def test_host_name_parsing():
    assert host_name("127.0.0.1:8000") == "127.0.0.1"
    assert host_name("[::1]:8000") == "::1"
    assert host_name("Example.ORG") == "example.org"
    assert host_name("::1") == "::1"


@pytest.mark.parametrize("path,method", [("/", "GET"), ("/api/info", "GET"), ("/api/segment", "POST")])
def test_foreign_host_header_is_refused(base, path, method):
    files = pair_files() if method == "POST" else None
    status, data, _ = request(base, path, method, {"Host": "evil.example:8000"}, files=files)
    assert status == 400 and "host" in data["error"]
    status, data, _ = request(base, path, method, {"Host": "metauas.lan:8000"}, files=files)  # configured
    assert status == 200


def test_cross_origin_post_is_refused_and_same_origin_works(base):
    port = base.rsplit(":", 1)[1]
    status, data, _ = request(base, "/api/segment", "POST", {"Origin": "http://evil.example"}, files=pair_files())
    assert status == 403 and "cross-origin" in data["error"]
    status, data, _ = request(base, "/api/segment", "POST", {"Origin": "null"}, files=pair_files())
    assert status == 403
    status, data, _ = request(base, "/api/segment", "POST", {"Sec-Fetch-Site": "cross-site"}, files=pair_files())
    assert status == 403
    status, data, _ = request(base, "/api/segment", "POST", {"Origin": f"http://localhost:{port}"}, files=pair_files())
    assert status == 403  # another origin (localhost vs 127.0.0.1) of the same machine: still another origin
    for origin in (f"http://127.0.0.1:{port}", "http://tool.lan:9000"):  # same origin, configured origin
        status, data, head = request(base, "/api/segment", "POST", {"Origin": origin, "Sec-Fetch-Site": "same-origin"},
                                     files=pair_files())
        assert status == 200 and len(data["results"]) == 1
        assert not any(k.lower().startswith("access-control-") for k in head)
    status, data, _ = request(base, "/api/segment", "POST", files=pair_files())  # curl, scripts: no Origin
    assert status == 200


def test_every_error_is_json_error(base):
    status, data, _ = request(base, "/no/such/path")
    assert status == 404 and set(data) == {"error"}
    status, data, head = request(base, "/api/info", "POST", files=pair_files())
    assert status == 405 and set(data) == {"error"} and "GET" in head.get("allow", head.get("Allow", ""))
    status, data, _ = request(base, "/api/segment", "GET")
    assert status == 405 and set(data) == {"error"}
    status, data, _ = request(base, "/api/docs")  # no CDN-loaded Swagger page
    assert status == 404 and set(data) == {"error"}
    status, data, _ = request(base, "/api/openapi.json")
    assert status == 200 and "/api/segment" in data["paths"]


class SlowSegmenter(Segmenter):
    """A Segmenter that takes `delay` seconds per model call (to fill the server)."""

    def __init__(self, model, delay: float) -> None:
        super().__init__(model)
        self.delay = delay

    def _predict(self, batch):
        time.sleep(self.delay)
        return super()._predict(batch)


def test_excess_requests_wait_or_get_503_and_accepted_ones_are_right(model):
    config = WebConfig(max_active_requests=1, max_waiting_requests=1, queue_timeout_s=30)
    service = SegmentService(SlowSegmenter(model, 1.0), "slow", config=config)
    pairs = [(texture(64, 64, 300 + i), texture(64, 64, 400 + i)) for i in range(5)]
    want = [expected_scores(model, p, [q])[0] for p, q in pairs]
    barrier = threading.Barrier(5)
    with LiveServer(create_app(service)) as url:
        def one(i: int):
            files = [("prompt", "p.png", png_bytes(pairs[i][0])), ("query", f"q{i}.png", png_bytes(pairs[i][1]))]
            barrier.wait()
            return request(url, "/api/segment", "POST", files=files, timeout=120)

        with ThreadPoolExecutor(5) as pool:
            replies = list(pool.map(one, range(5)))
    statuses = [status for status, _, _ in replies]
    assert statuses.count(200) >= 2 and statuses.count(503) >= 1, statuses
    assert set(statuses) <= {200, 503}
    for i, (status, data, head) in enumerate(replies):
        if status == 200:
            assert data["results"][0]["score"] == pytest.approx(want[i], abs=1e-6)
        else:
            assert "busy" in data["error"] and head.get("retry-after", head.get("Retry-After")) == "5"


def test_queue_timeout_gives_503(model):
    config = WebConfig(max_active_requests=1, max_waiting_requests=4, queue_timeout_s=0.5)
    service = SegmentService(SlowSegmenter(model, 2.0), "slow", config=config)
    with LiveServer(create_app(service)) as url:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(request, url, "/api/segment", "POST", None, pair_files(1), 60)
            time.sleep(0.5)
            second = pool.submit(request, url, "/api/segment", "POST", None, pair_files(2), 60)
            assert first.result()[0] == 200
            status, data, _ = second.result()
    assert status == 503 and "busy" in data["error"]


def test_slow_upload_gets_408(model):
    config = WebConfig(upload_timeout_s=1.0)
    service = SegmentService(Segmenter(model), "tiny", config=config)
    with LiveServer(create_app(service)) as url:
        host, port = url.split("//")[1].split(":")
        body, ctype = multipart(pair_files())
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(f"POST /api/segment HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body[:100])
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 408") and b'"error"' in reply and b"upload not completed" in reply


def test_pixel_budget_bounds_pixels_in_flight():
    budget = PixelBudget(100)
    held = []
    lock = threading.Lock()
    current = {"n": 0, "max": 0}

    def work(n: int):
        with budget.reserve(n, timeout=30):
            with lock:
                current["n"] += n
                current["max"] = max(current["max"], current["n"])
            time.sleep(0.02)
            with lock:
                current["n"] -= n
        held.append(n)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, [40, 60, 30, 70, 50, 50, 20, 90] * 3))
    assert len(held) == 24 and current["max"] <= 100 and budget.peak <= 100 and budget.in_use == 0
    with budget.reserve(250, timeout=1):  # larger than the budget: runs alone
        from metauas.web.app import ApiError

        with pytest.raises(ApiError) as info:
            with budget.reserve(1, timeout=0.1):
                pass
        assert info.value.status == 503


def test_service_pixel_budget_holds_under_concurrent_requests(model):
    side = 64
    config = WebConfig(max_active_requests=4, max_pixels_in_flight=3 * side * side)
    service = SegmentService(SlowSegmenter(model, 0.2), "tiny", config=config)
    with LiveServer(create_app(service)) as url:
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda i: request(url, "/api/segment", "POST", files=pair_files(10 + i)),
                                    range(4)))
    assert [r[0] for r in replies] == [200] * 4
    assert service.budget.peak <= 3 * side * side and service.budget.in_use == 0


def test_serve_options_set_the_host_and_origin_policy(monkeypatch, model):
    import metauas.inference.commands as commands
    from metauas.cli import build_parser
    from metauas.web.commands import build_service

    class FakeEngine:
        segmenter, model_name, digest, backend, model_ref = Segmenter(model), "tiny", "", "torch", None

    monkeypatch.setattr(commands, "build_engine", lambda args, shots: FakeEngine())
    args = build_parser().parse_args(["serve", "--host", "192.168.1.5", "--allow-host", "box.lan",
                                      "--allow-origin", "http://tool.lan", "--max-active-requests", "3"])
    config = build_service(args).config
    assert config.allowed_hosts == ["127.0.0.1", "localhost", "::1", "192.168.1.5", "box.lan"]
    assert config.allowed_origins == ["http://tool.lan"] and config.max_active_requests == 3
    default = build_service(build_parser().parse_args(["serve"])).config
    assert default.allowed_hosts == ["127.0.0.1", "localhost", "::1"] and default.allowed_origins == []
