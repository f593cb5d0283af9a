"""The Python API: `pipe = owl3.load(path)`, then `pipe.chat(...)`, `pipe.stream(...)`, `chat_batch(...)`.

A conversation is a string (one user turn) or a list of {"role", "content"} messages. Images are PIL
images or paths; videos are paths (sampled with PyAV) or lists of PIL frames. If no message holds a
`<|image|>` / `<|video|>` placeholder, they are put at the start of the last user turn, the way the
official examples write them. For advanced use the pipeline exposes `model`, `processor`, `engine` and
`logits(...)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from owl3.checkpoint import load_model
from owl3.errors import Owl3Error
from owl3.inference.detokenizer import StreamDetokenizer
from owl3.inference.engine import Engine
from owl3.inference.memory import VisualMemory, remember
from owl3.inference.sampling import SamplingParams
from owl3.model import Owl3Model
from owl3.processing import Encoding, Processor, load_image
from owl3.processing.chat import chat_segments
from owl3.processing.pixels import presize
from owl3.processing.video import read_video

DEFAULT_MODEL = Path(__file__).parent / "assets" / "demo"  # the demo model trained by owl3 (docs/demo.md)
PRESIZE_MIN_VIEWS = 4  # from this many images/frames, resize them in parallel before the processor

Messages = str | Sequence[dict[str, str]]
VideoInput = str | Path | Sequence[Image.Image]


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int


@dataclass
class Conversation:
    """One request of a batch."""

    messages: Messages
    images: Sequence[Any] = ()
    videos: Sequence[VideoInput] = ()
    cut: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _normalize(
    messages: Messages, n_images: int, n_videos: int, image_token: str, video_token: str
) -> list[dict[str, str]]:
    """Copy the messages (never mutate the caller's) and add placeholders if there are none."""
    if isinstance(messages, str):
        msgs = [{"role": "user", "content": messages}]
    else:
        try:
            msgs = [dict(m) for m in messages]
        except (TypeError, ValueError) as e:
            raise Owl3Error(
                "messages must be a string or a list of {'role': ..., 'content': ...} dicts"
            ) from e
    if not msgs:
        raise Owl3Error("messages is empty; give at least one user message")
    text = "".join(str(m.get("content", "")) for m in msgs)
    if (n_images or n_videos) and image_token not in text and video_token not in text:
        users = [i for i, m in enumerate(msgs) if m.get("role") == "user"]
        if not users:
            raise Owl3Error("images or videos were given, but there is no user message to attach them to")
        last = users[-1]
        msgs[last]["content"] = image_token * n_images + video_token * n_videos + "\n" + msgs[last]["content"]
    return msgs


MEDIA_OPTIONS = ("cut", "frames", "fps", "max_frames", "progress")


def _split_options(kw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword arguments -> (media options for `encode`, sampling options)."""
    media = {k: kw[k] for k in MEDIA_OPTIONS if k in kw}
    return media, {k: v for k, v in kw.items() if k not in MEDIA_OPTIONS}


class Owl3Pipeline:
    """A loaded model with its processor and generation engine."""

    def __init__(self, model: Owl3Model, processor: Processor, path: Path | None = None) -> None:
        self.model = model
        self.processor = processor
        self.path = path
        self.engine = Engine(model, processor.stop_token_ids, processor.pad_token_id)

    @property
    def config(self):
        return self.model.cfg

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    # ------------------------------------------------------------------ inputs
    def load_video(
        self,
        video: VideoInput,
        *,
        frames: int | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        progress: bool = False,
    ) -> list[Image.Image]:
        if isinstance(video, (str, Path)):
            return read_video(video, frames=frames, fps=fps, max_frames=max_frames, progress=progress)
        if isinstance(video, Image.Image):
            raise Owl3Error("a video given as frames must be a list of images: pass videos=[frames]")
        frames_list = list(video)
        if not frames_list:
            raise Owl3Error("a video given as frames has no frames")
        return frames_list

    def encode(
        self,
        messages: Messages,
        images: Sequence[Any] = (),
        videos: Sequence[VideoInput] = (),
        *,
        cut: bool | None = None,
        frames: int | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        progress: bool = False,
    ) -> Encoding:
        """Messages + media -> model inputs. `cut=None` crops a lone image only (the paper's evaluation)."""
        if images is None or isinstance(images, (str, Path, Image.Image)):
            images = [] if images is None else [images]
        if videos is None or isinstance(videos, (str, Path)):
            videos = [] if videos is None else [videos]
        images, videos = list(images), list(videos)
        msgs = _normalize(
            messages, len(images), len(videos), self.processor.image_token, self.processor.video_token
        )
        vids = [
            self.load_video(v, frames=frames, fps=fps, max_frames=max_frames, progress=progress)
            for v in videos
        ]
        if cut is None:
            cut = len(images) == 1 and not vids
        size = self.processor.image_size
        if len(images) + sum(len(v) for v in vids) >= PRESIZE_MIN_VIEWS:
            # many views: decode and resize them in parallel threads; the processor's own resize of an
            # image already S×S is a copy, so the pixels are unchanged
            if images and not (cut and not vids):
                images = presize([load_image(i) for i in images], size)
            vids = [presize(v, size) for v in vids]
        return self.processor(msgs, images=images, videos=vids, cut=cut)

    def sampling(self, **kw: Any) -> SamplingParams:
        """SamplingParams from keyword arguments; `stop=[...]` adds stop strings that are one token each."""
        stop = kw.pop("stop", None) or ()
        if isinstance(stop, str):
            stop = [stop]
        ids = list(kw.pop("stop_token_ids", ()))
        for s in stop:
            tid = self.tokenizer.token_to_id(s)
            if tid is None:
                enc = self.tokenizer.encode(s, add_special_tokens=False).ids
                if len(enc) != 1:
                    raise Owl3Error(f"stop string {s!r} is not a single token; give a single-token stop")
                tid = enc[0]
            ids.append(tid)
        try:
            params = SamplingParams(stop_token_ids=tuple(ids), **kw)
        except TypeError as e:
            raise Owl3Error(f"unknown generation option: {e}") from None
        params.validate()
        return params

    # ------------------------------------------------------------------ generation
    # Every generation method takes the media options of `encode` (cut, frames, fps, max_frames, progress)
    # and the sampling options of `SamplingParams` (max_new_tokens, temperature, top_p, top_k,
    # repetition_penalty, seed, stop) as keyword arguments.
    def generate(
        self, messages: Messages, images: Sequence[Any] = (), videos: Sequence[VideoInput] = (), **kw: Any
    ) -> Completion:
        """The answer to a conversation, with its token ids and finish reason."""
        media, sampling = _split_options(kw)
        enc = self.encode(messages, images, videos, **media)
        return self._complete([enc], self.sampling(**sampling))[0]

    def chat(
        self, messages: Messages, images: Sequence[Any] = (), videos: Sequence[VideoInput] = (), **kw: Any
    ) -> str:
        """The answer to a conversation, as text."""
        return self.generate(messages, images, videos, **kw).text

    def stream(
        self, messages: Messages, images: Sequence[Any] = (), videos: Sequence[VideoInput] = (), **kw: Any
    ) -> Iterator[str]:
        """The answer as text pieces, as they are generated; never splits a UTF-8 character."""
        media, sampling = _split_options(kw)
        enc = self.encode(messages, images, videos, **media)
        return self._stream(enc, self.sampling(**sampling))

    def chat_batch(
        self, conversations: Sequence[Conversation | dict[str, Any]], **sampling: Any
    ) -> list[str]:
        """Answer several conversations in one batch; each answer equals the one it gets alone (greedy)."""
        encs = []
        for i, c in enumerate(conversations):
            try:
                conv = c if isinstance(c, Conversation) else Conversation(**c)
            except TypeError:
                raise Owl3Error(
                    f"conversation {i} must be a dict with keys messages, images, videos, cut, extra"
                ) from None
            encs.append(self.encode(conv.messages, conv.images, conv.videos, cut=conv.cut, **conv.extra))
        return [c.text for c in self._complete(encs, self.sampling(**sampling))]

    def _stream(
        self, enc: Encoding, params: SamplingParams, memory: VisualMemory | None = None
    ) -> Iterator[str]:
        detok = StreamDetokenizer(self.tokenizer)
        for ev in self.engine.generate([enc], params, memory=memory):
            piece = detok.push(ev.token_id)
            if piece:
                yield piece
        tail = detok.flush()
        if tail:
            yield tail

    def _complete(
        self, encs: list[Encoding], params: SamplingParams, memory: VisualMemory | None = None
    ) -> list[Completion]:
        ids: list[list[int]] = [[] for _ in encs]
        reasons = ["length"] * len(encs)
        for ev in self.engine.generate(encs, params, memory=memory):
            ids[ev.request_id].append(ev.token_id)
            if ev.finish_reason:
                reasons[ev.request_id] = ev.finish_reason
        return [
            Completion(self.tokenizer.decode(t, skip_special_tokens=True), t, r, int(e.input_ids.shape[0]))
            for t, r, e in zip(ids, reasons, encs, strict=True)
        ]

    # ------------------------------------------------------------------ watch once, ask many
    def watch(
        self,
        images: Sequence[Any] = (),
        videos: Sequence[VideoInput] = (),
        *,
        system: str | None = None,
        cut: bool | None = None,
        frames: int | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        progress: bool = False,
    ) -> VisualMemory:
        """Encode media once into a `VisualMemory` (save it with `.save(path)`); ask it with `ask`.

        The media are laid out as `generate(question, images, videos)` lays them out without placeholders
        (images, then videos, at the start of the user turn); cropping as there (`cut=None` crops a lone
        image)."""
        if isinstance(images, (str, Path)) or hasattr(images, "size"):
            images = [images]
        if isinstance(videos, (str, Path)):
            videos = [videos]
        images, videos = list(images), list(videos)
        if not images and not videos:
            raise Owl3Error("nothing to encode: give at least one image or video")
        proc = self.processor
        # the same processing as generate(question, images, videos): placeholders first, then the question
        placeholders = proc.image_token * len(images) + proc.video_token * len(videos)
        msgs = [{"role": "system", "content": system}] if system else []
        msgs.append({"role": "user", "content": placeholders + "\n"})
        enc = self.encode(
            msgs, images, videos, cut=cut, frames=frames, fps=fps, max_frames=max_frames, progress=progress
        )
        sources = [str(x) for x in [*images, *videos] if isinstance(x, (str, Path))]
        return remember(self.engine, enc, system=system, sources=sources)

    def load_memory(self, path: str | Path) -> VisualMemory:
        """Read a memory file made by `watch(...).save(path)` or `owl3 encode`, for this model only."""
        return VisualMemory.load(path, self.model)

    def ask_encoding(self, memory: VisualMemory, question: str) -> Encoding:
        """The full prompt of `question` asked of `memory` (token ids only: the media are in the memory)."""
        if not isinstance(question, str) or not question.strip():
            raise Owl3Error("the question is empty; ask something")
        tok = self.processor
        if tok.image_token in question or tok.video_token in question:
            raise Owl3Error("a question to a memory cannot add media placeholders; encode the media instead")
        ids, starts = tok._tokenize(chat_segments(memory.messages(question)))
        if starts != memory.media_starts:
            raise Owl3Error("this memory was made with another tokenizer; encode the media again")
        return Encoding(ids, None, starts, "")

    def ask_stream(self, memory: VisualMemory | str | Path, question: str, **sampling: Any) -> Iterator[str]:
        """Answer a question from a memory (or a memory file), streaming text pieces."""
        mem = memory if isinstance(memory, VisualMemory) else self.load_memory(memory)
        return self._stream(self.ask_encoding(mem, question), self.sampling(**sampling), mem)

    def ask(self, memory: VisualMemory | str | Path, question: str, **sampling: Any) -> Completion:
        """Answer a question from a memory: no media decoding, no vision tower, no media prefill."""
        mem = memory if isinstance(memory, VisualMemory) else self.load_memory(memory)
        return self._complete([self.ask_encoding(mem, question)], self.sampling(**sampling), mem)[0]

    @torch.inference_mode()
    def logits(
        self,
        messages: Messages,
        images: Sequence[Any] = (),
        videos: Sequence[VideoInput] = (),
        *,
        cut: bool | None = None,
        **kw: Any,
    ) -> torch.Tensor:
        """Full-prefill logits (L, V) of the prompt, for scoring and research."""
        enc = self.encode(messages, images, videos, cut=cut, **kw)
        self.engine.check_length(int(enc.input_ids.shape[0]), reserve=0)
        visual = self.engine.encode_visual([enc])
        return self.model(enc.input_ids[None].to(self.model.device), visual=visual)[0]


def load(
    path: str | Path | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = "cpu",
) -> Owl3Pipeline:
    """Load a checkpoint folder (official layout); with no path, owl3's built-in default model."""
    folder = Path(path) if path is not None else DEFAULT_MODEL
    model = load_model(folder, dtype=dtype, device=device)
    processor = Processor.from_dir(folder, model.cfg.image_size, model.cfg.variant)
    return Owl3Pipeline(model, processor, folder)


__all__ = ["Completion", "Conversation", "Owl3Pipeline", "VisualMemory", "load", "DEFAULT_MODEL"]
