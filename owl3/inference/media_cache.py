"""The engine's media cache: the visual keys and values of images and video frames, keyed by pixels.

OpenAI-style clients resend every image and video with every turn of a conversation. What the hyper
layers need of a view (one image, crop or frame after the processor's transform) is its keys and values;
before MI-RoPE they depend only on its pixels, so the engine keeps them (`Owl3Model.project_visual_kv`:
every hyper layer's unrotated keys and values) in a byte-bounded LRU and runs neither the vision tower nor
the projections on a view it has seen. The rotation, which depends on where the image sits in this
prompt, is applied when they are written into the request's buffers.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from torch import Tensor


def view_key(pixels: Tensor) -> bytes:
    """A digest of one view's pixels (3, S, S): the same key whenever the same picture comes back.
    SHA-256: collision-resistant, since a server's clients must not be able to make their picture pass
    for another's, and about twice as fast as BLAKE2b where the CPU has SHA instructions."""
    x = pixels.detach().contiguous().cpu()
    h = hashlib.sha256()
    h.update(f"{x.dtype}{tuple(x.shape)}".encode())
    h.update(x.numpy().data)
    return h.digest()


class MediaCache:
    """`max_bytes` 0 turns it off (no hashing either)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._hashers: ThreadPoolExecutor | None = None
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[bytes, Tensor] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def keys(self, views: Tensor) -> list[bytes]:
        """`view_key` of each of (n, 3, S, S) views; hashlib lets go of the GIL, so many views are hashed
        on several threads (a 384-px view is 1.7 MB of float32)."""
        if views.shape[0] < 8:
            return [view_key(v) for v in views]
        if self._hashers is None:
            self._hashers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="owl3-media-hash")
        return list(self._hashers.map(view_key, views))

    def get(self, key: bytes) -> Tensor | None:
        kv = self._items.get(key)
        if kv is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return kv

    def put(self, key: bytes, kv: Tensor) -> None:
        size = kv.numel() * kv.element_size()
        if size > self.max_bytes or key in self._items:
            return
        self._items[key] = kv
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.numel() * old.element_size()

    def __len__(self) -> int:
        return len(self._items)
