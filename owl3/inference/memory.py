"""Watch once, ask many: encode a video or an image set once, save it, answer later questions from it.

A `VisualMemory` is the part of a conversation that does not depend on the question: the prompt up to and
including its last image token (chat header, then the media placeholders, expanded), run through the model
once. It keeps
- the rotated visual keys/values of every hyper layer (what the question's tokens attend to), and
- the text KV cache of that prompt prefix in every layer,
so a question costs only its own tokens: no video decoding, no vision tower, no prefill of the media part.
The answer is the one a fresh `pipe.generate(question, images, videos)` gives (tests/test_memory.py): the
processor tokenizes the text around every image token on its own, so the prefix's tokens never depend on
what follows.

On disk it is one safetensors file (`.owl3`): tensors `prefix_ids`, `text.{layer}.{k,v}`,
`visual.{layer}.{k,v}`; the metadata names the format, the media placeholders' text and the model's
identity (a hash of its config and of a sample of every weight tensor), so a memory made by another model
is refused with an `Owl3Error` instead of answering nonsense. It is not a general KV-cache store: one
conversation start, one model.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from owl3.errors import Owl3Error
from owl3.inference.engine import Engine
from owl3.inference.kernels import attention_kernels
from owl3.inference.kv_cache import KVCache
from owl3.model import Owl3Model, VisualContext
from owl3.processing import Encoding
from owl3.processing.chat import IM_END

USER_HEADER = "<|im_start|>user\n"

FORMAT = "owl3-memory"
VERSION = "1"
SAMPLES_PER_TENSOR = 256


_IDENTITY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_identity(model: Owl3Model) -> str:
    """A short hash of the model: its config and an evenly spaced sample of every weight tensor.

    The sample is rounded to bfloat16 first, so the same checkpoint loaded in float32, bfloat16 or
    float16 has one identity (a memory made in one dtype may be used in another). Cached per model until
    a weight is replaced or changed in place (tensor version counters).
    """
    key = tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers()))
    hit = _IDENTITY.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    ident = _identity(model, model.state_dict())
    _IDENTITY[model] = (key, ident)
    return ident


def _identity(model: Owl3Model, state: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    cfg = model.cfg.to_hf()
    cfg.pop("torch_dtype", None)
    h.update(json.dumps(cfg, sort_keys=True).encode())
    for name, t in sorted(state.items()):
        flat = t.detach().reshape(-1)
        n = flat.numel()
        k = min(n, SAMPLES_PER_TENSOR)
        # evenly spaced indices in integer arithmetic: a float32 linspace rounds past the end of
        # tensors of more than 2^24 elements (a 7B embedding) and indexes out of bounds
        idx = torch.arange(k, device=flat.device) * (n - 1) // max(k - 1, 1)
        sample = flat[idx].to(torch.bfloat16).float().cpu()
        h.update(name.encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:32]


@dataclass
class VisualMemory:
    """A conversation start (media and optional system prompt) already run through the model."""

    prefix_ids: Tensor  # (P,) int64
    media_starts: list[int]  # s_k of every view, all inside the prefix
    tokens_per_image: int
    media_text: str  # the user turn's media placeholders, expanded (e.g. "<|image|>" per frame)
    system: str | None
    visual_kv: dict[int, tuple[Tensor, Tensor]]  # hyper layer -> rotated K, V (1, kv, M, d)
    text_kv_: list[tuple[Tensor, Tensor]]  # per layer K, V of the prefix (1, kv, P, d)
    identity: str
    meta: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ what the engine needs
    @property
    def text_kv(self) -> list[tuple[Tensor, Tensor]]:
        return self.text_kv_

    def visual_context(self) -> VisualContext:
        """A fresh context per request (it carries per-request flags); the K/V tensors are shared."""
        return VisualContext.from_kv(self.visual_kv, self.media_starts, self.tokens_per_image)

    @property
    def n_views(self) -> int:
        return len(self.media_starts)

    def messages(self, question: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        msgs.append({"role": "user", "content": self.media_text + "\n" + question})
        return msgs

    # ------------------------------------------------------------------ file
    def save(self, path: str | Path) -> Path:
        out = Path(path)
        tensors: dict[str, Tensor] = {"prefix_ids": self.prefix_ids.cpu().contiguous()}
        for i, (k, v) in enumerate(self.text_kv_):
            tensors[f"text.{i}.k"], tensors[f"text.{i}.v"] = k[0].cpu().contiguous(), v[0].cpu().contiguous()
        for i, (k, v) in self.visual_kv.items():
            tensors[f"visual.{i}.k"], tensors[f"visual.{i}.v"] = (
                k[0].cpu().contiguous(),
                v[0].cpu().contiguous(),
            )
        meta = {
            **self.meta,
            "format": FORMAT,
            "version": VERSION,
            "model_identity": self.identity,
            "media_starts": json.dumps(self.media_starts),
            "tokens_per_image": str(self.tokens_per_image),
            "media_text": self.media_text,
            "system": json.dumps(self.system),
        }
        if out.is_dir():
            raise Owl3Error(f"{str(out)!r} is a directory; name the file, e.g. {str(out / 'x.owl3')!r}")
        # a unique temporary name next to the target, renamed into place when complete: a crash, a full disk
        # or a second writer never leaves a half-written memory file, and a failure leaves nothing behind
        tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, tmp, metadata=meta)
            tmp.replace(out)
        except OSError as e:
            why = e.strerror or e
            raise Owl3Error(f"cannot write the memory file {str(out)!r} ({why}); check the path") from e
        finally:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # its folder could not be made: there is nothing to remove
                pass
        return out

    @classmethod
    def load(cls, path: str | Path, model: Owl3Model) -> VisualMemory:
        """Read a memory file for `model`; a memory of another model is refused."""
        p = Path(path)
        if not p.is_file():
            raise Owl3Error(f"memory file not found: {str(p)!r}; make one with 'owl3 encode MEDIA -o FILE'")
        try:
            with safe_open(p, "pt", device="cpu") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise Owl3Error(f"{str(p)!r} is not an owl3 memory file; make one with 'owl3 encode'")
                if meta.get("version") != VERSION:
                    raise Owl3Error(
                        f"{str(p)!r} is an owl3 memory of version {meta.get('version')}, this owl3 reads "
                        f"version {VERSION}; encode the media again"
                    )
                ident = model_identity(model)
                if meta.get("model_identity") != ident:
                    raise Owl3Error(
                        f"{str(p)!r} was encoded by another model (identity {meta.get('model_identity')}, "
                        f"this model is {ident}); encode the media again with this model"
                    )
                names = set(f.keys())
                dev, dt = model.device, model.dtype

                def get(name: str) -> Tensor:
                    return f.get_tensor(name).to(dev, dt)[None]

                n_layers = model.cfg.text.n_layers
                text_kv = [(get(f"text.{i}.k"), get(f"text.{i}.v")) for i in range(n_layers)]
                hyper = [i for i in range(n_layers) if model.cfg.text.is_hyper(i)]
                visual_kv = {i: (get(f"visual.{i}.k"), get(f"visual.{i}.v")) for i in hyper}
                prefix_ids = f.get_tensor("prefix_ids")
                if len(names) != 1 + 2 * n_layers + 2 * len(hyper):
                    raise Owl3Error(f"{str(p)!r} holds unexpected tensors; encode the media again")
        except SafetensorError as e:
            raise Owl3Error(f"cannot read {str(p)!r} as an owl3 memory file ({e})") from e
        return cls(
            prefix_ids=prefix_ids,
            media_starts=json.loads(meta["media_starts"]),
            tokens_per_image=int(meta["tokens_per_image"]),
            media_text=meta["media_text"],
            system=json.loads(meta["system"]),
            visual_kv=visual_kv,
            text_kv_=text_kv,
            identity=meta["model_identity"],
            meta={k: v for k, v in meta.items() if k.startswith("source")},
        )


@torch.inference_mode()
def remember(
    engine: Engine, enc: Encoding, *, system: str | None = None, sources: Sequence[str] = ()
) -> VisualMemory:
    """Run the part of an encoded conversation that ends with its last image token through the engine's
    model once: that prefix's visual K/V and text KV cache. `enc` is a user turn whose text is its media
    placeholders and a newline (after an optional `system` prompt), as `Owl3Pipeline.watch` encodes it;
    `sources` names the media files, for the record."""
    model = engine.model
    if not enc.media_starts:
        raise Owl3Error("nothing to encode: give at least one image or video")
    starts = enc.media_starts
    p = starts[-1] + 1  # the prefix ends with the last image token: nothing before it depends on the question
    prefix = enc.input_ids[:p]
    # the user turn's media text as the processor expanded it (crop prompts, one token per frame)
    user = enc.prompt.rsplit(USER_HEADER, 1)[1]
    media_text = user[: user.rindex("\n" + IM_END)]

    visual = engine.encode_visual([enc])  # straight to the hyper layers' K/V, as for any request
    cache = KVCache(model.cfg.text, 1, p, model.dtype, model.device)
    with attention_kernels(model.device):  # fills the text cache
        model(prefix.to(model.device)[None], cache=cache, visual=visual, last_only=True)
    text_kv = [(cache.k[i][:, :, :p].clone(), cache.v[i][:, :, :p].clone()) for i in range(len(cache.k))]
    return VisualMemory(
        prefix_ids=prefix,
        media_starts=starts,
        tokens_per_image=model.cfg.vision.n_tokens,
        media_text=media_text,
        system=system,
        visual_kv=dict(visual.kv),
        text_kv_=text_kv,
        identity=model_identity(model),
        meta={"source": json.dumps(list(sources))} if sources else {},
    )


__all__ = ["VisualMemory", "model_identity", "remember"]
