"""Next-token selection: sampling parameters and pure functions from logits to token ids.

Everything here is a pure function of tensors (no model, no tokenizer, no cache), so the engine can call it
inside its decode loop and tests can check it on hand-made logits. Order of operations, per row:
repetition penalty -> greedy argmax, or temperature -> top-k -> top-p -> a draw.

Every row has its own settings (`RowSampling`: one tensor per setting, so a batch of requests with
different temperatures is one batched operation) and its own random stream: the draw of a row's n-th token
is the Gumbel-max of its filtered logits plus noise that is a hash of (the row's seed, n, token id). A
request therefore draws the same tokens alone or in any batch, and nothing here touches a global or shared
generator. This is deliberately not a logits-processor framework: one fixed pipeline.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
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
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not -(2**63) <= self.seed < 2**63
        ):
            raise Owl3Error(f"seed must be a 64-bit integer or None, got {self.seed!r}")
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


def _u64(x: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN, _MIX1, _MIX2 = _u64(0x9E3779B97F4A7C15), _u64(0xBF58476D1CE4E5B9), _u64(0x94D049BB133111EB)


def _shr(x: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 bits (torch's >> on int64 is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _splitmix64(x: Tensor) -> Tensor:
    # int64 arithmetic wraps around, as the uint64 of the reference algorithm does
    z = x + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def uniform_noise(seeds: Tensor, steps: Tensor, vocab: int) -> Tensor:
    """(B, V) float64 in (0, 1): a hash of (seeds[b], steps[b], token id), the same whatever the batch."""
    row = _splitmix64(_splitmix64(seeds.long()) ^ steps.long())  # (B,)
    ids = torch.arange(vocab, dtype=torch.long, device=seeds.device)
    z = _splitmix64(row[:, None] + ids[None, :] * _GOLDEN)  # (B, V)
    return (_shr(z, 11).double() + 0.5) * 2.0**-53


@dataclass(frozen=True)
class RowSampling:
    """Per-row sampling settings, one (B,) tensor each on the logits' device, and what they imply."""

    temperature: Tensor  # float32; 0 = greedy
    top_k: Tensor  # int64; 0 = off
    top_p: Tensor  # float32; 1 = off
    repetition_penalty: Tensor  # float32; 1 = off
    seed: Tensor  # int64
    any_sampled: bool  # some row has temperature > 0
    any_filtered: bool  # some sampled row uses top-k or top-p
    any_penalty: bool

    @classmethod
    def of(
        cls, params: Sequence[SamplingParams], seeds: Sequence[int], device: torch.device | str = "cpu"
    ) -> RowSampling:
        sampled = [not p.greedy for p in params]
        filtered = [s and (p.top_k > 0 or p.top_p < 1.0) for s, p in zip(sampled, params, strict=True)]
        return cls(
            temperature=torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device),
            top_k=torch.tensor([p.top_k for p in params], dtype=torch.long, device=device),
            top_p=torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device),
            repetition_penalty=torch.tensor(
                [p.repetition_penalty for p in params], dtype=torch.float32, device=device
            ),
            seed=torch.tensor(list(seeds), dtype=torch.long, device=device),
            any_sampled=any(sampled),
            any_filtered=any(filtered),
            any_penalty=any(p.repetition_penalty != 1.0 for p in params),
        )

    @classmethod
    def same(cls, params: SamplingParams, n: int, device: torch.device | str = "cpu") -> RowSampling:
        """`n` rows of one setting; rows i = 0..n-1 get seeds seed + i (a random seed when None)."""
        base = request_seed(params)
        return cls.of([params] * n, [base + i for i in range(n)], device)


def request_seed(params: SamplingParams) -> int:
    """The seed of a request's random stream: its own, or a fresh random one."""
    return params.seed if params.seed is not None else random.SystemRandom().randrange(1 << 62)


def sample(
    logits: Tensor,
    rows: RowSampling | SamplingParams,
    seen: Tensor | None = None,
    steps: Tensor | int = 0,
) -> Tensor:
    """Pick the next token for each row. logits (B, V) -> ids (B,) int64.

    `rows`: per-row settings (one `SamplingParams` means it for every row, seeds seed, seed + 1, ...);
    `seen` (B, V) bool marks the ids in each row's context, needed for a repetition penalty (applied in
    greedy mode too, as HF does); `steps` (B,) or one int: which token of its request each row draws (its
    count of generated tokens), so that each draw has fresh noise. Greedy is `torch.argmax` (first index
    among ties); top-k and top-p work on a stable descending sort, so top_k=1 or a tiny top_p pick exactly
    the greedy token.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, V), got shape {tuple(logits.shape)}")
    b, vocab = logits.shape
    if isinstance(rows, SamplingParams):
        rows = RowSampling.same(rows, b, logits.device)
    x = logits.float()  # (B, V); sampling math in float32 whatever the model dtype
    if rows.any_penalty and seen is not None:
        p = rows.repetition_penalty[:, None]  # (B, 1); rows at 1 stay exactly as they were
        x = torch.where(seen.to(torch.bool), torch.where(x > 0, x / p, x * p), x)
    greedy = torch.argmax(x, dim=-1)  # (B,)
    if not rows.any_sampled:
        return greedy
    y = x / rows.temperature.clamp_min(1e-6)[:, None]
    if rows.any_filtered:
        y = _top_k_top_p(y, rows.top_k, rows.top_p)
    if isinstance(steps, int):
        steps = torch.full((b,), steps, dtype=torch.long, device=logits.device)
    gumbel = -torch.log(-torch.log(uniform_noise(rows.seed, steps, vocab)))  # (B, V) float64
    drawn = torch.argmax(y.double() + gumbel, dim=-1)  # Gumbel-max: a draw from softmax(y)
    return torch.where(rows.temperature > 0, drawn, greedy)


def _top_k_top_p(y: Tensor, top_k: Tensor, top_p: Tensor) -> Tensor:
    """y (B, V) with -inf outside each row's top-k, then outside the smallest prefix of the rest (as
    renormalized) whose mass reaches top-p; the top token always stays."""
    b, vocab = y.shape
    sorted_y, order = torch.sort(y, dim=-1, descending=True, stable=True)  # (B, V)
    rank = torch.arange(vocab, device=y.device)[None, :]
    k = torch.where(top_k > 0, top_k.clamp_max(vocab), vocab)[:, None]  # (B, 1)
    sorted_y = sorted_y.masked_fill(rank >= k, float("-inf"))
    probs = torch.softmax(sorted_y, dim=-1)  # over the top-k
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop = (mass_before >= top_p[:, None]) & (rank > 0)
    sorted_y = sorted_y.masked_fill(drop, float("-inf"))
    return torch.full_like(y, float("-inf")).scatter(1, order, sorted_y)
