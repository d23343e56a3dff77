"""Local web app: a small page and a JSON API around one loaded segmenter (FastAPI).

Endpoints (documented in docs/web.md):
  GET  /                 the page (static HTML/JS, no external resources)
  GET  /api/info         model, backend, size, default threshold, limits, example pairs
  GET  /api/examples/F   an example image
  POST /api/segment      multipart: prompt (1..K files), query (1..N files), [threshold],
                         [format=json|zip] -> JSON with scores and PNGs, or a zip of results

Safety: only requests whose Host header names this server (localhost names unless configured)
are served, and state-changing requests from pages of other origins are refused (403), so no
website can use the local server. Request bodies are capped while they stream in (HTTP 413)
and must arrive within a deadline (408); each file is capped, the number of files is capped,
images pass the allow-listed decoder of metauas.inference.images (415 for other formats, 400
for broken files, 413 for too many pixels, read from the header). Memory is bounded per
server: at most `max_active_requests` segment requests run at once, further ones wait in a
short queue (503 when it is full or the wait is too long), and the decoded pixels of all
requests together stay under `max_pixels_in_flight` (queries are decoded, segmented and
rendered one at a time). Every error is {"error": "..."} JSON. Model calls are serialised by
a lock (the segmenter caches one prompt at a time); decoding and PNG encoding run outside it,
in worker threads.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from metauas.errors import ImageTooLargeError, InputError, UnsupportedImageError
from metauas.io.images import ALLOWED_DESCRIPTION, LoadedImage, decode_loaded, probe_image, prompt_depth
from metauas.paths import examples_dir
from metauas.runtime.engine import Engine
from metauas.runtime.predictor import SegmentationResult
from metauas.runtime.results import ResultWriter, ZipSink, result_row, unique_name
from metauas.runtime.thresholds import Thresholds, fingerprint
from metauas.runtime.visualize import encode_png, heat_overlay

STATIC_DIR = Path(__file__).resolve().parent / "static"
EXAMPLE_PAIRS = ({"name": "brick", "prompt": "prompt.png", "query": "query.png"},)
WEB_MAX_SIDE = 1024  # overlays/maps sent to the page are at most this large per side
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class WebConfig:
    """Limits and defaults of the web app."""

    max_file_mb: float = 10.0
    max_request_mb: float = 50.0
    max_prompts: int = 8
    max_queries: int = 16
    max_pixels: int = 40_000_000  # per image
    threshold: float | None = None  # default image/pixel threshold for decisions (else per-prompt calibration)
    # server-wide limits (docs/web.md, "Limits and errors"): together they keep the default
    # server under 3 GiB resident memory (benchmarks/web_load.py)
    max_active_requests: int = 2  # segment requests processed at once
    max_waiting_requests: int = 8  # further requests wait (body not read yet); beyond: 503
    queue_timeout_s: float = 120.0  # a waiting request gets 503 after this long
    max_pixels_in_flight: int = 60_000_000  # decoded pixels of all requests together
    upload_timeout_s: float = 60.0  # the whole body must arrive within this time after admission (408)
    allowed_hosts: list[str] = field(default_factory=lambda: list(LOCAL_HOSTS))  # Host header names; "*" = any
    allowed_origins: list[str] = field(default_factory=list)  # other origins allowed to POST; "*" = any

    @property
    def max_file_bytes(self) -> int:
        """Largest accepted upload file, in bytes (``max_file_mb`` MiB)."""
        return int(self.max_file_mb * 2**20)

    @property
    def max_request_bytes(self) -> int:
        """Largest accepted request body, in bytes (``max_request_mb`` MiB)."""
        return int(self.max_request_mb * 2**20)


class ApiError(Exception):
    """An error answered as JSON ``{"error": message}`` with HTTP `status` (e.g. 400 for a bad
    upload, 413 for one too large, 503 when busy).
    """
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _TooLarge(Exception):
    pass


class _UploadTimeout(Exception):
    pass


def host_name(value: str) -> str:
    """The host part of a Host header value ("[::1]:8000" -> "::1", "Example.org:80" -> "example.org")."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.index("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _host_allowed(name: str, allowed: list[str]) -> bool:
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern == "*" or name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


