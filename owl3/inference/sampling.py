"""Next-token selection: sampling parameters and pure functions from logits to token ids.

Everything here is a pure function of tensors (no model, no tokenizer, no cache), so the engine can call it
inside its decode loop and tests can check it on hand-made logits. Order of operations, per row:
repetition penalty -> greedy argmax, or temperature -> top-k -> top-p -> `torch.multinomial`.
This is deliberately not a logits-processor framework: one fixed pipeline, one `SamplingParams` per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from owl3.errors import Owl3Error


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token. `temperature == 0` means greedy decoding."""

    max_new_tokens: int = 1024
    temperature: float = 0.0  # 0 -> greedy
    top_p: float = 1.0  # 1 -> off
    top_k: int = 0  # 0 -> off
    repetition_penalty: float = 1.0  # HF/CTRL style; 1 -> off
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()  # extra stop ids; the engine adds the model's own

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> None:
        """Raise `Owl3Error` naming the first bad field and the allowed range."""
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise Owl3Error(f"max_new_tokens must be an integer, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 1:
            raise Owl3Error(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not _is_real(self.temperature) or not self.temperature >= 0.0 or math.isinf(self.temperature):
            raise Owl3Error(
                f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}"
            )
        if not _is_real(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise Owl3Error(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise Owl3Error(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if (
            not _is_real(self.repetition_penalty)
            or not self.repetition_penalty > 0.0
            or math.isinf(self.repetition_penalty)
        ):
            raise Owl3Error(
                f"repetition_penalty must be a finite number > 0 (1 = off), got {self.repetition_penalty!r}"
            )
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise Owl3Error(f"seed must be an integer or None, got {self.seed!r}")
        if not isinstance(self.stop_token_ids, tuple) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids
        ):
            raise Owl3Error(
                f"stop_token_ids must be a tuple of non-negative integers, got {self.stop_token_ids!r}"
            )


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL/HF repetition penalty: for ids already in context, logit > 0 -> logit / p, else logit * p.

    logits: (B, V) float; seen: (B, V) bool, True where the id occurs in prompt + generated ids.
    Returns a new tensor (B, V) of the same dtype; the input is not modified.
    """
    if logits.shape != seen.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and seen {tuple(seen.shape)} must have the same shape"
        )
    if penalty == 1.0:
        return logits.clone()
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen.to(torch.bool), penalized, logits)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A seeded `torch.Generator` on `device` (must match the logits' device), or None for global RNG."""
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def sample(
    logits: Tensor,
    params: SamplingParams,
    seen: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick the next token for each row. logits: (B, V) -> ids: (B,) int64.

    `seen` (B, V) bool is only needed when `params.repetition_penalty != 1`; the penalty is applied in
    greedy mode too (as HF does). Greedy is `torch.argmax` (first index among ties); top-k and top-p work
    on a stable descending sort, so top_k=1 or a tiny top_p pick exactly the greedy token.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, V), got shape {tuple(logits.shape)}")
    x = logits.float()  # (B, V); sampling math in float32 whatever the model dtype
    if params.repetition_penalty != 1.0 and seen is not None:
        x = apply_repetition_penalty(x, seen, params.repetition_penalty)

    if params.greedy:
        return torch.argmax(x, dim=-1)  # (B,)

    x = x / params.temperature
    vocab = x.shape[-1]
    top_k = params.top_k if 0 < params.top_k < vocab else 0
    if top_k == 0 and params.top_p >= 1.0:
        probs = torch.softmax(x, dim=-1)  # (B, V)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    # Work in sorted order: rank 0 is the greedy token (stable sort keeps the first of tied maxima first).
    sorted_logits, sorted_ids = torch.sort(x, dim=-1, descending=True, stable=True)  # (B, V) each
    if top_k > 0:
        sorted_logits = sorted_logits[:, :top_k]  # (B, k): everything past rank k is dropped
        sorted_ids = sorted_ids[:, :top_k]
    probs = torch.softmax(sorted_logits, dim=-1)  # (B, K)
    if params.top_p < 1.0:
        # Keep rank r iff the mass strictly before it is < top_p: the smallest prefix reaching top_p.
        mass_before = torch.cumsum(probs, dim=-1) - probs  # (B, K)
        keep = mass_before < params.top_p
        keep[:, 0] = True  # always keep the top token
        probs = probs.masked_fill(~keep, 0.0)
    rank = torch.multinomial(probs, 1, generator=generator)  # (B, 1); multinomial renormalizes
    return sorted_ids.gather(-1, rank).squeeze(-1)  # (B,)
