"""What a request to the pipeline is and what it returns: `Conversation` (one entry of `chat_batch` or
`chat_many`, as a dataclass or a dict), the options it may carry, and `Completion` (an answer with its
tokens, finish reason and, when asked, attention shares and citations). Also `encode_ahead`, which
encodes a stream of conversations a few ahead of the model in a thread. No model code here.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

from owl3.errors import Owl3Error
from owl3.inference.attribution import Share
from owl3.inference.sampling import SamplingParams
from owl3.processing.media import VideoInput

Messages = str | Sequence[dict[str, Any]]


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    # with attribution=True / "gradient": each image's (and video frame's) part of the answer's
    # hyper-attention / of what the answer depends on
    shares: list[Share] | None = None
    # with kb=...: the retrieved knowledge items the answer was given, with their scores and shares
    citations: list[Any] | None = None

    def __str__(self) -> str:
        return self.text


@dataclass
class Conversation:
    """One request of a batch."""

    messages: Messages
    images: Sequence[Any] = ()
    videos: Sequence[VideoInput] = ()
    cut: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


MEDIA_OPTIONS = ("cut", "frames", "fps", "max_frames", "progress", "max_pixels")
SAMPLING_OPTIONS = (*(f.name for f in fields(SamplingParams)), "stop")
CONVERSATION_FIELDS = ("messages", "images", "videos", "cut", "extra")


def split_options(kw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword arguments -> (media options for `encode`, sampling options)."""
    media = {k: kw[k] for k in MEDIA_OPTIONS if k in kw}
    return media, {k: v for k, v in kw.items() if k not in MEDIA_OPTIONS}



def parse_conversation(i: int, c: Any) -> tuple[Conversation, dict[str, Any], dict[str, Any]]:
    """A batch entry -> (the Conversation, its media options, its sampling options)."""
    if isinstance(c, Conversation):
        conv, loose = c, {}
    elif isinstance(c, dict):
        if "messages" not in c:
            raise Owl3Error(
                f"conversation {i} has no 'messages'; a conversation is a dict with keys messages, images, "
                "videos, cut, extra (and media or sampling options)"
            )
        conv = Conversation(**{k: c[k] for k in CONVERSATION_FIELDS if k in c})
        loose = {k: v for k, v in c.items() if k not in CONVERSATION_FIELDS}
    else:
        raise Owl3Error(f"conversation {i} is a {type(c).__name__}; pass a Conversation or a dict")
    if not isinstance(conv.extra, dict):
        raise Owl3Error(f"conversation {i}: extra must be a dict of options, got {type(conv.extra).__name__}")
    options = {**conv.extra, **loose}
    unknown = sorted(k for k in options if k not in MEDIA_OPTIONS and k not in SAMPLING_OPTIONS)
    if unknown:
        raise Owl3Error(
            f"conversation {i} has unknown keys {', '.join(map(repr, unknown))}; a conversation takes "
            f"messages, images, videos, cut, extra, the media options {', '.join(MEDIA_OPTIONS)} and the "
            f"sampling options {', '.join(SAMPLING_OPTIONS)}"
        )
    media, own = split_options(options)
    return conv, media, own


def encode_ahead(fn: Any, items: Iterable[Any], depth: int) -> Iterator[Any]:
    """fn(i, item) for each item in order, computed in a thread up to `depth` items ahead of the reader
    (`depth` 0: in the reader's thread, as it reads)."""
    if depth == 0:
        yield from itertools.starmap(fn, enumerate(items))
        return
    source = enumerate(items)
    with ThreadPoolExecutor(1, thread_name_prefix="owl3-encode") as pool:
        pending = deque(pool.submit(fn, i, x) for i, x in itertools.islice(source, depth))
        try:
            while pending:
                done = pending.popleft()
                nxt = next(source, None)
                if nxt is not None:
                    pending.append(pool.submit(fn, *nxt))
                yield done.result()
        finally:
            for f in pending:
                f.cancel()