class RequestGuard:
    """ASGI middleware: refuse foreign Host headers (400) and cross-origin writes (403).

    A request is served only when its Host header names an allowed host (DNS rebinding: a
    foreign site resolving its name to 127.0.0.1 sends its own name). Requests other than
    GET/HEAD/OPTIONS must come from the page's own origin (Origin equal to scheme://Host), an
    allowed origin, or from a non-browser client (no Origin and no cross-site Sec-Fetch-Site).
    No CORS headers are ever sent, so other sites cannot read answers either.
    Starlette's TrustedHostMiddleware is not used because it answers in plain text; the API
    promises {"error": ...} JSON.
    """

    SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

    def __init__(self, app: Any, allowed_hosts: list[str], allowed_origins: list[str]) -> None:
        self.app = app
        self.allowed_hosts = list(allowed_hosts)
        self.allowed_origins = [o.rstrip("/").lower() for o in allowed_origins]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        host = headers.get("host", "")
        if not host or not _host_allowed(host_name(host), self.allowed_hosts):
            await _send_json(send, 400, {"error": f"host {host[:80]!r} is not served here (allowed: "
                                                  f"{', '.join(self.allowed_hosts)}; see metauas serve --allow-host)"})
            return
        if scope["method"] not in self.SAFE_METHODS:
            origin = headers.get("origin", "").rstrip("/").lower()
            own = f"{scope.get('scheme', 'http')}://{host}".lower()
            if origin:
                ok = origin == own or origin in self.allowed_origins or "*" in self.allowed_origins
            else:
                ok = headers.get("sec-fetch-site", "none") in ("same-origin", "none")
            if not ok:
                await _send_json(send, 403, {"error": f"cross-origin request from {origin[:80] or 'another site'!r} "
                                                      "refused (see metauas serve --allow-origin)"})
                return
        await self.app(scope, receive, send)


class RequestGate:
    """ASGI middleware: at most `max_active` segment requests at once, `max_waiting` more queued.

    A queued request's body is not read until it is admitted, so waiting costs no memory; a
    full queue or a wait longer than `queue_timeout_s` gets 503 with Retry-After. Once admitted,
    the body must arrive within `upload_timeout_s` (408).
    """

    def __init__(self, app: Any, config: "WebConfig", paths: tuple[str, ...] = ("/api/segment",)) -> None:
        self.app = app
        self.config = config
        self.paths = paths
        self.active = 0
        self.waiting = 0
        self._slots = asyncio.Semaphore(config.max_active_requests)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        c = self.config
        busy = {"error": f"server busy ({self.active} requests in progress, {self.waiting} waiting); try again"}
        if self.active + self.waiting >= c.max_active_requests + c.max_waiting_requests:
            await self._refuse(receive, send, busy)
            return
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=c.queue_timeout_s)
        except asyncio.TimeoutError:
            self.waiting -= 1
            await self._refuse(receive, send, busy)
            return
        self.waiting -= 1
        self.active += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + c.upload_timeout_s
        tracked = _TrackedSend(send)

        async def timed_receive() -> dict:
            remaining = deadline - loop.time()
            try:
                return await asyncio.wait_for(receive(), timeout=max(remaining, 0.001))
            except asyncio.TimeoutError:
                raise _UploadTimeout from None

        try:
            await self.app(scope, timed_receive, tracked)
        except _UploadTimeout:
            if not tracked.started:
                await _send_json(send, 408, {"error": f"upload not completed within {c.upload_timeout_s:g} s"})
        finally:
            self.active -= 1
            self._slots.release()


    async def _refuse(self, receive: Any, send: Any, payload: dict) -> None:
        """Answer 503 after discarding the body (up to the request limit, within the upload
        deadline): most clients cannot read an answer sent while they are still uploading."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.upload_timeout_s
        received = 0
        try:
            while received <= self.config.max_request_bytes:
                msg = await asyncio.wait_for(receive(), timeout=max(deadline - loop.time(), 0.001))
                if msg["type"] != "http.request":
                    return  # the client went away
                received += len(msg.get("body", b""))
                if not msg.get("more_body", False):
                    break
        except asyncio.TimeoutError:
            pass
        await _send_json(send, 503, payload, [(b"retry-after", b"5")])


class PixelBudget:
    """Decoded pixels held by all requests together stay under `limit` (threads wait their turn).

    A request larger than the whole budget still runs, alone.
    """

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, pixels: int, timeout: float) -> Iterator[None]:
        """Hold `pixels` of the budget for the duration of the block.

        Raises:
            ApiError: 503 when the pixels do not become free within `timeout` seconds.
        """
        with self._cond:
            ok = self._cond.wait_for(lambda: self.in_use == 0 or self.in_use + pixels <= self.limit, timeout)
            if not ok:
                raise ApiError(503, "server busy (too many pixels in flight); try again")
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= pixels
                self._cond.notify_all()


class BodySizeLimit:
    """ASGI middleware: refuse bodies over `max_bytes` (by Content-Length, or while streaming)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        message = f"request too large (limit {self.max_bytes / 2**20:g} MiB)"
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _send_json(send, 413, {"error": message})
            return
        received = 0
        tracked = _TrackedSend(send)

        async def limited_receive() -> dict:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return msg

        try:
            await self.app(scope, limited_receive, tracked)
        except _TooLarge:
            if not tracked.started:
                await _send_json(send, 413, {"error": message})


