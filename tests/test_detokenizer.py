"""Tests for owl3.inference.detokenizer.StreamDetokenizer.

Two byte-level BPE tokenizers: the official tiny fixture (where random ids often form invalid UTF-8) and
one trained here on text with é, 中文 and 🦉 so that those characters span several tokens.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from owl3.inference.detokenizer import StreamDetokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "official-240728-tiny" / "tokenizer.json"
FIXTURE_IDS = 488  # the fixture model's vocab_size; ids past the tokenizer's own vocab decode to nothing

SENTENCES = [
    "héllo 🦉 世界",
    "The owl 🦉 said: café, naïve, résumé — 中文 is fine.",
    "中文分词测试：我们在这里。世界你好！🦉🦉🦉",
    "emoji mix 😀👍🏽🇫🇷 and ZWJ 👨‍👩‍👧 families",
    "  leading spaces, tabs\tand\nnewlines\n\n end ",
    "Ünïcödé Ŧêxŧ ∑ ∫ ≈ ≠ — “quotes” ‘single’",
    "plain ascii text with numbers 12345 and punctuation!?",
]
# Enough repetition for some merges (incl. ones across character boundaries), too little to make the owl
# or 界 a single token; test_trained_tokenizer_splits_multibyte_chars checks that.
TRAIN_TEXT = SENTENCES + ["café résumé " * 5, "中文" * 5, "hello world, the owl " * 20]


@pytest.fixture(scope="module")
def fixture_tok() -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_file(str(FIXTURE))


@pytest.fixture(scope="module")
def trained_tok() -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=280,  # 256 bytes + a few merges: multi-byte characters stay split over tokens
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_end|>"],
        show_progress=False,
    )
    tok.train_from_iterator(TRAIN_TEXT, trainer)
    return tok


def _stream(tok: tokenizers.Tokenizer, ids: list[int], skip: bool = True) -> tuple[list[str], str]:
    """Push ids one by one; check the emitted text is a prefix of the full decode after every push."""
    full = tok.decode(ids, skip_special_tokens=skip)
    d = StreamDetokenizer(tok, skip_special_tokens=skip)
    pieces = []
    for i in ids:
        pieces.append(d.push(i))
        # Never a partial character: what has come out so far is exactly a prefix of the final text.
        assert full.startswith(d.text), (ids, pieces)
    pieces.append(d.flush())
    assert "".join(pieces) == full == d.text
    return pieces, full


def test_trained_tokenizer_splits_multibyte_chars(trained_tok: tokenizers.Tokenizer) -> None:
    # The premise of the tests below: these characters really span several tokens.
    for ch in ("🦉", "界"):
        assert len(trained_tok.encode(ch).ids) > 1
        assert trained_tok.decode(trained_tok.encode(ch).ids[:1]) == "\ufffd"
    # And some token straddles a character boundary (the end of 中 plus the start of 文).
    ids = trained_tok.encode("中文").ids
    assert any(trained_tok.decode(ids[:k]) == "中\ufffd" for k in range(1, len(ids)))


def test_stream_hello_owl_world(trained_tok: tokenizers.Tokenizer) -> None:
    text = "héllo 🦉 世界"
    ids = trained_tok.encode(text).ids
    assert trained_tok.decode(ids) == text
    pieces, full = _stream(trained_tok, ids)
    assert full == text
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces[:-1]  # some pushes had to hold back a partial character
    assert any("🦉" in p for p in pieces[:-1])
    assert pieces[-1] == ""  # nothing left for flush: the text ended on a complete character


@pytest.mark.parametrize("name", ["fixture_tok", "trained_tok"])
def test_real_sequences(name: str, request: pytest.FixtureRequest) -> None:
    tok = request.getfixturevalue(name)
    for text in SENTENCES + ["".join(SENTENCES) * 5]:
        ids = tok.encode(text).ids
        pieces, full = _stream(tok, ids)
        assert full == text
        assert all("\ufffd" not in p for p in pieces)


@pytest.mark.parametrize("name", ["fixture_tok", "trained_tok"])
@pytest.mark.parametrize("skip", [True, False])
def test_random_sequences(name: str, skip: bool, request: pytest.FixtureRequest) -> None:
    tok = request.getfixturevalue(name)
    n_ids = FIXTURE_IDS if name == "fixture_tok" else tok.get_vocab_size()
    rng = random.Random(1234)
    clean = 0
    for _ in range(300):
        ids = [rng.randrange(n_ids) for _ in range(rng.randrange(1, 60))]
        pieces, full = _stream(tok, ids, skip=skip)
        if "\ufffd" not in full:
            clean += 1
            assert all("\ufffd" not in p for p in pieces)
    assert clean > 0


def test_random_multibyte_fragments(trained_tok: tokenizers.Tokenizer) -> None:
    # Splice fragments of encoded multi-byte text: valid characters cut at arbitrary token boundaries.
    rng = random.Random(7)
    encoded = [trained_tok.encode(s).ids for s in SENTENCES]
    for _ in range(300):
        ids: list[int] = []
        for _ in range(rng.randrange(1, 6)):
            src = rng.choice(encoded)
            a = rng.randrange(len(src))
            ids += src[a : a + rng.randrange(1, 12)]
        pieces, full = _stream(trained_tok, ids)
        if "\ufffd" not in full:
            assert all("\ufffd" not in p for p in pieces)


def test_special_tokens(trained_tok: tokenizers.Tokenizer) -> None:
    end = trained_tok.token_to_id("<|im_end|>")
    ids = trained_tok.encode("中文 🦉").ids
    ids = ids[:2] + [end] + ids[2:] + [end]
    assert _stream(trained_tok, ids, skip=True)[1] == "中文 🦉"
    assert "<|im_end|>" in _stream(trained_tok, ids, skip=False)[1]


def test_flush_emits_incomplete_tail(trained_tok: tokenizers.Tokenizer) -> None:
    ids = trained_tok.encode("ok 🦉").ids
    d = StreamDetokenizer(trained_tok)
    out = "".join(d.push(i) for i in ids[:-1])
    assert out == "ok "
    assert d.flush() == "\ufffd"  # the owl's last byte never came
    assert d.text == "ok \ufffd"
    assert d.flush() == ""


class _SpyTokenizer:
    """Wraps a tokenizer and records the longest id list ever decoded."""

    def __init__(self, tok: tokenizers.Tokenizer) -> None:
        self.tok = tok
        self.max_len = 0
        self.calls = 0

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        self.max_len = max(self.max_len, len(ids))
        self.calls += 1
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


def test_window_stays_small(trained_tok: tokenizers.Tokenizer) -> None:
    ids = trained_tok.encode(" ".join(SENTENCES) * 20).ids
    assert len(ids) > 1000
    spy = _SpyTokenizer(trained_tok)
    d = StreamDetokenizer(spy)  # type: ignore[arg-type]
    out = "".join(d.push(i) for i in ids) + d.flush()
    assert out == trained_tok.decode(ids)
    assert spy.max_len <= 16
    assert spy.calls <= len(ids) + 1


def test_window_stays_small_on_invalid_bytes(trained_tok: tokenizers.Tokenizer) -> None:
    # Single-byte tokens that never decode on their own: lone lead and continuation bytes.
    byte_ids = [i for i in range(trained_tok.get_vocab_size()) if trained_tok.decode([i]) == "\ufffd"]
    lead = trained_tok.token_to_id("Ã")  # byte 0xC3 in the byte-level alphabet
    cont_ids = [i for i in byte_ids if trained_tok.decode([lead, i]) not in ("\ufffd", "\ufffd\ufffd")]
    assert len(byte_ids) > 64 and len(cont_ids) == 64  # 0x80..0xBF
    rng = random.Random(3)
    # Only continuation bytes: every decode ends in U+FFFD forever, yet each one is final. Mixed: some
    # lead + continuation pairs happen to form valid characters.
    for pool in (cont_ids, byte_ids):
        ids = [rng.choice(pool) for _ in range(2000)]
        spy = _SpyTokenizer(trained_tok)
        d = StreamDetokenizer(spy)  # type: ignore[arg-type]
        pieces = [d.push(i) for i in ids]
        full = trained_tok.decode(ids)
        assert len(d.text) >= len(full) - 1  # text kept flowing instead of piling up for flush()
        assert "".join(pieces) + d.flush() == full
        assert spy.max_len <= 64
