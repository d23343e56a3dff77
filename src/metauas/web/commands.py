"""CLI: `metauas serve` (the local web app, see docs/web.md)."""

from __future__ import annotations

import argparse
import sys

from metauas.errors import InputError, MetaUASError
from metauas.inference import commands as inference_commands
from metauas.inference.commands import _add_model_options, _probability


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` subcommand to the `metauas` parser."""
    serve = subparsers.add_parser(
        "serve", help="local web page + JSON API for segmenting uploaded images",
        description="Starts a local web app (FastAPI + uvicorn): open http://HOST:PORT/ in a browser; "
                    "the JSON API is documented in docs/web.md (OpenAPI schema at /api/openapi.json). Only "
                    "localhost Host names and same-origin pages are served unless --allow-host/--allow-origin "
                    "say otherwise.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, local only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    _add_model_options(serve)
    serve.add_argument("--threshold", type=_probability, default=None,
                       help="default decision threshold (else: stored calibration for the uploaded prompt)")
    serve.add_argument("--max-file-mb", type=float, default=10.0, help="largest accepted file (MiB, default 10)")
    serve.add_argument("--max-request-mb", type=float, default=50.0, help="largest request body (MiB, default 50)")
    serve.add_argument("--max-queries", type=int, default=16, help="query images per request (default 16)")
    serve.add_argument("--max-active-requests", type=int, default=2,
                       help="segment requests processed at once (default 2)")
    serve.add_argument("--max-waiting-requests", type=int, default=8,
                       help="further requests that wait for a slot; beyond them: HTTP 503 (default 8)")
    serve.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="also answer requests whose Host header names NAME (repeatable; '*' = any; "
                            "default: 127.0.0.1, localhost, ::1 and the --host address)")
    serve.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                       help="also accept uploads from pages of ORIGIN, e.g. http://tool.lan:9000 (repeatable)")
    serve.set_defaults(func=run_serve)


def build_service(args: argparse.Namespace, shots: int = 1):
    """Segmenter + limits from the command line (shared with the tests).

    Raises:
        InputError: a limit that is not positive (and the engine's errors).
    """
    from metauas.web.app import LOCAL_HOSTS, SegmentService, WebConfig

    active, waiting = getattr(args, "max_active_requests", 2), getattr(args, "max_waiting_requests", 8)
    if args.max_file_mb <= 0 or args.max_request_mb <= 0 or args.max_queries < 1 or active < 1 or waiting < 0:
        raise InputError("limits must be positive")
    hosts = list(LOCAL_HOSTS)
    listen = getattr(args, "host", "127.0.0.1")
    if listen not in ("0.0.0.0", "::", ""):
        hosts.append(listen)
    hosts += getattr(args, "allow_host", None) or []
    config = WebConfig(max_file_mb=args.max_file_mb, max_request_mb=args.max_request_mb,
                       max_queries=args.max_queries, threshold=args.threshold, max_active_requests=active,
                       max_waiting_requests=waiting, allowed_hosts=list(dict.fromkeys(hosts)),
                       allowed_origins=list(getattr(args, "allow_origin", None) or []))
    if args.backend == "onnxruntime":
        config.max_prompts = shots  # an ONNX export is built for a fixed number of prompts
    engine = inference_commands.build_engine(args, shots=shots)
    return SegmentService(engine.segmenter, engine.model_name, engine.digest, engine.backend,
                          engine.model_ref, config)


def _check_port_free(host: str, port: int) -> None:
    """Fail with one line before loading the model when the address is taken."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputError(f"cannot resolve --host {host}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def run_serve(args: argparse.Namespace) -> int:
    """`metauas serve`: start the local web app with uvicorn (blocks until stopped); returns 0.

    Raises:
        MetaUASError: fastapi/uvicorn/python-multipart are not installed.
        InputError: a port outside 1..65535, a host that cannot be resolved, an address that
            is taken or cannot be listened on, or invalid limits.
    """
    try:
        import uvicorn

        from metauas.web.app import create_app
    except ImportError as exc:
        raise MetaUASError(f"the web app needs fastapi, uvicorn and python-multipart "
                           f"(pip install 'metauas[web]'): {exc}") from None
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be between 1 and 65535, got {args.port}")
    _check_port_free(args.host, args.port)
    service = build_service(args)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"metauas: WARNING: listening on {args.host}: anyone who can reach this address can use the app",
              file=sys.stderr)
        if args.host in ("0.0.0.0", "::") and not args.allow_host:
            print("metauas: NOTE: only requests naming localhost are answered; add --allow-host NAME for the "
                  "name or address other machines use", file=sys.stderr)
    print(f"metauas: serving {service.model_name} ({service.backend}, size {service.segmenter.size}) at "
          f"http://{args.host}:{args.port}/  (Ctrl+C to stop)", file=sys.stderr)
    try:
        # uvicorn's own cap on open connections (plain-text 503 beyond it); the app's JSON 503s for
        # segment requests come first, this only bounds floods of other requests
        limit = service.config.max_active_requests + service.config.max_waiting_requests + 32
        uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="warning",
                    limit_concurrency=limit)
    except OSError as exc:
        raise InputError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0