class _TrackedSend:
    """An ASGI ``send`` that remembers whether the response has started (then no error body can follow)."""

    def __init__(self, send: Any) -> None:
        self.send, self.started = send, False

    async def __call__(self, msg: dict) -> None:
        if msg["type"] == "http.response.start":
            self.started = True
        await self.send(msg)


async def _send_json(send: Any, status: int, payload: dict, headers: list | None = None) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def find_examples_dir() -> Path | None:
    """Example images: installed package data (metauas/examples) or the repository's examples/."""
    return examples_dir()


def decode_upload(data: bytes, name: str, config: WebConfig, depth: int | None = None) -> LoadedImage:
    """Uploaded bytes -> `LoadedImage` ((H, W, 3) uint8 RGB + scaling) through the one reader
    (`metauas.io.images`), with the web limits; `depth`: the prompt's bit depth (see there).

    Raises:
        ApiError: 400 (empty, corrupt, truncated, too small), 413 (file or pixel count over the
            limits) or 415 (not PNG, JPEG, BMP, TIFF or WebP).
    """
    if not data:
        raise ApiError(400, f"{name}: empty file")
    if len(data) > config.max_file_bytes:
        raise ApiError(413, f"{name}: file too large ({len(data) / 2**20:.1f} MiB; limit {config.max_file_mb:g} MiB)")
    try:
        return decode_loaded(data, name, max_pixels=config.max_pixels, depth=depth)
    except UnsupportedImageError:
        raise ApiError(415, f"{name}: not a supported image ({ALLOWED_DESCRIPTION})") from None
    except ImageTooLargeError as exc:
        raise ApiError(413, str(exc)) from None
    except InputError as exc:
        raise ApiError(400, str(exc)) from None


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _safe_stem(filename: str, used: set[str]) -> str:
    return unique_name(Path(filename or "image").stem, used, limit=80)


def _page_images(rgb: np.ndarray, amap: np.ndarray) -> dict[str, str]:
    """Overlay and 8-bit map (value = round(p * 255), for the page's slider) as data URLs,
    at most WEB_MAX_SIDE px per side."""
    h, w = amap.shape
    scale = min(1.0, WEB_MAX_SIDE / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        amap = cv2.resize(amap, size, interpolation=cv2.INTER_AREA)
    overlay = heat_overlay(rgb, amap)
    return {"overlay": _data_url(encode_png(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))),
            "map": _data_url(encode_png(np.round(np.clip(amap, 0, 1) * 255).astype(np.uint8)))}


