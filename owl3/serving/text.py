"""Token ids -> text deltas for one answer, with stop strings matched on the text.

Stop strings are the client's, of any length and any number of tokens, so they are found in the decoded
text, not among token ids. While streaming, the last `len(longest stop) - 1` characters are held back:
they might be the start of a stop string whose end has not been generated yet, and text once sent cannot
be taken back. When a stop string appears, the answer ends just before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from owl3.inference.detokenizer import StreamDetokenizer


class TextStream:
    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self._detok = StreamDetokenizer(tokenizer)
        self._stop = tuple(stop)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._text = ""  # the answer so far (cut at a stop string once found)
        self._sent = 0  # characters of _text already given out
        self.stopped = False  # a stop string was found: the answer is complete

    @property
    def text(self) -> str:
        return self._text

    def push(self, token_id: int) -> str:
        """Add one generated token; return the text that is now safe to send (possibly "")."""
        return self._advance(self._detok.push(token_id), final=False)

    def finish(self) -> str:
        """The engine is done: return what was held back."""
        return self._advance(self._detok.flush(), final=True)

    def _advance(self, piece: str, final: bool) -> str:
        if self.stopped:
            return ""
        # a stop string ending in the new piece may start in the held-back tail of the old text
        start = max(0, len(self._text) - self._hold)
        self._text += piece
        if self._stop:
            hits = [i for s in self._stop if (i := self._text.find(s, start)) >= 0]
            if hits:
                self._text = self._text[: min(hits)]
                self.stopped = final = True
        end = len(self._text) if final else max(self._sent, len(self._text) - self._hold)
        out = self._text[self._sent : end]
        self._sent = end
        return out
