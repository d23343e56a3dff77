"""Local web app: a small page and a JSON API around one loaded segmenter (FastAPI).

Endpoints (documented in docs/web.md):
  GET  /                 the page (static HTML/JS, no external resources)
  GET  /api/info         model, backend, size, default threshold, limits, example pairs
  GET  /api/examples/F   an example image
  POST /api/segment      multipart: prompt (1..K files), query (1..N files), [threshold],
                         [format=json|zip] -> JSON with scores and PNGs, or a zip of results

Safety: request bodies are capped while they stream in (HTTP 413), each file is capped, the
number of files is capped, images are size-checked from their header before decoding
(decompression bombs, 413), non-images get 415 and broken images 400, always as
{"error": "..."} JSON. Model calls are serialised by a lock (the segmenter caches one prompt
at a time); decoding and PNG encoding run outside it, in worker threads.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from metauas.errors import ImageTooLargeError, InputError, UnsupportedImageError

STATIC_DIR = Path(__file__).resolve().parent / "static"
EXAMPLE_PAIRS = ({"name": "brick", "prompt": "prompt.png", "query": "query.png"},)
WEB_MAX_SIDE = 1024  # overlays/maps sent to the page are at most this large per side


@dataclass
class WebConfig:
    """Limits and defaults of the web app."""

    max_file_mb: float = 10.0
    max_request_mb: float = 50.0
    max_prompts: int = 8
    max_queries: int = 16
    max_pixels: int = 40_000_000
    threshold: float | None = None  # default image/pixel threshold for decisions (else per-prompt calibration)

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 2**20)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 2**20)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _TooLarge(Exception):
    pass


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
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return msg

        async def tracking_send(msg: dict) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, {"error": message})


async def _send_json(send: Any, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def find_examples_dir() -> Path | None:
    """Example images: installed package data (metauas/examples) or the repository's examples/."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "examples", here.parents[3] / "examples"):
        if all((candidate / pair[key]).is_file() for pair in EXAMPLE_PAIRS for key in ("prompt", "query")):
            return candidate
    return None


def decode_upload(data: bytes, name: str, config: WebConfig) -> np.ndarray:
    """Uploaded bytes -> (H, W, 3) uint8 RGB through the shared untrusted-image boundary.

    Raises:
        ApiError: 400 (empty, corrupt, truncated, too small), 413 (file or pixel count over the
            limits) or 415 (not PNG, JPEG, BMP, TIFF or WebP).
    """
    from metauas.inference.images import ALLOWED_DESCRIPTION, MIN_SIDE, decode_image

    if not data:
        raise ApiError(400, f"{name}: empty file")
    if len(data) > config.max_file_bytes:
        raise ApiError(413, f"{name}: file too large ({len(data) / 2**20:.1f} MiB; limit {config.max_file_mb:g} MiB)")
    try:
        rgb = decode_image(data, name, max_pixels=config.max_pixels)
    except UnsupportedImageError:
        raise ApiError(415, f"{name}: not a supported image ({ALLOWED_DESCRIPTION})") from None
    except ImageTooLargeError as exc:
        raise ApiError(413, str(exc)) from None
    except InputError as exc:
        raise ApiError(400, str(exc)) from None
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise ApiError(400, f"{name}: image too small")
    return rgb


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _safe_stem(filename: str, used: set[str]) -> str:
    stem = Path(filename or "image").stem
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80] or "image"
    name, i = stem, 2
    while name.lower() in used:
        name, i = f"{stem}_{i}", i + 1
    used.add(name.lower())
    return name