class SegmentService:
    """What the endpoints call: one engine's predictor, a lock, threshold lookup, and the
    runtime's results writer (the same decision rule, rows and files as `metauas segment`)."""

    def __init__(self, segmenter: Any, model_name: str, digest: str = "", backend: str = "torch",
                 model_ref: str | None = None, config: WebConfig | None = None) -> None:
        self.segmenter = segmenter
        self.engine = Engine(segmenter, model_name, model_ref, digest, backend)
        self.model_name = model_name
        self.digest = digest
        self.backend = backend
        self.model_ref = model_ref
        self.config = config or WebConfig()
        self.lock = threading.Lock()
        self.budget = PixelBudget(self.config.max_pixels_in_flight)
        self._prompt_key: tuple[str, bool] | None = None
        self.calls = 0
        self.default_tile = getattr(segmenter, "tile", "off")

    def info(self) -> dict[str, Any]:
        """What ``GET /api/info`` answers: model name, backend, size, whether the model is untrained,
        the default threshold, the upload/concurrency limits and the bundled example pairs.
        """
        c = self.config
        examples = []
        if find_examples_dir() is not None:
            examples = [{"name": p["name"], "prompt": f"/api/examples/{p['prompt']}",
                         "query": f"/api/examples/{p['query']}"} for p in EXAMPLE_PAIRS]
        return {"model": self.model_name, "backend": self.backend, "size": int(self.segmenter.size),
                "untrained": self.model_name.startswith("untrained"), "threshold": c.threshold,
                "limits": {"max_file_bytes": c.max_file_bytes, "max_request_bytes": c.max_request_bytes,
                           "max_prompts": c.max_prompts, "max_queries": c.max_queries, "max_pixels": c.max_pixels,
                           "max_active_requests": c.max_active_requests,
                           "max_waiting_requests": c.max_waiting_requests,
                           "max_pixels_in_flight": c.max_pixels_in_flight,
                           "upload_timeout_s": c.upload_timeout_s},
                "examples": examples}

    def _threshold(self, requested: float | None, prompt_key: str) -> tuple[Thresholds | None, str]:
        """Image and pixel thresholds as `metauas segment` finds them: a request or server
        threshold (image = pixel), else the stored calibration for this prompt."""
        manual = requested if requested is not None else self.config.threshold
        if manual is not None:
            found, _ = self.engine.thresholds(prompt_key, threshold=manual)
            return found, "request" if requested is not None else "server"
        stored = self.engine.stored_thresholds(prompt_key)
        return (stored, "calibration") if stored is not None else (None, "")

    def _check_sizes(self, prompts: list[tuple[str, bytes]], queries: list[tuple[str, bytes]]) -> int:
        """Header checks of every file (before any pixel is decoded); returns the pixels to reserve."""
        c = self.config

        def pixels(data: bytes, what: str) -> int:
            if not data:
                raise ApiError(400, f"{what}: empty file")
            if len(data) > c.max_file_bytes:
                raise ApiError(413, f"{what}: file too large ({len(data) / 2**20:.1f} MiB; "
                                    f"limit {c.max_file_mb:g} MiB)")
            try:
                w, h = probe_image(data, what, max_pixels=c.max_pixels)
            except UnsupportedImageError:
                raise ApiError(415, f"{what}: not a supported image ({ALLOWED_DESCRIPTION})") from None
            except ImageTooLargeError as exc:
                raise ApiError(413, str(exc)) from None
            except InputError as exc:
                raise ApiError(400, str(exc)) from None
            return w * h

        prompt_pixels = sum(pixels(data, f"prompt '{name}'") for name, data in prompts)
        return prompt_pixels + max(pixels(data, f"query '{name}'") for name, data in queries)

    def _segment(self, prompt_images: list[LoadedImage], key: str, pool: bool, image: LoadedImage,
                 name: str, tile: str | None = None) -> SegmentationResult:
        with self.lock:
            self.segmenter.tile = self.default_tile if tile is None else tile
            if self._prompt_key != (key, pool):
                self._prompt_key = None
                if pool:
                    self.segmenter.set_prompt_pool(prompt_images, k=1)
                else:
                    self.segmenter.set_prompt(prompt_images)
                self._prompt_key = (key, pool)
            return next(self.segmenter.iter_segment([image], names=[name])).result

    def run(self, prompts: list[tuple[str, bytes]], queries: list[tuple[str, bytes]],
            threshold: float | None, as_zip: bool, pool: bool = False,
            tile: str | None = None) -> tuple[dict[str, Any], bytes | None]:
        """Check every file's header, then decode, segment (under the lock) and render one query
        at a time, inside a reservation of the server's pixel budget.

        ``pool``: the prompts are a pool; each query is compared with its most similar one.
        ``tile``: "auto" or "off" for this request (`metauas segment --tile`); None: the
        server's own setting (``metauas serve --tile``).

        Raises:
            ApiError: 4xx for bad input, 503 when the pixel budget stays busy.
        """
        started = time.perf_counter()
        c = self.config
        reserve = self._check_sizes(prompts, queries)
        key = fingerprint([data for _, data in prompts])
        used: set[str] = set()
        names = [_safe_stem(name, used) for name, _ in queries]
        if pool and not hasattr(self.segmenter, "set_prompt_pool"):
            raise ApiError(400, f"prompt pools need the torch backend (this server runs {self.backend})")
        t, source = self._threshold(threshold, key)
        payload: dict[str, Any] = {"model": self.model_name, "backend": self.backend,
                                   "size": int(self.segmenter.size), "num_prompts": len(prompts),
                                   "prompt_mode": "pool" if pool else ("k-shot" if len(prompts) > 1 else "one-shot"),
                                   "threshold": None if t is None else t.image,
                                   "pixel_threshold": None if t is None else t.pixel,
                                   "threshold_source": source,
                                   "tile": self.default_tile if tile is None else tile, "results": []}
        prompt_names = [name for name, _ in prompts]
        sink = ZipSink() if as_zip else None
        writer = ResultWriter(sink, t, prompt_names, overlay=True, queue_size=0) if sink is not None else None
        with self.budget.reserve(reserve, timeout=c.queue_timeout_s):
            prompt_images = [decode_upload(data, f"prompt '{name}'", c) for name, data in prompts]
            depth = prompt_depth(prompt_images)
            for (filename, data), name in zip(queries, names):
                image = decode_upload(data, f"query '{filename}'", c, depth)
                result = self._segment(prompt_images, key, pool, image, name, tile)
                if writer is not None:
                    row = writer.add(filename, name, image.rgb, result, label=filename)
                else:
                    row = result_row(filename, name, result, image.rgb.shape[:2], t, prompt_names)
                    row.update(_page_images(image.rgb, result.anomaly_map), mask=None)
                row["filename"] = row["query"]
                payload["results"].append(row)
                del image, result  # one decoded query and its map at a time
            self.calls += 1
        payload["seconds"] = round(time.perf_counter() - started, 3)
        if writer is None:
            return payload, None
        writer.close()
        writer.write_tables({k: v for k, v in payload.items() if k != "results"}, thresholds_file=False)
        return payload, sink.value()  # type: ignore[union-attr]


