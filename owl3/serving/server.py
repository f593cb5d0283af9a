"""Running the app with uvicorn, and stopping it gracefully on SIGTERM or Ctrl-C.

On the first SIGTERM/SIGINT the app stops taking requests (503, and /health answers 503), uvicorn stops
accepting connections, and the requests already running get `shutdown_timeout_s` to finish; the engine
worker then aborts those still running (their clients get `finish_reason: "abort"` and `[DONE]`), uvicorn
waits for their responses to end, the worker thread stops, and the process exits with code 0.
"""

from __future__ import annotations

import signal
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

ABORT_MARGIN_S = 1.0  # the worker aborts this long before uvicorn's own deadline cancels the handlers


class GracefulServer(uvicorn.Server):
    """uvicorn.Server that drains the owl3 app first and treats SIGTERM as a normal end (exit 0)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, shutdown_timeout_s: float) -> None:
        super().__init__(config)
        self.owl3_app = app
        self.shutdown_timeout_s = shutdown_timeout_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        service = self.owl3_app.state.service
        if not service.draining:
            service.draining = True
            service.worker.drain(max(0.0, self.shutdown_timeout_s - ABORT_MARGIN_S))
        super().handle_exit(sig, frame)
        # uvicorn re-raises a captured signal once it has shut down, which would end the process by
        # SIGTERM's default action (status 143); a drained shutdown is a normal exit
        captured = getattr(self, "_captured_signals", None)
        if sig == signal.SIGTERM and captured and captured[-1] == sig:
            captured.pop()


def make_server(app: FastAPI, host: str, port: int, shutdown_timeout_s: float, log_level: str = "info"):
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=int(shutdown_timeout_s) + 1,
        timeout_keep_alive=5,
    )
    return GracefulServer(config, app, shutdown_timeout_s)


def run(
    app: FastAPI,
    host: str,
    port: int,
    shutdown_timeout_s: float = 30.0,
    sock: socket.socket | None = None,
    log_level: str = "info",
) -> int:
    """Serve until SIGTERM/SIGINT; returns 0 after a graceful shutdown."""
    server = make_server(app, host, port, shutdown_timeout_s, log_level)
    server.run(sockets=[sock] if sock is not None else None)
    return 0
