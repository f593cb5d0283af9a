"""The OpenAI / vLLM chat-completions wire format: request schemas, response bodies, the error shape.

Requests are validated with pydantic (unknown fields are ignored, as vLLM does; fields that would change
the answer but are not supported, such as `n` > 1 or `logprobs`, are refused). Responses are plain dicts
built by the functions below, so a stream chunk costs no model validation. Every error, whatever raised
it, leaves the server as `{"error": {"message", "type", "param", "code"}}`; messages never repeat a
request's payload (a base64 image can be megabytes, and it is the client's own data anyway).
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# HTTP status -> the OpenAI error `type`
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """An error answered to the client: status, short message, OpenAI `code` and the offending `param`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, code=self.code, param=self.param)


def bad_request(message: str, *, code: str = "invalid_request", param: str | None = None) -> APIError:
    return APIError(400, message, code=code, param=param)


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ---------------------------------------------------------------------------------------------- requests
class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class MediaURL(_Model):
    url: str
    detail: str | None = None  # OpenAI's image detail; owl3 always uses its own views


class TextPart(_Model):
    type: Literal["text"]
    text: str


class ImagePart(_Model):
    type: Literal["image_url"]
    image_url: MediaURL


class VideoPart(_Model):
    type: Literal["video_url"]
    video_url: MediaURL


Part = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class Message(_Model):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None


class StreamOptions(_Model):
    include_usage: bool = False


class VideoOptions(_Model):
    num_frames: int | None = Field(default=None, ge=1)
    fps: float | None = Field(default=None, gt=0)


class MediaOptions(_Model):
    video: VideoOptions | None = None


class Retrieval(_Model):
    """owl3's extension: answer from the server's knowledge base (`owl3 serve --kb KB`; docs/rag.md)."""

    top_k: int = Field(default=4, ge=1, le=32)
    # the citations' share: where the answer's hyper-attention fell, or what the answer depends on
    share: Literal["attention", "gradient"] = "attention"


class ChatRequest(_Model):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # the engine keeps seeds in int64
    repetition_penalty: float | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    media_io_kwargs: MediaOptions | None = None
    retrieval: Retrieval | None = None
    # owl3's extension: each image's (and video frame's) share of the answer (docs/rag.md); true = attention
    attribution: bool | Literal["attention", "gradient"] = False
    # accepted only at their neutral values: owl3 does not implement them
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def unsupported(self) -> APIError | None:
        """The first field set to something owl3 cannot do, as a 400."""
        if self.n != 1:
            return bad_request(f"n must be 1 (got {self.n}); ask several times instead", param="n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0:
                return bad_request(
                    f"{name} is not supported; use repetition_penalty",
                    code="unsupported_parameter",
                    param=name,
                )
        if self.logprobs:
            return bad_request("logprobs are not supported", code="unsupported_parameter", param="logprobs")
        if self.tools:
            return bad_request("tools are not supported", code="unsupported_parameter", param="tools")
        if self.response_format and self.response_format.get("type", "text") != "text":
            return bad_request(
                "only the text response_format is supported",
                code="unsupported_parameter",
                param="response_format",
            )
        return None


def parse_request(raw: bytes) -> ChatRequest:
    """The request body -> ChatRequest, or a 400 naming the first problem (never the payload)."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        msg = getattr(e, "msg", "not UTF-8")
        raise bad_request(f"the body is not valid JSON ({msg})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object", code="invalid_json")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as e:
        first = e.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(x) for x in first["loc"]) or None
        raise bad_request(f"{where}: {first['msg']}" if where else first["msg"], param=where) from None


# --------------------------------------------------------------------------------------------- responses
def usage(prompt: int, completion: int, images: int, frames: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "images": images,  # owl3's addition: images and video frames of the prompt
        "video_frames": frames,
    }


def completion(rid: str, model: str, text: str, finish: str, usage_: dict[str, int]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": usage_,
    }


def chunk(
    rid: str,
    model: str,
    created: int,
    delta: dict[str, str] | None,
    finish: str | None = None,
    usage_: dict[str, int] | None = None,
) -> str:
    """One Server-Sent Event of a `chat.completion.chunk` (no choice when `delta` is None: the usage)."""
    body: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
    body["choices"] = (
        [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    )
    if usage_ is not None:
        body["usage"] = usage_
    return sse(body)


def extras_chunk(rid: str, model: str, created: int, extras: dict[str, Any]) -> dict[str, Any]:
    """owl3's extensions of a stream (the `citations` of an answer from a knowledge base, the `shares` of
    one asked for with `attribution`): a chunk with no choices that carries them (OpenAI clients skip
    chunks without choices, as they do the usage chunk)."""
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            **extras}  # fmt: skip


def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"