def _add_error_handlers(app: Any) -> None:
    """Every error answers {"error": "..."} JSON."""
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 404 unknown path, 405 wrong method, ...: the documented {"error"} shape, not {"detail"}
        path = request.url.path[:100]
        messages = {404: f"not found: {path}", 405: f"method {request.method} not allowed for {path}"}
        detail = exc.detail if isinstance(exc.detail, str) else None
        message = messages.get(exc.status_code, detail or "request refused")
        if detail and exc.status_code not in messages:
            message = detail
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        return JSONResponse({"error": f"invalid request: {where} {first.get('msg', '')}".strip()}, status_code=400)


def _add_pages(app: Any, service: SegmentService) -> None:
    """The page, its static files, /api/info and the example images."""
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        path = STATIC_DIR / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise ApiError(404, f"no such file: {name}")
        return FileResponse(path)

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        return service.info()

    @app.get("/api/examples/{name}")
    async def example(name: str) -> FileResponse:
        folder = find_examples_dir()
        allowed = {p[k] for p in EXAMPLE_PAIRS for k in ("prompt", "query")}
        if folder is None or name not in allowed:
            raise ApiError(404, f"no such example: {name}")
        return FileResponse(folder / name, media_type="image/png")


async def _read_segment_form(request: Request, config: WebConfig) -> tuple[list, list, float | None, str, str,
                                                                         str | None]:
    """(prompt files, query files, threshold, format, prompt mode, tile or None) of a segment request.

    Raises:
        ApiError: 400/408/413/415 for malformed, slow, oversized or non-multipart uploads.
    """
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(415, "send multipart/form-data with 'prompt' and 'query' image files")
    try:
        form = await request.form(max_files=config.max_prompts + config.max_queries, max_fields=8,
                                  max_part_size=64 * 1024)
    except MultiPartException as exc:
        raise ApiError(400, f"malformed upload: {exc.message}") from None
    except _TooLarge:  # raised by BodySizeLimit while the body streams in
        raise ApiError(413, f"request too large (limit {config.max_request_mb:g} MiB)") from None
    except _UploadTimeout:  # raised by RequestGate when the body is too slow
        raise ApiError(408, f"upload not completed within {config.upload_timeout_s:g} s") from None
    try:
        prompts = [f for f in form.getlist("prompt") if isinstance(f, UploadFile)]
        queries = [f for f in form.getlist("query") if isinstance(f, UploadFile)]
        if not prompts:
            raise ApiError(400, "missing 'prompt': upload at least one normal image")
        if not queries:
            raise ApiError(400, "missing 'query': upload at least one image to inspect")
        if len(prompts) > config.max_prompts or len(queries) > config.max_queries:
            raise ApiError(413, f"too many files (limits: {config.max_prompts} prompts, "
                                f"{config.max_queries} queries)")
        threshold = _parse_threshold(form.get("threshold"))
        fmt = str(form.get("format") or "json")
        if fmt not in ("json", "zip"):
            raise ApiError(400, "format must be 'json' or 'zip'")
        mode = str(form.get("prompt_mode") or "kshot")
        if mode not in ("kshot", "pool"):
            raise ApiError(400, "prompt_mode must be 'kshot' or 'pool'")
        tile = str(form.get("tile") or "") or None
        if tile not in (None, "auto", "off"):
            raise ApiError(400, "tile must be 'auto' or 'off'")
        for upload in prompts + queries:
            if upload.size is not None and upload.size > config.max_file_bytes:
                raise ApiError(413, f"'{upload.filename}': file too large (limit {config.max_file_mb:g} MiB)")
        prompt_data = [(f.filename or "prompt", await f.read()) for f in prompts]
        query_data = [(f.filename or "query", await f.read()) for f in queries]
    finally:
        await form.close()
    return prompt_data, query_data, threshold, fmt, mode, tile


