"""mPLUG-Owl3: SigLIP tower -> projector -> Qwen2 with Hyper Attention layers.

`encode_media(pixels)` turns images into visual features (N, T, D); `forward(tokens, ...)` runs the
language model with those features reachable from the hyper layers. Pure tensors in, tensors out: no
tokenizer, no PIL, no cache policy (that is owl3.inference).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from owl3.config import Owl3Config
from owl3.model.hyper import RowVisuals, VisualContext
from owl3.model.layers import apply_rope
from owl3.model.text import Cache, Qwen2ForCausalLM
from owl3.model.vision import SiglipVisionModel


class Owl3Model(nn.Module):
    def __init__(self, cfg: Owl3Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision_model = SiglipVisionModel(cfg.vision)
        if cfg.projector == "linear":
            self.vision2text_model: nn.Module = nn.Linear(cfg.vision.dim, cfg.text.dim)
        else:  # 241101: Linear, GELU, Linear
            self.vision2text_model = nn.Sequential(
                nn.Linear(cfg.vision.dim, cfg.text.dim), nn.GELU(), nn.Linear(cfg.text.dim, cfg.text.dim)
            )
        self.language_model = Qwen2ForCausalLM(cfg.text, fused=cfg.attention == "fused")

    @property
    def device(self) -> torch.device:
        return self.language_model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.lm_head.weight.dtype

    def encode_media(self, pixels: Tensor, chunk_size: int | None = 64) -> Tensor:
        """(N, 3, S, S) pixels -> (N, T, D) projected visual features, `chunk_size` images at a time (never
        more than the config's `vision_batch_size`, as the 241101 code runs its tower)."""
        vdtype = self.vision_model.embeddings.patch_embedding.weight.dtype
        step = chunk_size or max(1, pixels.shape[0])
        if self.cfg.vision_batch_size is not None:
            step = min(step, self.cfg.vision_batch_size)
        out = None
        for i in range(0, pixels.shape[0], step):
            f = self.vision2text_model(self.vision_model(pixels[i : i + step].to(self.device, vdtype)))
            if out is None:  # written in place, chunk by chunk: no second copy of thousands of images
                out = f.new_empty((pixels.shape[0], *f.shape[1:]), dtype=self.dtype)
            out[i : i + step] = f
        return out

    def encode_visual_kv(
        self, pixels: Tensor, starts: list[int], chunk_size: int | None = 64
    ) -> dict[int, tuple[Tensor, Tensor]]:
        """One sample's (N, 3, S, S) pixels, whose image tokens are at `starts` -> every hyper layer's
        rotated visual keys and values (1, kv, N*T, d), `chunk_size` images at a time.

        Equal to `encode_media` followed by the hyper layers' own K/V (what a prefill computes), but the
        projected features of all images never exist at once: per image they take about as much memory
        as the K/V of all hyper layers together (7B: 5.2 vs 5.8 MB), so a long request fits twice the
        images. Inference only: training needs the features in the autograd graph.
        """
        n = pixels.shape[0]
        if len(starts) != n:
            raise ValueError(f"{n} images but {len(starts)} image tokens")
        positions = self.visual_layout(starts)[1][None]  # MI-RoPE position of each token
        kv = self.visual_kv_buffers(n)
        step = chunk_size or max(1, n)
        for i in range(0, n, step):
            feats = self.encode_media(pixels[i : i + step], None)
            self.write_visual_kv(kv, self.project_visual_kv(feats), positions, i)
        return kv

    def visual_layout(self, starts: list[int]) -> tuple[Tensor, Tensor]:
        """One sample's (key_starts, MI-RoPE positions) per visual token, in this model's family."""
        return VisualContext.layout(starts, self.cfg.vision.n_tokens, self.device, self.cfg.mi_rope_offset)

    def visual_context(self, features: list[Tensor | None], starts: list[list[int]]) -> VisualContext:
        """Per-sample features (n_img, T, D) and image-token indices -> a padded `VisualContext`."""
        return VisualContext.build(features, starts, self.cfg.mi_rope_offset)

    def visual_context_from_kv(
        self, kv: dict[int, tuple[Tensor, Tensor]], starts: list[int]
    ) -> VisualContext:
        """One sample whose hyper layers' visual K/V are already computed."""
        return VisualContext.from_kv(kv, starts, self.cfg.vision.n_tokens, self.cfg.mi_rope_offset)

    def visual_kv_buffers(self, n_images: int) -> dict[int, tuple[Tensor, Tensor]]:
        """Empty (1, kv, n_images * T, d) key and value buffers for every hyper layer."""
        cfg = self.cfg.text
        shape = (1, cfg.n_kv_heads, n_images * self.cfg.vision.n_tokens, cfg.head_dim)
        lm = self.language_model.model
        return {
            layer.self_attn.layer_idx: (self._empty(shape), self._empty(shape))
            for layer in lm.layers
            if layer.self_attn.is_hyper
        }

    @property
    def hyper_layers(self) -> list[nn.Module]:
        """The decoder layers with a visual branch, in order."""
        return [layer for layer in self.language_model.model.layers if layer.self_attn.is_hyper]

    def project_visual_kv(self, feats: Tensor) -> Tensor:
        """(n, T, D) projected features -> (n, n_hyper, 2, kv, T, d): every hyper layer's visual keys (not
        yet rotated) and values. They depend on the pixels only, so the engine's media cache keeps them;
        MI-RoPE, which depends on where an image sits in a prompt, is applied by `write_visual_kv`."""
        cfg = self.cfg.text
        n, t, _ = feats.shape
        out = []
        for layer in self.hyper_layers:
            y = layer.self_attn.v_kv_proj(layer.input_layernorm(feats))  # (n, T, kv * 2 * d)
            out.append(y.view(n, t, cfg.n_kv_heads, 2, cfg.head_dim).permute(0, 3, 2, 1, 4))
        return torch.stack(out, 1)

    def write_visual_kv(
        self, kv: dict[int, tuple[Tensor, Tensor]], raw: Tensor, positions: Tensor, first: int
    ) -> None:
        """Images first .. first + n - 1 of a sample into its hyper layers' K/V buffers (1, kv, N*T, d).

        raw (n, n_hyper, 2, kv, T, d) from `project_visual_kv`; positions (1, N*T) the sample's MI-RoPE
        positions. The keys are rotated here, in float32, one position per image (MI-RoPE)."""
        n, t = raw.shape[0], raw.shape[4]
        a, b = first * t, (first + n) * t
        cos, sin = self.language_model.model.rope(positions[:, a:b:t], torch.float32)  # (1, n, d)
        cos, sin = cos.transpose(0, 1), sin.transpose(0, 1)  # (n, 1, d): broadcast over heads and tokens
        for j, layer in enumerate(self.hyper_layers):
            k_buf, v_buf = kv[layer.self_attn.layer_idx]
            k = apply_rope(raw[:, j, 0].float(), cos, sin)  # (n, kv, T, d)
            k_buf[0, :, a:b].unflatten(1, (n, t)).copy_(k.transpose(0, 1))
            v_buf[0, :, a:b].unflatten(1, (n, t)).copy_(raw[:, j, 1].transpose(0, 1))

    def _empty(self, shape: tuple[int, ...]) -> Tensor:
        return torch.empty(shape, dtype=self.dtype, device=self.device)

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.language_model.model.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: Tensor,
        positions: Tensor | None = None,
        mask: Tensor | None = None,
        cache: Cache | None = None,
        visual: VisualContext | RowVisuals | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """input_ids (B, T) -> logits (B, T, V), or (B, 1, V) with `last_only`.

        positions (B, T): raw token positions (default 0..T-1); mask (B, 1, T, S) bool or None for plain
        causal; cache: text KV cache to read and extend; visual: the batch's visual context.
        """
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        h = self.language_model.model(self.embed(input_ids), positions, mask, cache, visual)
        if last_only:
            h = h[:, -1:]
        return self.language_model.lm_head(h)


# the torch.nn.init functions that module constructors call to fill their fresh parameters
_INIT_FUNCTIONS = frozenset(
    getattr(nn.init, name)
    for name in (
        "uniform_",
        "normal_",
        "trunc_normal_",
        "constant_",
        "ones_",
        "zeros_",
        "kaiming_uniform_",
        "kaiming_normal_",
        "xavier_uniform_",
        "xavier_normal_",
    )
)


class _SkipInit(TorchFunctionMode):
    """Inside it, torch.nn.init's fill functions return their tensor untouched. A torch function mode is
    local to this thread and to the `with` block: nothing of torch.nn.init is replaced."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _INIT_FUNCTIONS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def meta_model(cfg: Owl3Config) -> Owl3Model:
    """An Owl3Model of `cfg` on the meta device (shapes only), for loading or random weights to fill.

    The modules' own random initialization is skipped: on the meta device it runs PyTorch's Python
    reference kernels, whose first use imports torch._dynamo, about 2 s of every model load.
    """
    with torch.device("meta"), _SkipInit():
        return Owl3Model(cfg)
