"""The Python API: `pipe = owl3.load(path)`, then `pipe.chat(...)`, `pipe.stream(...)`, `chat_batch(...)`.

A conversation is a string (one user turn) or a list of {"role", "content"} messages, whose content is a
string or a list of OpenAI-style parts (text, image_url, video_url, image, video). Images are PIL images,
paths, bytes of an image file, or arrays / tensors H×W×C; videos are paths or bytes of a video file
(sampled with PyAV), lists of frames, or arrays T×H×W×C (docs/inputs.md). If no message holds a
`<|image|>` / `<|video|>` placeholder, they are put at the start of the last user turn, the way the
official examples write them. For advanced use the pipeline exposes `model`, `processor`, `engine` and
`logits(...)`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from owl3.checkpoint import load_model
from owl3.conversation import (
    MEDIA_OPTIONS,
    SAMPLING_OPTIONS,
    Completion,
    Conversation,
    Messages,
    encode_ahead,
    parse_conversation,
    split_options,
)
from owl3.errors import Owl3Error
from owl3.inference.attribution import Share, attribution_measure, gradient_mass, group_shares, view_mass
from owl3.inference.detokenizer import StreamDetokenizer
from owl3.inference.engine import Engine
from owl3.inference.memory import VisualMemory, remember
from owl3.inference.sampling import SamplingParams
from owl3.model import Owl3Model, VisualContext
from owl3.processing import Encoding, Processor, load_image
from owl3.processing.chat import chat_segments, check_text, split_parts, with_placeholders
from owl3.processing.decode import DEFAULT_MAX_PIXELS
from owl3.processing.media import VideoInput, load_video, media_kind, media_list
from owl3.processing.pixels import presize
from owl3.processing.video import check_sampling

DEFAULT_MODEL = Path(__file__).parent / "assets" / "demo"  # the demo model trained by owl3 (docs/demo.md)
PRESIZE_MIN_VIEWS = 4  # from this many images/frames, resize them in parallel before the processor


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
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        what: str = "the video",
    ) -> list[Image.Image]:
        """A video's sampled frames (processing/media.py `load_video`), no more than fit the context."""
        return load_video(
            video, frames=frames, fps=fps, max_frames=max_frames, progress=progress, max_pixels=max_pixels,
            what=what, official=self.processor.official_pixels, max_count=self.engine.max_model_len,
        )  # fmt: skip

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
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> Encoding:
        """Messages + media -> model inputs. `cut=None` crops a lone image only (the paper's evaluation).
        `max_pixels` (None = no limit) refuses larger images and video frames before decoding them."""
        if cut is not None and not isinstance(cut, bool):
            raise Owl3Error(f"cut must be True, False or None (crop a lone image), got {cut!r}")
        if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int)
                                       or max_pixels < 1):
            raise Owl3Error(f"max_pixels must be a positive integer or None (no limit), got {max_pixels!r}")
        frames, fps, max_frames = check_sampling(frames, fps, max_frames)
        images, videos = media_list(images, "images"), media_list(videos, "videos")
        split, part_images, part_videos = split_parts(
            messages, self.processor.image_token, self.processor.video_token
        )
        if part_images or part_videos:
            if images or videos:
                raise Owl3Error(
                    "the messages hold image/video parts and images=/videos= were given too; pass the media "
                    "one way: as content parts, or as images=/videos= with placeholders"
                )
            messages, images, videos = split, part_images, part_videos
        elif not isinstance(messages, str):
            messages = split
        msgs = with_placeholders(
            messages, len(images), len(videos), self.processor.image_token, self.processor.video_token
        )
        if cut and videos:
            raise Owl3Error(
                "cut=True (--crop) crops images, but cropping is off in a conversation with a video (as in "
                "the official processor); drop it, or ask about the images without the video"
            )
        official = self.processor.official_pixels
        vids = [
            self.load_video(v, frames=frames, fps=fps, max_frames=max_frames, progress=progress,
                            max_pixels=max_pixels, what=f"videos[{j}]")
            for j, v in enumerate(videos)
        ]
        images = [
            load_image(x, max_pixels=max_pixels, official=official, what=f"images[{i}]")
            for i, x in enumerate(images)
        ]
        if cut is None:
            cut = len(images) == 1 and not vids
        size = self.processor.image_size
        if len(images) + sum(len(v) for v in vids) >= PRESIZE_MIN_VIEWS:
            # many views: resize them in parallel threads; the processor's own resize of an image already
            # S×S is a copy, so the pixels are unchanged
            if images and not (cut and not vids):
                images = presize(images, size)
            vids = [presize(v, size) for v in vids]
        return self.processor(msgs, images=images, videos=vids, cut=cut)

    def sampling(self, **kw: Any) -> SamplingParams:
        """SamplingParams from keyword arguments; `stop=[...]` adds stop strings that are one token each."""
        stop = kw.pop("stop", None) or ()
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, Sequence) or not all(isinstance(x, str) and x for x in stop):
            raise Owl3Error(f"stop must be a string or a list of non-empty strings, got {stop!r:.80}")
        for x in stop:
            check_text(x, "a stop string")
        ids = kw.pop("stop_token_ids", ())
        if isinstance(ids, int) or not isinstance(ids, Sequence):
            raise Owl3Error(f"stop_token_ids must be a list of token ids, got {ids!r:.80}")
        ids = list(ids)
        for s in stop:
            tid = self.tokenizer.token_to_id(s)
            if tid is None:
                enc = self.tokenizer.encode(s, add_special_tokens=False).ids
                if len(enc) != 1:
                    raise Owl3Error(f"stop string {s!r} is not a single token; give a single-token stop")
                tid = enc[0]
            ids.append(tid)
        media = [k for k in kw if k in MEDIA_OPTIONS]
        if media:  # e.g. frames= when asking a memory: its media are sampled and encoded already
            raise Owl3Error(
                f"{', '.join(media)} do(es) not apply here: the media are already encoded; pass "
                f"{'it' if len(media) == 1 else 'them'} when encoding them (watch / owl3 encode)"
            )
        unknown = [k for k in kw if k not in SAMPLING_OPTIONS]
        if unknown:
            raise Owl3Error(
                f"unknown generation option {', '.join(map(repr, unknown))}; the options are "
                f"{', '.join(SAMPLING_OPTIONS)} (and, with media, {', '.join(MEDIA_OPTIONS)})"
            )
        params = SamplingParams(stop_token_ids=tuple(ids), **kw)
        params.validate()
        return params

    # ------------------------------------------------------------------ generation
    # Every generation method takes the media options of `encode` (cut, frames, fps, max_frames, progress)
    # and the sampling options of `SamplingParams` (max_new_tokens, temperature, top_p, top_k,
    # repetition_penalty, seed, stop) as keyword arguments.
    def generate(
        self,
        messages: Messages,
        images: Sequence[Any] = (),
        videos: Sequence[VideoInput] = (),
        *,
        attribution: bool | str = False,
        kb: Any = None,
        top_k: int | None = None,
        **kw: Any,
    ) -> Completion:
        """The answer to a conversation, with its token ids and finish reason.

        `attribution=True` (or "attention") adds `shares`: each image's and video frame's part of the
        answer's hyper-attention; `attribution="gradient"` the part of the answer that depends on each
        (gradient x input on the hyper layers' visual K/V). owl3/inference/attribution.py: one extra
        forward (and backward), only when asked.
        `kb=` a knowledge base (`owl3.kb.open_kb(path)` or its folder) answers with retrieved evidence:
        `top_k` items (default 4) go into the prompt before the question and come back as `citations`,
        each with its retrieval score and attention share (docs/rag.md). Without `kb`, `top_k` is the
        sampling option of that name."""
        measure = attribution_measure(attribution) if attribution else None  # refused before the answer
        if kb is not None:
            from owl3.kb.answer import answer_with_kb

            return answer_with_kb(
                self, kb, messages, images, videos, top_k=top_k, attribution=attribution, **kw
            )
        if top_k is not None:
            kw["top_k"] = top_k
        media, sampling = split_options(kw)
        enc = self.encode(messages, images, videos, **media)
        out = self._complete([enc], self.sampling(**sampling))[0]
        if measure:
            out.shares = self.attention_shares(enc, out.token_ids, measure=measure)
        return out

    def chat(
        self, messages: Messages, images: Sequence[Any] = (), videos: Sequence[VideoInput] = (), **kw: Any
    ) -> str | Completion:
        """The answer to a conversation, as text; with `attribution=True` or `kb=...`, the whole
        `Completion` (its `str()` is the text) with its `shares` or `citations`."""
        out = self.generate(messages, images, videos, **kw)
        return out if kw.get("attribution") or kw.get("kb") is not None else out.text

    def attention_shares(
        self, enc: Encoding, token_ids: Sequence[int], use_engine: bool = True, measure: str = "attention"
    ) -> list[Share]:
        """Each image's and video frame's share of the hyper-attention of an answer `token_ids` to `enc`
        (`measure="gradient"`: of what the answer depends on; a trailing stop token is left out). Empty
        for a prompt without media. `use_engine=False` leaves
        the engine alone (its media cache is not thread-safe; the server's engine runs in its own thread)
        and runs the vision tower again."""
        if enc.pixel_values is None:
            return []
        ids = list(token_ids)
        stops = set(self.engine.stop_token_ids)
        while ids and ids[-1] in stops:
            ids.pop()
        with torch.inference_mode():
            if use_engine:
                ctx = self.engine.encode_visual([enc])  # through the media cache: no tower for seen views
            else:
                kv = self.model.encode_visual_kv(enc.pixel_values, enc.media_starts)
                ctx = VisualContext.from_kv(kv, enc.media_starts, self.model.cfg.vision.n_tokens)
        mass = gradient_mass if attribution_measure(measure) == "gradient" else view_mass
        return group_shares(enc, mass(self.model, ctx, enc, ids))

    def stream(
        self, messages: Messages, images: Sequence[Any] = (), videos: Sequence[VideoInput] = (), **kw: Any
    ) -> Iterator[str]:
        """The answer as text pieces, as they are generated; never splits a UTF-8 character."""
        media, sampling = split_options(kw)
        enc = self.encode(messages, images, videos, **media)
        return self._stream(enc, self.sampling(**sampling))

    def chat_batch(
        self, conversations: Sequence[Conversation | dict[str, Any]], **sampling: Any
    ) -> list[str]:
        """Answer several conversations in one batch; each answer equals the one it gets alone (greedy).

        A conversation (a `Conversation` or a dict of its fields) may carry its own media options (cut,
        frames, fps, max_frames, max_pixels) and sampling options (max_new_tokens, temperature, seed, stop,
        ...), at the top level of the dict or in `extra`; they override the batch's keyword arguments."""
        if isinstance(conversations, (str, dict, Conversation)) or not isinstance(conversations, Sequence):
            raise Owl3Error("conversations must be a list of Conversation objects or dicts")
        encs, params = [], []
        for i, c in enumerate(conversations):
            conv, media, own = parse_conversation(i, c)
            encs.append(self.encode(conv.messages, conv.images, conv.videos, cut=conv.cut, **media))
            params.append(self.sampling(**{**sampling, **own}))
        return [c.text for c in self._complete(encs, params)]

    def chat_many(
        self, conversations: Iterable[Conversation | dict[str, Any]], *, in_flight: int | None = None,
        **sampling: Any,
    ) -> Iterator[tuple[int, Completion]]:  # fmt: skip
        """Answer a stream of conversations as one continuous batch: yields (index, Completion) as each
        answer finishes, so not in order. Finished answers' slots take the next conversations once half
        of them are free (`Engine.generate_each`), and at most `in_flight` (default: the engine's slots)
        are answered at a time. A thread reads and encodes the next conversations' media while the model
        runs, when a core is free for it (the model on an accelerator, or torch on fewer threads than the
        CPU has). Each answer equals the one it gets alone (greedy). A conversation takes the options of
        `chat_batch`'s. A conversation that cannot be encoded raises `Owl3Error` (naming its index) and
        the ones in flight are aborted."""
        prompt_tokens: dict[int, int] = {}

        def encode(i: int, c: Any) -> tuple[Encoding, SamplingParams]:
            conv, media, own = parse_conversation(i, c)
            try:
                enc = self.encode(conv.messages, conv.images, conv.videos, cut=conv.cut, **media)
                params = self.sampling(**{**sampling, **own})
            except Owl3Error as e:
                raise Owl3Error(f"conversation {i}: {e}") from None
            prompt_tokens[i] = int(enc.input_ids.shape[0])
            return enc, params

        ids: dict[int, list[int]] = {}
        spare_core = self.model.device.type != "cpu" or torch.get_num_threads() < (os.cpu_count() or 1)
        pairs = encode_ahead(encode, conversations, depth=2 if spare_core else 0)
        for ev in self.engine.generate_each(pairs, in_flight=in_flight):
            ids.setdefault(ev.request_id, []).append(ev.token_id)
            if ev.finished:
                t = [x for x in ids.pop(ev.request_id) if x >= 0]
                text = self.tokenizer.decode(t, skip_special_tokens=True)
                reason = ev.finish_reason or "length"
                yield ev.request_id, Completion(text, t, reason, prompt_tokens.pop(ev.request_id))

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
        self,
        encs: list[Encoding],
        params: SamplingParams | Sequence[SamplingParams],
        memory: VisualMemory | None = None,
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
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> VisualMemory:
        """Encode media once into a `VisualMemory` (save it with `.save(path)`); ask it with `ask`.

        The media are laid out as `generate(question, images, videos)` lays them out without placeholders
        (images, then videos, at the start of the user turn); cropping as there (`cut=None` crops a lone
        image)."""
        images, videos = media_list(images, "images"), media_list(videos, "videos")
        if not images and not videos:
            raise Owl3Error("nothing to encode: give at least one image or video")
        proc = self.processor
        # the same processing as generate(question, images, videos): placeholders first, then the question
        placeholders = proc.image_token * len(images) + proc.video_token * len(videos)
        msgs = [{"role": "system", "content": system}] if system else []
        msgs.append({"role": "user", "content": placeholders + "\n"})
        enc = self.encode(
            msgs, images, videos, cut=cut, frames=frames, fps=fps, max_frames=max_frames, progress=progress,
            max_pixels=max_pixels,
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
        check_text(question, "the question")
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
    official_pixels: bool = False,
) -> Owl3Pipeline:
    """Load a checkpoint folder (official layout); with no path, owl3's built-in default model.

    `official_pixels=True` turns images into RGB as the official code does (a plain convert("RGB"): no
    EXIF orientation or video rotation, 16-bit and float images clipped, transparency dropped), for
    parity checks; by default images look as a viewer shows them (docs/faithfulness.md)."""
    folder = Path(path) if path is not None else DEFAULT_MODEL
    model = load_model(folder, dtype=dtype, device=device)
    variant = model.cfg.variant
    processor = Processor.from_dir(folder, model.cfg.image_size, variant, official_pixels=official_pixels)
    return Owl3Pipeline(model, processor, folder)


__all__ = [
    "Completion", "Conversation", "Owl3Pipeline", "Share", "VisualMemory", "load", "media_kind",
    "DEFAULT_MODEL",
]  # fmt: skip