def create_app(service: SegmentService) -> Any:
    """The FastAPI application for one SegmentService, wrapped in the guard, gate and body-size
    middlewares (see the module docstring)."""
    config = service.config
    # no /api/docs page: Swagger UI loads its scripts from a CDN (fails offline, and would be the
    # only external resource); the schema itself is served at /api/openapi.json
    app = FastAPI(title="metauas", description="Anomaly segmentation from one normal image (MetaUAS).",
                  docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.service = service
    _add_error_handlers(app)
    _add_pages(app, service)

    @app.post("/api/segment")
    async def segment(request: Request) -> Response:
        prompt_data, query_data, threshold, fmt, mode, tile = await _read_segment_form(request, config)
        try:
            payload, archive = await run_in_threadpool(service.run, prompt_data, query_data, threshold, fmt == "zip",
                                                       mode == "pool", tile)
        except InputError as exc:
            raise ApiError(400, str(exc)) from None
        if archive is not None:
            return Response(archive, media_type="application/zip",
                            headers={"Content-Disposition": 'attachment; filename="metauas_results.zip"'})
        return JSONResponse(payload)

    limited = BodySizeLimit(app, config.max_request_bytes)
    return RequestGuard(RequestGate(limited, config), config.allowed_hosts, config.allowed_origins)


def _parse_threshold(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        t = float(str(value))
    except ValueError:
        raise ApiError(400, f"threshold must be a number, got {str(value)[:40]!r}") from None
    if not 0.0 <= t <= 1.0 or t != t:
        raise ApiError(400, f"threshold must be between 0 and 1, got {t}")
    return t

