"""The FastAPI application (routes, the API key, the error shape, the chat page) and running it.

`create_app(pipe, engine, config)` builds an app around a loaded pipeline (its processor and tokenizer
encode requests) and an engine with the continuous-batching interface (`add_request`, `abort`, `step`,
...); the engine's worker thread starts and stops with the app's lifespan. Routes:
`GET /` (the chat page, static files from owl3/serving/static), `GET /health`, `GET /metrics` (both open),
`GET /v1/models` and `POST /v1/chat/completions` (behind `--api-key` when one is set).

`run` serves it with uvicorn until SIGTERM or Ctrl-C. On the first signal the app stops taking requests
(503, and /health answers 503), uvicorn stops accepting connections, and the running requests get
`shutdown_timeout_s` to finish; the worker then aborts those still running (their clients get
`finish_reason: "abort"` and `[DONE]`), uvicorn waits for their responses to end, the worker thread
stops, and SIGTERM ends the process with code 0.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import socket
import time
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from owl3.serving.chat import ChatService, ServeConfig
from owl3.serving.metrics import Metrics
from owl3.serving.protocol import APIError, error_body

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("owl3.serve")
# the page loads only its own files; media previews are the user's own data: / blob: URLs
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' data: blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


def create_app(pipe: Any, engine: Any, config: ServeConfig) -> FastAPI:
    metrics = Metrics(config.model_name)
    service = ChatService(pipe, engine, config, metrics)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.worker.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, service.worker.stop)
            service.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="owl3", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.state.metrics = metrics

    def check_key(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), config.api_key.encode()
        ):
            raise APIError(
                401, "a valid API key is required (Authorization: Bearer KEY)", code="invalid_api_key"
            )

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        metrics.rejected.labels(config.model_name, str(e.status)).inc()
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        message = {404: "no such route", 405: "method not allowed"}.get(e.status_code, str(e.detail))
        return JSONResponse(error_body(e.status_code, message), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(400, "invalid request"), status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("request failed")
        return JSONResponse(error_body(500, f"internal error ({type(e).__name__})"), status_code=500)

    @app.get("/health")
    async def health() -> Response:
        if service.draining or not service.worker.alive:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def models() -> dict:
        card = {
            "id": config.model_name,
            "object": "model",
            "created": created,
            "owned_by": "owl3",
            "max_model_len": service.max_model_len,
        }
        if config.kb is not None:  # owl3's extension: requests may ask for "retrieval" (docs/rag.md)
            card["knowledge_base"] = {"name": Path(config.kb.path).name, "items": len(config.kb)}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(request: Request) -> Response:
        return await service.handle(request)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


# ---------------------------------------------------------------------------------------------- running
ABORT_MARGIN_S = 1.0  # the worker aborts this long before uvicorn's own deadline cancels the handlers


class GracefulServer(uvicorn.Server):
    """uvicorn.Server that drains the owl3 app first and treats SIGTERM as a normal end (exit 0)."""

    def __init__(self, config: uvicorn.Config, service: ChatService) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.service.draining:
            self.service.draining = True
            timeout = self.service.config.shutdown_timeout_s
            self.service.worker.drain(max(0.0, timeout - ABORT_MARGIN_S))
        super().handle_exit(sig, frame)
        # uvicorn re-raises a captured signal once it has shut down, which would end the process by
        # SIGTERM's default action (status 143); a drained shutdown is a normal exit
        captured = getattr(self, "_captured_signals", None)
        if sig == signal.SIGTERM and captured and captured[-1] == sig:
            captured.pop()


def make_server(app: FastAPI, host: str, port: int, log_level: str = "info") -> GracefulServer:
    service: ChatService = app.state.service
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=int(service.config.shutdown_timeout_s) + 1,
        timeout_keep_alive=5,
    )
    return GracefulServer(config, service)


def run(
    app: FastAPI, host: str, port: int, sock: socket.socket | None = None, log_level: str = "info"
) -> int:
    """Serve until SIGTERM/SIGINT (on `sock` if given, already bound); 0 after a graceful shutdown."""
    make_server(app, host, port, log_level).run(sockets=[sock] if sock is not None else None)
    return 0
