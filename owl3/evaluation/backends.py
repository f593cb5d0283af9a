"""Who answers the prompts: a local pipeline (batched) or any OpenAI-compatible server (concurrent requests).

Both take items and yield `(item, prediction)` as answers arrive, greedy, so the runner never waits on one
prompt at a time:
- `LocalBackend` answers them as one continuous batch (`Owl3Pipeline.chat_many`: `batch_size` in flight,
  a thread reading the next items' media meanwhile);
- `ServerBackend` keeps `concurrency` requests in flight with the official `openai` client. Each
  `<|image|>` becomes an `image_url` part (PNG data: URL) where it stands in the prompt, each `<|video|>`
  a vLLM `video_url` part: the frames the task sampled, encoded as one small video of exactly those frames,
  sent with `media_io_kwargs.video.num_frames` = that count, so the server keeps every one of them.
  Servers join a message's parts with newlines (vLLM does; so does `owl3 serve`), so the text the model
  reads differs from the local prompt by those newlines.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from owl3.errors import Owl3Error
from owl3.evaluation.task import Item

_PLACEHOLDER = re.compile(r"(<\|image\|>|<\|video\|>)")


class LocalBackend:
    def __init__(self, pipe: Any, *, batch_size: int = 8, max_new_tokens: int = 64) -> None:
        if batch_size < 1:
            raise Owl3Error(f"--batch-size must be at least 1, got {batch_size}")
        self.pipe, self.batch_size, self.max_new_tokens = pipe, batch_size, max_new_tokens
        self.name = str(getattr(pipe, "path", "model"))

    def _conversation(self, item: Item) -> Any:
        from owl3.api import Conversation

        images, videos = item.media()
        return Conversation(item.prompt, images=images, videos=videos, cut=item.cut)

    def answer(self, items: list[Item]) -> Iterator[tuple[Item, str]]:
        convs = (self._conversation(item) for item in items)
        answers = self.pipe.chat_many(
            convs, in_flight=self.batch_size, max_new_tokens=self.max_new_tokens, temperature=0.0
        )
        for i, completion in answers:
            yield items[i], completion.text


def _png_url(img: Any) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


VIDEO_MAX_SIDE = 768  # frames sent to a server are scaled down to this longer side (models read 384-ish)


def frames_to_video(frames: list[Any], fps: int = 4, max_side: int = VIDEO_MAX_SIDE) -> bytes:
    """The frames as one near-lossless video (H.264 4:4:4 at CRF 4; MPEG-4 at its best quality where x264
    is missing), their longer side at most `max_side`: a server that samples len(frames) frames from it
    gets these back (128 full-HD frames sent losslessly would be hundreds of MB)."""
    import av
    import numpy as np
    from PIL import Image

    w, h = frames[0].size
    scale = min(1.0, max_side / max(w, h))
    w, h = max(2, round(w * scale)), max(2, round(h * scale))
    w, h = w - w % 2, h - h % 2
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        try:
            stream = out.add_stream("libx264", rate=fps, options={"crf": "4", "preset": "fast"})
            stream.pix_fmt = "yuv444p"
        except Exception:  # an FFmpeg build without x264
            stream = out.add_stream("mpeg4", rate=fps, options={"qscale": "1"})
            stream.pix_fmt = "yuv420p"
        stream.width, stream.height = w, h
        for img in frames:
            rgb = img.convert("RGB")
            arr = np.asarray(rgb if rgb.size == (w, h) else rgb.resize((w, h), Image.Resampling.BICUBIC))
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def content_parts(item: Item) -> tuple[list[dict[str, Any]], int | None]:
    """The item's prompt as OpenAI content parts (media where their placeholders stand), and the frames
    per video (None without video)."""
    images, videos = item.media()
    images, videos = list(images), list(videos)
    parts: list[dict[str, Any]] = []
    frames = None
    for piece in _PLACEHOLDER.split(item.prompt):
        if piece == "<|image|>":
            if not images:
                raise Owl3Error(f"{item.id}: more <|image|> placeholders than images")
            parts.append({"type": "image_url", "image_url": {"url": _png_url(images.pop(0))}})
        elif piece == "<|video|>":
            if not videos:
                raise Owl3Error(f"{item.id}: more <|video|> placeholders than videos")
            clip = videos.pop(0)
            frames = len(clip)
            url = "data:video/mp4;base64," + base64.b64encode(frames_to_video(clip)).decode()
            parts.append({"type": "video_url", "video_url": {"url": url}})
        elif piece.strip():
            parts.append({"type": "text", "text": piece.strip()})
    return parts, frames


class ServerBackend:
    """Any OpenAI-compatible chat-completions server: `base_url` as the openai client takes it
    (`http://host:8000/v1`)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        concurrency: int = 8,
        max_new_tokens: int = 64,
        timeout: float = 600.0,
    ) -> None:
        if concurrency < 1:
            raise Owl3Error(f"--concurrency must be at least 1, got {concurrency}")
        try:
            import openai
        except ImportError:
            raise Owl3Error("--server needs the openai package: pip install 'owl3[eval]'") from None
        self.openai = openai
        self.client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=2
        )
        self.base_url, self.concurrency, self.max_new_tokens = base_url, concurrency, max_new_tokens
        self.model = model or self._first_model()
        self.name = f"{self.model} @ {base_url}"

    def _call(self, fn, *args: Any, **kw: Any) -> Any:
        o = self.openai
        try:
            return fn(*args, **kw)
        except o.AuthenticationError:
            raise Owl3Error(
                f"{self.base_url} refused the API key; pass the right one with --api-key"
            ) from None
        except o.APIConnectionError:
            raise Owl3Error(
                f"cannot reach {self.base_url}; is the server running (base URL like http://host:8000/v1)?"
            ) from None
        except o.APIStatusError as e:
            raise Owl3Error(f"{self.base_url} answered {e.status_code}: {_message(e)}") from None

    def _first_model(self) -> str:
        models = self._call(self.client.models.list)
        ids = [m.id for m in models.data]
        if not ids:
            raise Owl3Error(f"{self.base_url}/models lists no model; name one with --served-model")
        return ids[0]

    def complete(self, item: Item) -> str:
        parts, frames = content_parts(item)
        extra = {"media_io_kwargs": {"video": {"num_frames": frames}}} if frames else None
        resp = self._call(
            self.client.chat.completions.create,
            model=self.model,
            messages=[{"role": "user", "content": parts}],
            temperature=0.0,
            max_tokens=self.max_new_tokens,
            extra_body=extra,
        )
        return resp.choices[0].message.content or ""

    def answer(self, items: list[Item]) -> Iterator[tuple[Item, str]]:
        """Answers in the order they arrive, with `concurrency` requests in flight."""
        pending = iter(items)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="owl3-eval-client") as pool:
            running: dict[Future, Item] = {}
            try:
                while True:
                    while len(running) < self.concurrency:
                        item = next(pending, None)
                        if item is None:
                            break
                        running[pool.submit(self.complete, item)] = item
                    if not running:
                        return
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in done:
                        item = running.pop(fut)
                        yield item, fut.result()
            finally:
                for fut in running:
                    fut.cancel()


def _message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(getattr(e, "message", e))
