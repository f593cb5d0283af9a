"""The engine's prefix cache: the text KV of recent prompts (and answers), reused by prompts that continue
them.

A chat client sends the whole conversation again with every turn. The text KV of a position depends only
on the tokens up to it and on the images whose image token lies before it, so when a new prompt begins
with the tokens of an earlier request, and every view (image, crop, frame) in that common part has the
same pixels (the media cache's keys), the earlier keys/values of that part are exactly what a prefill
would compute again. The engine copies them into the new request's slot and prefills only the rest.

Entries are stored when a request finishes (its prompt and answer, less the last token, which was never
fed), in a byte-bounded LRU; an entry that a newer one continues is dropped. A saved visual memory
(`owl3.inference.memory`) is the same thing kept on disk, named by the user instead of found by matching.

Reuse changes where the prompt's prefill is cut, so a continued prompt's numbers can differ from a cold
run's in the last bits (as with vLLM's prefix caching): the engine turns it off by default; `owl3 serve`
turns it on.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor


@dataclass
class Prefix:
    ids: Tensor  # (P,) int64 on the CPU: the tokens whose keys/values are kept
    starts: list[int]  # image-token index of each view inside the P tokens
    view_keys: list[bytes]  # the media cache's key of each of those views
    kv: list[tuple[Tensor, Tensor]]  # per layer (1, kv, P, d) keys and values

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv)

    def common(self, ids: Tensor, starts: list[int], view_keys: list[bytes]) -> int:
        """How many first tokens of a prompt (ids, its views' starts and keys) this entry holds exactly."""
        m = min(len(self.ids), len(ids))
        differ = (self.ids[:m] != ids[:m]).nonzero()
        n = int(differ[0, 0]) if len(differ) else m
        for j, s in enumerate(starts):  # views are numbered in token order: the same tokens, the same j
            if s >= n:
                break
            if j >= len(self.view_keys) or self.view_keys[j] != view_keys[j]:
                return s  # up to (not including) the first view with other pixels
        return n


class PrefixCache:
    """`max_bytes` 0 turns it off. `min_tokens`: shorter matches (a shared system prompt) are not worth
    moving the prefill's cut for."""

    def __init__(self, max_bytes: int, min_tokens: int = 16) -> None:
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens
        self.nbytes = 0
        self.hits = 0
        self.tokens_reused = 0
        self._items: OrderedDict[int, Prefix] = OrderedDict()
        self._next = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def match(self, ids: Tensor, starts: list[int], view_keys: list[bytes]) -> tuple[Prefix, int] | None:
        """The entry sharing the longest prefix with the prompt, and that length (at most len(ids) - 1:
        the last prompt token is always computed, for its logits); None below `min_tokens`."""
        best, best_n = None, 0
        for key, entry in self._items.items():
            n = min(entry.common(ids, starts, view_keys), len(ids) - 1)
            if n > best_n:
                best, best_n = key, n
        if best is None or best_n < self.min_tokens:
            return None
        self._items.move_to_end(best)
        self.hits += 1
        self.tokens_reused += best_n
        return self._items[best], best_n

    def put(self, entry: Prefix) -> None:
        size = entry.nbytes
        if not self.enabled or size > self.max_bytes or len(entry.ids) < self.min_tokens:
            return
        for key in [k for k, e in self._items.items() if e.common(entry.ids, entry.starts, entry.view_keys)
                    == len(e.ids)]:  # fmt: skip
            self.nbytes -= self._items.pop(key).nbytes  # the new entry continues it: it holds all of it
        self._items[self._next] = entry
        self._next += 1
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.nbytes

    def __len__(self) -> int:
        return len(self._items)
