"""The OpenAI-compatible HTTP server (`owl3 serve`) and its web chat page.

protocol.py  request schemas, response bodies, the error shape    media.py / fetch.py  media URLs, safely
prepare.py   a request -> Encoding + SamplingParams + stop strings  text.py   token ids -> text, stop strings
worker.py    the thread that owns the engine                       chat.py   POST /v1/chat/completions
metrics.py   Prometheus metrics                                    app.py    the FastAPI app; uvicorn, SIGTERM
command.py   `owl3 serve`
static/      the chat page (HTML, CSS, JS; no build step, no CDN)

Nothing is imported here, so `owl3 serve --help` stays free of FastAPI and torch.
"""
