"""A validated chat request -> what the engine needs: the Encoding, the SamplingParams, the stop strings.

OpenAI messages become owl3 messages: a list of content parts is joined with newlines, as vLLM joins
them, and each `image_url` / `video_url` part becomes an `<|image|>` / `<|video|>` placeholder where it
stands (so `[image, "What is it?"]` is the `"<|image|>\\nWhat is it?"` of the Python API). Counts are
checked before any media is read; media are decoded and the prompt tokenized here, in a worker thread of
the server's pool, so a bad image is a 400 before the request ever queues for the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from owl3.errors import Owl3Error
from owl3.inference.sampling import SamplingParams
from owl3.processing import Encoding
from owl3.serving.media import ClipCache, MediaPolicy, decode_image, decode_video, read_url
from owl3.serving.protocol import ChatRequest, ImagePart, TextPart, bad_request

DEFAULT_FRAMES = 8  # frames sampled from a video when the request does not say (the official default)


@dataclass(frozen=True)
class Limits:
    max_images: int = 32  # image_url parts per request
    max_frames: int = 32  # video frames per request, all its videos together


@dataclass
class Prepared:
    encoding: Encoding
    params: SamplingParams
    stop: tuple[str, ...]  # stop strings, matched on the text
    prompt_tokens: int
    images: int
    frames: int
    hits: list[Any] | None = None  # with "retrieval": the knowledge items put in the prompt
    share: str = "attention"  # with "retrieval": the citations' measure
    attribution: str | None = None  # "attention" or "gradient": the answer's shares are asked for


def prepare(
    pipe: Any,
    req: ChatRequest,
    limits: Limits,
    policy: MediaPolicy,
    max_model_len: int,
    clips: ClipCache | None = None,
    kb: Any = None,
) -> Prepared:
    """Build the request's engine input; every problem the client caused is a 400 (`APIError`).
    `clips`: videos decoded for earlier requests, reused when the same one comes back. `kb`: the
    server's knowledge base, for requests that ask for `retrieval`."""
    messages, images, videos = _messages(req, pipe.processor.image_token, pipe.processor.video_token)
    if len(images) > limits.max_images:
        raise bad_request(
            f"too many images: {len(images)}, the server takes at most {limits.max_images} per request",
            code="too_many_images",
            param="messages",
        )
    frames, fps = _frame_rate(req, limits)
    if videos and frames is not None and len(videos) * frames > limits.max_frames:
        raise bad_request(
            f"too many video frames: {len(videos)} videos x {frames} frames, the server takes at most "
            f"{limits.max_frames} per request",
            code="too_many_frames",
            param="media_io_kwargs",
        )
    pil_images = [decode_image(read_url(url, "image", where, policy), where, policy) for url, where in images]
    clips = [
        decode_video(
            read_url(url, "video", where, policy),
            where,
            policy,
            frames=frames,
            fps=fps,
            max_frames=limits.max_frames,
            cache=clips,
        )
        for url, where in videos
    ]
    n_frames = sum(len(c) for c in clips)
    if n_frames > limits.max_frames:  # reachable with fps sampling of several videos
        raise bad_request(
            f"too many video frames: {n_frames}, the server takes at most {limits.max_frames} per request",
            code="too_many_frames",
            param="media_io_kwargs",
        )
    hits, cut = None, None
    if req.retrieval is not None:
        messages, pil_images, hits = _retrieve(pipe, kb, req, messages, pil_images, clips)
        cut = False  # several small pictures: no crops, as pipe.chat(..., kb=KB)
    try:
        enc = pipe.encode(messages, pil_images, clips, cut=cut)
    except Owl3Error as e:
        raise bad_request(str(e)) from None
    n = int(enc.input_ids.shape[0])
    params = _sampling(pipe, req, n, max_model_len)
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if any(not s for s in stop):
        raise bad_request("stop strings must not be empty", param="stop")
    share = req.retrieval.share if req.retrieval is not None else "attention"
    attribution = "attention" if req.attribution is True else req.attribution or None
    return Prepared(enc, params, stop, n, len(pil_images), n_frames, hits, share, attribution)


