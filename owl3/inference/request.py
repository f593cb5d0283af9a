"""A request's life inside the engine: its state (`Request`), what it may start from (`PromptMemory`),
the events it produces (`TokenEvent`), and how a step picks the pieces of prefill it runs (`take`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor

from owl3.inference.sampling import SamplingParams
from owl3.model import VisualContext
from owl3.processing import Encoding


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of a request; `finish_reason` ("stop", "length" or "abort") on its last event.
    An abort event carries token_id -1."""

    request_id: int
    token_id: int
    finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class PromptMemory(Protocol):
    """A prompt prefix already run through the model (owl3.inference.memory.VisualMemory)."""

    prefix_ids: Tensor  # (P,) the prefix's token ids

    @property
    def text_kv(self) -> list[tuple[Tensor, Tensor]]: ...  # per layer (1, kv, P, d) keys, values

    def visual_context(self) -> VisualContext: ...


@dataclass(eq=False)
class Request:
    """A request's state inside the engine."""

    id: int
    enc: Encoding
    params: SamplingParams
    seed: int
    stop: frozenset[int]
    memory: PromptMemory | None = None
    visual: VisualContext | None = None
    kv: dict[int, tuple[Tensor, Tensor]] | None = None  # visual K/V being written, view by view
    view_keys: list[bytes] | None = None  # the media cache's key of every view, once computed
    slot: int = -1  # its pool slot while it is prefilled
    views_done: int = 0
    prefilled: int = 0  # prompt tokens in the KV cache
    generated: list[int] = field(default_factory=list)

    @property
    def prompt_len(self) -> int:
        return int(self.enc.input_ids.shape[0])

    @property
    def n_views(self) -> int:
        return 0 if self.enc.pixel_values is None else int(self.enc.pixel_values.shape[0])


def take(pieces: list[tuple[Request, int]], budget: int) -> list[tuple[Request, int]]:
    """The first of `pieces` (request, size), in order, while they fit in `budget` together (the first
    always)."""
    out: list[tuple[Request, int]] = []
    for req, n in pieces:
        if out and n > budget:
            break
        out.append((req, n))
        budget -= n
    return out