class SegmentService:
    """What the endpoints call: one segmenter, a lock, threshold lookup, result rendering."""

    def __init__(self, segmenter: Any, model_name: str, digest: str = "", backend: str = "torch",
                 model_ref: str | None = None, config: WebConfig | None = None) -> None:
        self.segmenter = segmenter
        self.model_name = model_name
        self.digest = digest
        self.backend = backend
        self.model_ref = model_ref
        self.config = config or WebConfig()
        self.lock = threading.Lock()
        self._prompt_key: str | None = None
        self.calls = 0

    def info(self) -> dict[str, Any]:
        c = self.config
        examples = []
        if find_examples_dir() is not None:
            examples = [{"name": p["name"], "prompt": f"/api/examples/{p['prompt']}",
                         "query": f"/api/examples/{p['query']}"} for p in EXAMPLE_PAIRS]
        return {"model": self.model_name, "backend": self.backend, "size": int(self.segmenter.size),
                "untrained": self.model_name.startswith("untrained"), "threshold": c.threshold,
                "limits": {"max_file_bytes": c.max_file_bytes, "max_request_bytes": c.max_request_bytes,
                           "max_prompts": c.max_prompts, "max_queries": c.max_queries, "max_pixels": c.max_pixels},
                "examples": examples}

    def _threshold(self, requested: float | None, prompt_key: str) -> tuple[float | None, str]:
        if requested is not None:
            return requested, "request"
        if self.config.threshold is not None:
            return self.config.threshold, "server"
        from metauas.inference.calibration import load_thresholds, store_path

        try:
            stored = load_thresholds(store_path(self.model_ref, self.model_name), self.digest,
                                     int(self.segmenter.size), prompt_key)
        except InputError:
            stored = None
        return (stored.image, "calibration") if stored is not None else (None, "")

    def run(self, prompts: list[tuple[str, bytes]], queries: list[tuple[str, bytes]],
            threshold: float | None, as_zip: bool) -> tuple[dict[str, Any], bytes | None]:
        """Decode, segment under the lock, render; raises ApiError for bad input."""
        from metauas.inference.calibration import fingerprint

        started = time.perf_counter()
        prompt_rgbs = [decode_upload(data, f"prompt '{name}'", self.config) for name, data in prompts]
        query_rgbs = [decode_upload(data, f"query '{name}'", self.config) for name, data in queries]
        key = fingerprint([data for _, data in prompts])
        used: set[str] = set()
        names = [_safe_stem(name, used) for name, _ in queries]
        with self.lock:
            if self._prompt_key != key:
                self._prompt_key = None
                self.segmenter.set_prompt(prompt_rgbs)
                self._prompt_key = key
            results = self.segmenter.segment(query_rgbs, names=names)
            self.calls += 1
        t, source = self._threshold(threshold, key)
        payload: dict[str, Any] = {"model": self.model_name, "backend": self.backend,
                                   "size": int(self.segmenter.size), "num_prompts": len(prompts),
                                   "threshold": t, "threshold_source": source, "results": []}
        archive = io.BytesIO() if as_zip else None
        zf = zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) if archive is not None else None
        for (filename, _), name, rgb, result in zip(queries, names, query_rgbs, results):
            payload["results"].append(self._render(filename, name, rgb, result, t, zf))
        payload["seconds"] = round(time.perf_counter() - started, 3)
        if zf is not None:
            _zip_tables(zf, payload)
            zf.close()
            return payload, archive.getvalue()  # type: ignore[union-attr]
        return payload, None

    def _render(self, filename: str, name: str, rgb: np.ndarray, result: Any, t: float | None,
                zf: zipfile.ZipFile | None) -> dict[str, Any]:
        from metauas.inference.visualize import (binary_mask, encode_png, heat_overlay, map_to_uint16,
                                                 render_overlay)

        amap = result.anomaly_map
        entry: dict[str, Any] = {"name": name, "filename": filename, "width": int(rgb.shape[1]),
                                 "height": int(rgb.shape[0]), "score": float(result.score),
                                 "decision": None if t is None else ("anomalous" if result.score > t else "normal")}
        if zf is not None:
            zf.writestr(f"{name}_map.png", encode_png(map_to_uint16(amap)))
            canvas = render_overlay(rgb, amap, title=f"{filename}  score {result.score:.3f}", threshold=t)
            zf.writestr(f"{name}_overlay.png", encode_png(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)))
            if t is not None:
                mask = binary_mask(amap, t)
                zf.writestr(f"{name}_mask.png", encode_png(mask))
                entry["anomalous_fraction"] = float(np.count_nonzero(mask)) / mask.size
            return entry
        h, w = amap.shape
        scale = min(1.0, WEB_MAX_SIDE / max(h, w))
        small_rgb, small_map = rgb, amap
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small_rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            small_map = cv2.resize(amap, size, interpolation=cv2.INTER_AREA)
        overlay = heat_overlay(small_rgb, small_map)
        entry["overlay"] = _data_url(encode_png(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR)))
        # 8-bit map for the page's threshold slider (value = round(p * 255))
        entry["map"] = _data_url(encode_png(np.round(np.clip(small_map, 0, 1) * 255).astype(np.uint8)))
        if t is not None:
            entry["anomalous_fraction"] = float(np.count_nonzero(amap > t)) / amap.size
        return entry


def _zip_tables(zf: zipfile.ZipFile, payload: dict[str, Any]) -> None:
    rows = payload["results"]
    for r in rows:
        r["map"], r["overlay"] = f"{r['name']}_map.png", f"{r['name']}_overlay.png"
        r["mask"] = f"{r['name']}_mask.png" if payload["threshold"] is not None else None
    zf.writestr("results.json", json.dumps(payload, indent=2))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["query", "name", "width", "height", "score", "decision", "map", "overlay", "mask"])
    for r in rows:
        writer.writerow([r["filename"], r["name"], r["width"], r["height"], f"{r['score']:.6f}", r["decision"] or "",
                         r["map"], r["overlay"], r["mask"] or ""])
    zf.writestr("results.csv", buffer.getvalue())


def create_app(service: SegmentService) -> Any:
    """The FastAPI application for one SegmentService."""
    config = service.config
    app = FastAPI(title="metauas", description="Anomaly segmentation from one normal image (MetaUAS).",
                  docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    app.state.service = service

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

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

    @app.post("/api/segment")
    async def segment(request: Request) -> Response:
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
            for upload in prompts + queries:
                if upload.size is not None and upload.size > config.max_file_bytes:
                    raise ApiError(413, f"'{upload.filename}': file too large (limit {config.max_file_mb:g} MiB)")
            prompt_data = [(f.filename or "prompt", await f.read()) for f in prompts]
            query_data = [(f.filename or "query", await f.read()) for f in queries]
        finally:
            await form.close()
        try:
            payload, archive = await run_in_threadpool(service.run, prompt_data, query_data, threshold, fmt == "zip")
        except InputError as exc:
            raise ApiError(400, str(exc)) from None
        if archive is not None:
            return Response(archive, media_type="application/zip",
                            headers={"Content-Disposition": 'attachment; filename="metauas_results.zip"'})
        return JSONResponse(payload)

    return BodySizeLimit(app, config.max_request_bytes)


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

