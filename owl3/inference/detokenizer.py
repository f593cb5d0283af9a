"""Incremental (streaming) detokenization for byte-level BPE tokenizers such as Qwen2's.

Each pushed id returns only text that can no longer change: a multi-byte UTF-8 character split across
tokens is held back until its last byte arrives. Like vLLM/TGI it decodes a short window of recent ids,
`ids[prefix:]`, and subtracts the window's already-known head `decode(ids[prefix:read])`, so each step costs
O(window), not O(sequence). It is not a general detokenizer for SentencePiece/WordPiece decoders that
rewrite text across token boundaries; it relies on byte-level decoding being concatenation of bytes.
"""

from __future__ import annotations

import tokenizers

_REPLACEMENT = "\ufffd"
# If the window keeps ending in U+FFFD (a run of invalid bytes), look for an inner settled boundary every this
# many tokens, so a degenerate stream cannot make the window grow without bound.
_MAX_OPEN = 16


class StreamDetokenizer:
    """Turn a stream of token ids into a stream of final text pieces.

    Invariant: "".join(push(i) for i in ids) + flush() == tokenizer.decode(ids, skip_special_tokens=...).

    State: `ids[prefix:read]` decodes to `_prefix_text`, already emitted; `read` is a token boundary where the
    UTF-8 parse is settled (the text up to it ended in a complete character). Of `decode(ids[prefix:])`,
    `len(_prefix_text) + _held` characters are emitted; at most the last character (a U+FFFD that may be a
    not-yet-complete character) is ever kept back.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window (token index)
        self._read = 0  # settled boundary: everything before it has been emitted
        self._prefix_text = ""  # decode(ids[prefix:read])
        self._held = 0  # chars past _prefix_text already emitted while the window ends in U+FFFD
        self._pieces: list[str] = []

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one token id; return the newly final text (possibly "")."""
        self._ids.append(int(token_id))
        window = self._decode(self._ids[self._prefix :])
        start = len(self._prefix_text) + self._held
        ends_open = window.endswith(_REPLACEMENT)
        # A trailing U+FFFD may be an incomplete character whose bytes are still coming: keep it back.
        # Everything before it is settled: the UTF-8 parse of earlier bytes cannot change.
        piece = window[start : len(window) - 1] if ends_open else window[start:]
        if ends_open:
            self._held += len(piece)
            open_len = len(self._ids) - self._read
            if open_len % _MAX_OPEN == 0:
                self._settle_inside(window[len(self._prefix_text) :])
        else:
            # The window ends on a complete character, so the end is a settled boundary: slide forward,
            # keeping the last settled chunk as left context (as vLLM does).
            self._prefix, self._read = self._read, len(self._ids)
            self._prefix_text = window[len(self._prefix_text) :]
            self._held = 0
        if piece:
            self._pieces.append(piece)
        return piece

    def _settle_inside(self, rest: str) -> None:
        """Move `read` to the last boundary k in ids[read:] where the UTF-8 parse is settled.

        `rest` is decode(ids[read:]). k is settled iff decode(ids[read:k]) + decode(ids[k:]) == rest with a
        non-empty tail: a character or invalid run straddling k would decode differently when split, and a
        non-empty tail means the byte after k is known, so later bytes cannot change the parse before k.
        """
        n = len(self._ids)
        for k in range(n - 1, self._read, -1):
            head = self._decode(self._ids[self._read : k])
            tail = self._decode(self._ids[k:])
            if tail and head + tail == rest:
                # head ends before the last char of rest, so it has all been emitted already.
                self._prefix, self._read = self._read, k
                self._held -= len(head)
                self._prefix_text = head
                return

    def flush(self) -> str:
        """End of stream: return whatever is left (an incomplete trailing character comes out as U+FFFD)."""
        window = self._decode(self._ids[self._prefix :])
        piece = window[len(self._prefix_text) + self._held :]
        # Start a fresh window: later pushes (if any) are decoded as a new stream.
        self._prefix = self._read = len(self._ids)
        self._prefix_text = ""
        self._held = 0
        if piece:
            self._pieces.append(piece)
        return piece

    @property
    def text(self) -> str:
        """All text emitted so far."""
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    @property
    def token_ids(self) -> list[int]:
        """All ids pushed so far (a copy)."""
        return list(self._ids)
