"""Tests for owl3.inference.sampling: greedy, top-k/top-p, seeding, distribution, repetition penalty."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from owl3.errors import Owl3Error
from owl3.inference.sampling import (
    RowSampling,
    SamplingParams,
    apply_repetition_penalty,
    sample,
    uniform_noise,
)


def _logits(b: int = 4, v: int = 50, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, v, generator=g) * 3  # (B, V)


def _tied_logits() -> torch.Tensor:
    x = _logits(3, 20, seed=1)
    x[0, 4] = x[0, 11] = 50.0  # row 0: tie between 4 and 11 -> first one (4)
    x[1, :] = 0.0  # row 1: all equal -> 0
    return x


def test_greedy_equals_argmax() -> None:
    for x in (_logits(), _tied_logits(), _logits().to(torch.bfloat16)):
        ids = sample(x, SamplingParams())
        assert ids.dtype == torch.int64 and ids.shape == (x.shape[0],)
        assert torch.equal(ids, torch.argmax(x.float(), dim=-1))
    assert sample(_tied_logits(), SamplingParams())[:2].tolist() == [4, 0]


@pytest.mark.parametrize("temperature", [0.05, 0.7, 1.0, 5.0, 100.0])
def test_top_k_1_is_greedy(temperature: float) -> None:
    for x in (_logits(), _tied_logits()):
        params = SamplingParams(temperature=temperature, top_k=1)
        for seed in range(5):
            ids = sample(x, replace(params, seed=seed))
            assert torch.equal(ids, torch.argmax(x, dim=-1))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 10.0])
def test_tiny_top_p_is_greedy(temperature: float) -> None:
    for x in (_logits(), _tied_logits()):
        params = SamplingParams(temperature=temperature, top_p=1e-6)
        for seed in range(5):
            ids = sample(x, replace(params, seed=seed))
            assert torch.equal(ids, torch.argmax(x, dim=-1))


@pytest.mark.parametrize("extra", [{}, {"top_k": 10}, {"top_p": 0.9}, {"top_k": 10, "top_p": 0.9}])
def test_seeded_runs_reproducible_and_seeds_differ(extra: dict) -> None:
    x = torch.randn(4, 50)
    params = SamplingParams(temperature=1.0, **extra)

    def run(seed: int) -> torch.Tensor:
        rows = RowSampling.same(replace(params, seed=seed), 4)
        return torch.stack([sample(x, rows, steps=n) for n in range(50)])  # (50, B): 50 tokens a row

    a, b, c = run(123), run(123), run(456)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (a != c).float().mean() > 0.2  # not just one stray draw


def test_a_rows_draw_depends_on_its_seed_and_step_only() -> None:
    # the continuous-batching guarantee: a request draws the same tokens alone or in any batch
    x = torch.randn(5, 40)
    settings = [SamplingParams(temperature=t, top_p=p, top_k=k) for t, p, k in
                [(1.0, 1.0, 0), (0.7, 0.9, 0), (1.3, 1.0, 5), (0.0, 1.0, 0), (1.0, 0.5, 8)]]  # fmt: skip
    seeds, steps = [11, 22, 33, 44, 55], torch.tensor([0, 3, 9, 1, 4])
    together = sample(x, RowSampling.of(settings, seeds), steps=steps)
    for i in range(5):
        alone = sample(x[i : i + 1], RowSampling.of([settings[i]], [seeds[i]]), steps=steps[i : i + 1])
        assert alone.item() == together[i].item()
    assert together[3].item() == x[3].argmax().item()  # the greedy row
    noise = uniform_noise(torch.tensor([1, 1, 2]), torch.tensor([0, 1, 0]), 1000)
    assert 0 < noise.min() and noise.max() < 1 and abs(noise.mean().item() - 0.5) < 0.02
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], noise[2])


def _frequencies(logits_row: torch.Tensor, params: SamplingParams, n: int = 200_000) -> torch.Tensor:
    x = logits_row.expand(n, -1)  # (N, V): N rows with seeds 2024, 2025, ... = N independent draws
    ids = sample(x, replace(params, seed=2024))
    return torch.bincount(ids, minlength=logits_row.numel()).double() / n  # (V,)


def test_frequencies_match_softmax() -> None:
    logits = torch.tensor([1.0, 0.0, -0.5, 2.0, 0.3])
    for temperature in (0.5, 1.0, 2.0):
        freq = _frequencies(logits, SamplingParams(temperature=temperature))
        expected = torch.softmax(logits.double() / temperature, dim=-1)
        assert torch.allclose(freq, expected, atol=0.01), (temperature, freq, expected)


def test_frequencies_top_k() -> None:
    logits = torch.tensor([1.0, 0.0, -0.5, 2.0, 0.3])
    freq = _frequencies(logits, SamplingParams(temperature=1.0, top_k=3))
    keep = torch.tensor([True, False, False, True, True])
    expected = torch.softmax(logits.double().masked_fill(~keep, -math.inf), dim=-1)
    assert torch.allclose(freq, expected, atol=0.01)
    assert freq[~keep].sum() == 0


def test_frequencies_top_p() -> None:
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log()
    # Sorted: 0.5, 0.3, 0.15, 0.05. top_p=0.7 -> {0.5, 0.3} (0.5 < 0.7, 0.8 >= 0.7).
    freq = _frequencies(logits, SamplingParams(temperature=1.0, top_p=0.7))
    assert torch.allclose(freq, torch.tensor([0.0, 0.625, 0.0, 0.375], dtype=torch.double), atol=0.01)
    assert freq[0] == 0 and freq[2] == 0
    # top_p=0.85 -> {0.5, 0.3, 0.15}.
    freq = _frequencies(logits, SamplingParams(temperature=1.0, top_p=0.85))
    expected = torch.tensor([0.0, 0.5, 0.15, 0.3], dtype=torch.double) / 0.95
    assert torch.allclose(freq, expected, atol=0.01)
    assert freq[0] == 0


def test_rows_are_independent() -> None:
    x = torch.tensor([[0.0, 5.0, 1.0], [9.0, 0.0, 1.0]])
    params = SamplingParams(temperature=1.0, top_k=1)
    assert sample(x, params).tolist() == [1, 0]


def test_repetition_penalty_formula() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, 0.0], [2.0, -1.0, 0.5, 3.0, 0.0]])
    seen = torch.tensor([[True, True, False, False, True], [False, False, True, True, False]])
    before = logits.clone()
    out = apply_repetition_penalty(logits, seen, 2.0)
    expected = torch.tensor([[1.0, -2.0, 0.5, 3.0, 0.0], [2.0, -1.0, 0.25, 1.5, 0.0]])
    assert torch.equal(out, expected)
    assert torch.equal(logits, before)  # input untouched
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.0), logits)
    with pytest.raises(ValueError):
        apply_repetition_penalty(logits, seen[:, :3], 2.0)


def test_repetition_penalty_in_sample() -> None:
    x = torch.tensor([[3.0, 2.0, -5.0]])  # (1, V)
    seen = torch.tensor([[True, False, False]])
    params = SamplingParams(repetition_penalty=2.0)
    assert sample(x, params).item() == 0  # no `seen` -> no penalty
    assert sample(x, params, seen=seen).item() == 1  # 3 / 2 = 1.5 < 2
    params = SamplingParams(temperature=1.0, top_k=1, repetition_penalty=2.0)
    assert sample(x, params, seen=seen).item() == 1


def test_validate_accepts_defaults_and_sane_values() -> None:
    SamplingParams().validate()
    SamplingParams(
        max_new_tokens=1,
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        repetition_penalty=1.05,
        seed=3,
        stop_token_ids=(1, 2),
    ).validate()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": -0.2}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": -5}, "max_new_tokens"),
        ({"max_new_tokens": 1.5}, "max_new_tokens"),
        ({"seed": "abc"}, "seed"),
        ({"seed": 2**70}, "64-bit"),
        ({"stop_token_ids": [1, 2]}, "stop_token_ids"),
        ({"stop_token_ids": (1, -2)}, "stop_token_ids"),
    ],
)
def test_validate_rejects(kwargs: dict, field: str) -> None:
    with pytest.raises(Owl3Error, match=field):
        SamplingParams(**kwargs).validate()


def test_params_frozen() -> None:
    p = SamplingParams()
    with pytest.raises(AttributeError):
        p.temperature = 1.0  # type: ignore[misc]