def _retrieve(pipe: Any, kb: Any, req: ChatRequest, messages: list, images: list, clips: list):
    """The last user turn with its retrieved knowledge items in front (owl3.kb.answer)."""
    if kb is None:
        raise bad_request(
            "this server has no knowledge base; start it with 'owl3 serve --kb KB' or drop \"retrieval\"",
            code="retrieval_unavailable",
            param="retrieval",
        )
    if clips:
        raise bad_request("retrieval takes a query image, not videos", param="retrieval")
    from owl3.kb.answer import knowledge_request

    try:
        return knowledge_request(pipe, kb, messages, images, req.retrieval.top_k)
    except Owl3Error as e:
        raise bad_request(str(e), param="retrieval") from None


def _messages(
    req: ChatRequest, image_token: str, video_token: str
) -> tuple[list[dict[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """owl3 messages with placeholders, and the (url, location) of each image and video in order."""
    out, images, videos = [], [], []
    for i, m in enumerate(req.messages):
        content = m.content
        if content is None:
            content = ""
        if isinstance(content, str):
            pieces = [content]
        else:
            pieces = []
            for j, part in enumerate(content):
                where = f"messages[{i}].content[{j}]"
                if isinstance(part, TextPart):
                    pieces.append(part.text)
                elif isinstance(part, ImagePart):
                    images.append((part.image_url.url, where))
                    pieces.append(image_token)
                else:
                    videos.append((part.video_url.url, where))
                    pieces.append(video_token)
        for j, piece in enumerate(pieces):
            if piece not in (image_token, video_token) and (image_token in piece or video_token in piece):
                raise bad_request(
                    f"messages[{i}] holds the text {image_token} or {video_token}; send media as "
                    "image_url / video_url parts",
                    param=f"messages[{i}].content" + (f"[{j}]" if not isinstance(content, str) else ""),
                )
        role = "system" if m.role == "developer" else m.role
        out.append({"role": role, "content": "\n".join(pieces)})
    return out, images, videos


def _frame_rate(req: ChatRequest, limits: Limits) -> tuple[int | None, float | None]:
    """(frames per video, None) or (None, fps) from vLLM's media_io_kwargs, clamped to the server limit."""
    video = req.media_io_kwargs.video if req.media_io_kwargs else None
    if video is not None and video.num_frames is not None and video.fps is not None:
        raise bad_request(
            "give media_io_kwargs.video num_frames or fps, not both", param="media_io_kwargs.video"
        )
    if video is not None and video.fps is not None:
        return None, video.fps
    frames = video.num_frames if video is not None and video.num_frames is not None else DEFAULT_FRAMES
    return min(frames, limits.max_frames), None


def _sampling(pipe: Any, req: ChatRequest, prompt: int, max_model_len: int) -> SamplingParams:
    room = max_model_len - prompt
    if room < 1:
        raise bad_request(
            f"the prompt is {prompt} tokens long, but the model's context is {max_model_len} tokens; "
            "shorten the conversation or send fewer images or frames",
            code="context_length_exceeded",
            param="messages",
        )
    asked = req.max_completion_tokens or req.max_tokens
    if asked is not None and asked > room:
        name = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        raise bad_request(
            f"{name} is {asked}, but the context is {max_model_len} tokens and the prompt takes {prompt}: "
            f"at most {room} are left",
            code="context_length_exceeded",
            param=name,
        )
    kw: dict[str, Any] = {"max_new_tokens": asked or room}  # by default, up to the end of the context
    for name in ("temperature", "top_p", "top_k", "seed", "repetition_penalty"):
        value = getattr(req, name)
        if value is not None:
            kw[name] = value
    if kw.get("top_k") == -1:  # vLLM's "off"
        kw["top_k"] = 0
    try:
        return pipe.sampling(**kw)
    except Owl3Error as e:
        raise bad_request(str(e)) from None
