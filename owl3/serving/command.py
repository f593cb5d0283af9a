"""`owl3 serve`: the OpenAI-compatible server and its chat page (docs/serving.md).

Argument wiring only; importing this module imports neither torch nor FastAPI (`owl3 serve --help` stays
light): the command imports the server when it runs.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
from pathlib import Path

from owl3.errors import Owl3Error
from owl3.options import add_model_args, add_pixel_args

DEFAULT_NAME = "owl3-demo"  # the served name of the built-in model
SERVE_MAX_PIXELS = 64_000_000  # images (and video frames) from strangers: lower than the CLI's 128M


def cmd_serve(args: argparse.Namespace) -> int:
    _check(args)
    sock = listen(args.host, args.port)  # before the model loads: a taken port fails at once
    api_key = args.api_key or os.environ.get("OWL3_API_KEY") or None
    import logging

    try:
        from owl3.serving.app import create_app, run
        from owl3.serving.chat import ServeConfig
        from owl3.serving.media import MediaPolicy, MiB
        from owl3.serving.prepare import Limits
    except ImportError as e:
        raise Owl3Error(
            f"owl3 serve needs the serve extra ({e.name} is missing): pip install 'owl3[serve]'"
        ) from None
    from owl3.options import load_pipeline

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    pipe = load_pipeline(args)
    kb = None
    if args.kb is not None:
        from owl3.kb.embed import weights_hash
        from owl3.kb.store import open_kb

        kb = open_kb(args.kb)
        kb.check_model(weights_hash(pipe.model), args.model or "the built-in model")
    engine = make_engine(pipe, args.max_num_seqs, args.prefix_cache_mb)
    name = args.served_model_name or (args.model if args.model else DEFAULT_NAME)
    config = ServeConfig(
        model_name=name,
        api_key=api_key,
        limits=Limits(max_images=args.max_images, max_frames=args.max_frames),
        media=MediaPolicy(
            local_root=args.allowed_local_media_path,
            allow_remote=args.allow_remote_media,
            allow_private_hosts=args.allow_private_media_hosts,
            max_bytes=int(args.max_media_mb * MiB),
            max_image_pixels=args.max_pixels or 2**62,  # 0 = no limit
            official_pixels=args.official_pixels,
        ),
        max_queue=args.max_queue,
        max_body_bytes=int(args.max_request_mb * MiB),
        shutdown_timeout_s=args.shutdown_timeout,
        kb=kb,
    )
    app = create_app(pipe, engine, config)
    port = sock.getsockname()[1]  # --port 0: the free port the system chose
    where = f"http://{args.host}:{port}"
    print(f"owl3 serve: {name} at {where}/v1 (chat page: {where}/)", flush=True)
    return run(app, args.host, port, sock=sock)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` (uvicorn listens on it); an unknown host or a port in use is one
    clear error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise Owl3Error(
            f"cannot listen on {host}:{port}: unknown address ({e.strerror}); give --host an address of "
            "this machine, e.g. 127.0.0.1 or 0.0.0.0"
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts reuse the port
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        hint = {
            errno.EADDRINUSE: "another process is using it; stop it or pick another --port",
            errno.EACCES: "ports below 1024 need privileges; pick a --port of 1024 or more",
            errno.EADDRNOTAVAIL: "it is not an address of this machine; try --host 127.0.0.1 or 0.0.0.0",
        }.get(e.errno, "check --host and --port")
        raise Owl3Error(f"cannot listen on {host}:{port}: {e.strerror}; {hint}") from None
    return sock


def make_engine(pipe, max_num_seqs: int, prefix_cache_mb: float = 256):
    """The server's engine, made for it (its KV pool is allocated at its first request, so the
    pipeline's unused one costs nothing); it becomes the pipeline's too."""
    from owl3.inference.engine import Engine

    stop, pad = pipe.processor.stop_token_ids, pipe.processor.pad_token_id
    pipe.engine = Engine(pipe.model, stop, pad, max_num_seqs=max_num_seqs, prefix_cache_mb=prefix_cache_mb)
    return pipe.engine


def _check(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise Owl3Error(f"--port must be between 0 (any free port) and 65535, got {args.port}")
    for name in ("max_images", "max_frames", "max_num_seqs"):
        if getattr(args, name) < 1:
            raise Owl3Error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.prefix_cache_mb >= 0:
        raise Owl3Error("--prefix-cache-mb must be 0 (off) or more")
    if args.max_queue < 0:
        raise Owl3Error("--max-queue must be 0 or more")
    root = args.allowed_local_media_path
    if root is not None and not Path(root).is_dir():
        raise Owl3Error(f"--allowed-local-media-path {root} is not a folder")
    if args.allow_private_media_hosts and not args.allow_remote_media:
        raise Owl3Error("--allow-private-media-hosts needs --allow-remote-media")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the model over an OpenAI-compatible HTTP API, with a chat page",
        description="Serve a model: POST /v1/chat/completions (OpenAI / vLLM format, streaming), "
        "GET /v1/models, /health, /metrics, and a chat page at /. See docs/serving.md.",
    )
    add_model_args(p)
    p.add_argument(
        "--kb",
        metavar="KB",
        default=None,
        help='a knowledge base (owl3 kb build) for requests with "retrieval": {"top_k": K}; their answers '
        "carry citations (docs/rag.md)",
    )
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free port)")
    g.add_argument(
        "--served-model-name",
        metavar="NAME",
        default=None,
        help=f"the model name clients send (default: --model as given, or {DEFAULT_NAME})",
    )
    g.add_argument(
        "--api-key",
        metavar="KEY",
        default=None,
        help="require 'Authorization: Bearer KEY' on /v1 (default: $OWL3_API_KEY, else open)",
    )
    g.add_argument(
        "--max-num-seqs",
        type=int,
        default=8,
        metavar="B",
        help="requests decoded together in one batch (default: 8)",
    )
    g.add_argument(
        "--prefix-cache-mb",
        type=float,
        default=256,
        metavar="MB",
        help="text KV of recent conversations, reused when a request continues one; 0 turns it off "
        "(default: 256)",
    )
    g.add_argument(
        "--max-queue",
        type=int,
        default=64,
        metavar="Q",
        help="requests that may wait beyond the batch; more are answered 429 (default: 64)",
    )
    g.add_argument(
        "--max-request-mb",
        type=float,
        default=128,
        metavar="MB",
        help="largest request body; larger ones are answered 413 (default: 128)",
    )
    g.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM, seconds running requests get before they are aborted (default: 30)",
    )
    m = p.add_argument_group("media")
    m.add_argument("--max-images", type=int, default=32, metavar="N", help="images per request (default: 32)")
    m.add_argument(
        "--max-frames",
        type=int,
        default=32,
        metavar="N",
        help="video frames per request, all videos together; a request's num_frames is "
        "clamped to it (default: 32)",
    )
    m.add_argument(
        "--allowed-local-media-path",
        metavar="DIR",
        default=None,
        help="allow file:// media URLs under DIR (default: file:// refused)",
    )
    m.add_argument(
        "--allow-remote-media",
        action="store_true",
        help="allow http(s):// media URLs (public addresses only; default: refused)",
    )
    m.add_argument(
        "--allow-private-media-hosts",
        action="store_true",
        help="with --allow-remote-media: also fetch from loopback, private and link-local "
        "addresses (unsafe on a shared network)",
    )
    m.add_argument(
        "--max-media-mb",
        type=float,
        default=64,
        metavar="MB",
        help="largest image or video, fetched or sent (default: 64)",
    )
    add_pixel_args(m, default=SERVE_MAX_PIXELS)
    p.set_defaults(func=cmd_serve)
