"""Image embeddings with the model's own vision path: tower -> projector -> mean over the visual tokens
-> L2 normalization, in batches. No second model: the vectors live in the space the language model reads.

`weights_hash` fingerprints what the vectors depend on (the tower's and the projector's weights), so a
knowledge base refuses queries embedded by another model.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Sequence

import numpy as np
import torch

from owl3.model import Owl3Model
from owl3.processing import global_view, load_image
from owl3.processing.image import ImageInput

_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def weights_hash(model: Owl3Model) -> str:
    """sha256 of the vision tower's and the projector's weights (names, shapes, dtypes and bytes)."""
    if model not in _HASHES:
        h = hashlib.sha256()
        for prefix, module in (
            ("vision_model", model.vision_model),
            ("vision2text_model", model.vision2text_model),
        ):
            for name, t in sorted(module.state_dict().items()):
                t = t.detach().cpu().contiguous()
                h.update(f"{prefix}.{name}:{tuple(t.shape)}:{t.dtype}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        _HASHES[model] = h.hexdigest()
    return _HASHES[model]


@torch.inference_mode()
def embed_pixels(model: Owl3Model, pixels: torch.Tensor) -> np.ndarray:
    """(N, 3, S, S) pixels -> (N, D) float32 unit vectors."""
    feats = model.encode_media(pixels, None).float()  # (N, T, D)
    return torch.nn.functional.normalize(feats.mean(1), dim=-1).cpu().numpy()


def embed_images(
    model: Owl3Model,
    images: Sequence[ImageInput],
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Images (PIL or paths; a bad one raises Owl3Error) -> (N, D) float32 unit vectors, `batch_size` at a
    time; `on_batch(n)` after each batch (a progress bar). Each image is one global view (no crops)."""
    size = model.cfg.image_size
    out = []
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        pixels = torch.stack([global_view(load_image(x), size) for x in chunk])
        out.append(embed_pixels(model, pixels))
        if on_batch is not None:
            on_batch(len(chunk))
    return np.concatenate(out) if out else np.zeros((0, model.cfg.text.dim), dtype=np.float32)
