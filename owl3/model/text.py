"""The language model: Qwen2 decoder layers, some of them Hyper Attention layers.

Layer i (0-based) is a hyper layer iff i + 1 is in `TextConfig.hyper_layers` (1-based, as config.json).
With `fused` (the 241101 family) a hyper layer has no gate and its visual branch is one softmax over
[visual keys; text keys] instead of a gated cross-attention (model/hyper.py).
Module and parameter names follow the checkpoint (`language_model.model.layers.{i}.self_attn.q_proj`,
...), so loading is a name-for-name copy. A forward with no visual context (text-only input) never
touches the cross branch.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from owl3.config import TextConfig
from owl3.model.fused import fused_attention, fused_decode
from owl3.model.hyper import (
    RowVisuals,
    VisualContext,
    cross_attention,
    gate,
    visual_kv,
)
from owl3.model.layers import RMSNorm, RotaryEmbedding, Rotate, SwiGLU, attend_grouped, repeat_kv


class Cache(Protocol):
    """What a decoder layer needs of a text KV cache (see owl3.inference.kv_cache)."""

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]: ...


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int, fused: bool = False) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.is_hyper = cfg.is_hyper(layer_idx)
        self.fused = fused
        self.rotate = Rotate()  # no parameters: where hooks read the rotated q and k (model/capture.py)
        if self.is_hyper:
            self.v_kv_proj = nn.Linear(cfg.dim, 2 * cfg.n_kv_heads * cfg.head_dim)
            self.rotate_visual = Rotate(float32=True)  # MI-RoPE of the visual keys, likewise
            if not fused:
                self.gate_proj = nn.Sequential(nn.Linear(cfg.head_dim, cfg.head_dim), nn.Sigmoid())

    def forward(
        self,
        h: Tensor,
        positions: Tensor,
        rope: RotaryEmbedding,
        mask: Tensor | None,
        cache: Cache | None,
        visual: VisualContext | RowVisuals | None,
        norm: nn.Module,
        cos_sin: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        b, t, _ = h.shape
        q = self.q_proj(h).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        k = self.k_proj(h).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, kv, T, d)
        v = self.v_proj(h).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos_sin if cos_sin is not None else rope(positions, h.dtype)
        q, k = self.rotate(cos, sin, q, k)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, kv, S, d)
        if t == 1:
            # one query (decode): the query heads sharing a kv head become the query axis of that kv head,
            # so the cached keys/values are read in place instead of copied n_rep times; a (B, 1, 1, S)
            # mask broadcasts over them
            a = attend_grouped(q, k, v, mask)
        else:
            n_rep = self.n_heads // self.n_kv_heads
            kr, vr = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
            if mask is None:
                a = F.scaled_dot_product_attention(q, kr, vr, is_causal=True)
            else:
                a = F.scaled_dot_product_attention(q, kr, vr, attn_mask=mask)
        if self.is_hyper and visual is not None:
            if self.fused:
                a = self.fused_visual(a, q, k, v, mask, positions, visual, rope, norm)
            else:
                a = self.cross(a, q, positions, visual, rope, norm)
        return self.o_proj(a.transpose(1, 2).reshape(b, t, -1))

    def fused_visual(
        self,
        a_self: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        positions: Tensor,
        visual: VisualContext | RowVisuals,
        rope: RotaryEmbedding,
        norm: nn.Module,
    ) -> Tensor:
        """The 241101 visual branch: queries that see an image get one softmax over [visual; text keys],
        the others keep `a_self` (B, H, T, d) as it is. k, v (B, kv, S, d) and `mask` are the text keys,
        values and mask the self-attention used."""
        kv_of = (norm, self.v_kv_proj, rope, self.n_kv_heads, self.head_dim, self.rotate_visual)
        if isinstance(visual, RowVisuals):
            stacked = visual.stacked(self.layer_idx)
            if stacked is not None:  # a decode step over small visual contexts: all rows in one call
                return fused_decode(a_self, q, k, v, mask, *stacked, visual.has_media)
            # rows of separate requests: each row with media reads its own visual K/V; in a batch of
            # prefill pieces only a row's real (last `counts[i]`) columns, with its own mask
            out = a_self.clone()
            t = q.shape[2]
            for i in visual.with_media:
                ctx = visual.rows[i]
                c = t if visual.after_prompt else visual.counts[i]
                vk, vv = visual_kv(ctx, self.layer_idx, *kv_of)
                row_mask = None if mask is None else mask[i : i + 1, :, t - c :]
                o, seen = fused_attention(
                    q[i : i + 1, :, t - c :],
                    k[i : i + 1],
                    v[i : i + 1],
                    row_mask,
                    vk,
                    vv,
                    ctx.key_starts,
                    positions[i : i + 1, t - c :],
                    after_prompt=visual.after_prompt,
                )
                out[i : i + 1, :, t - c :] = torch.where(
                    seen[:, None, :, None], o, a_self[i : i + 1, :, t - c :]
                )
            return out
        vk, vv = visual_kv(visual, self.layer_idx, *kv_of)
        after = q.shape[2] == 1 and visual.after_prompt
        o, seen = fused_attention(q, k, v, mask, vk, vv, visual.key_starts, positions, after)
        return torch.where(seen[:, None, :, None], o, a_self)

    def cross(
        self,
        a_self: Tensor,
        q: Tensor,
        positions: Tensor,
        visual: VisualContext | RowVisuals,
        rope: RotaryEmbedding,
        norm: nn.Module,
    ) -> Tensor:
        """The gated visual branch: (B, H, T, d) self-attention output -> the layer's attention output."""
        kv_of = (norm, self.v_kv_proj, rope, self.n_kv_heads, self.head_dim, self.rotate_visual)
        if isinstance(visual, RowVisuals):
            # rows of separate requests: each row with media reads its own visual K/V
            a_cross = torch.zeros_like(a_self)
            if not visual.after_prompt:  # prefill pieces: each row's real (last) columns, its own mask
                t = q.shape[2]
                seen = torch.zeros(q.shape[0], t, dtype=torch.bool, device=q.device)  # (B, T)
                for i in visual.with_media:
                    ctx, c = visual.rows[i], visual.counts[i]
                    vk, vv = visual_kv(ctx, self.layer_idx, *kv_of)
                    out, row_seen = cross_attention(
                        q[i : i + 1, :, t - c :], vk, vv, ctx, positions[i : i + 1, t - c :]
                    )
                    a_cross[i : i + 1, :, t - c :], seen[i, t - c :] = out, row_seen[0]
                return gate(a_self, a_cross, seen, self.gate_proj, all_seen=False)
            stacked = visual.stacked(self.layer_idx)
            if stacked is not None:  # small visual contexts: all rows in one call
                a_cross = attend_grouped(q, *stacked)
            for i in visual.with_media if stacked is None else ():
                ctx = visual.rows[i]
                vk, vv = visual_kv(ctx, self.layer_idx, *kv_of)
                a_cross[i : i + 1] = cross_attention(q[i : i + 1], vk, vv, ctx, positions[i : i + 1])[0]
            seen = None if visual.has_media is None else visual.has_media[:, None]  # (B, 1)
            return gate(a_self, a_cross, seen, self.gate_proj, all_seen=seen is None)
        vk, vv = visual_kv(visual, self.layer_idx, *kv_of)
        a_cross, seen = cross_attention(q, vk, vv, visual, positions)
        all_seen = q.shape[2] == 1 and visual.after_prompt and not visual.padded
        return gate(a_self, a_cross, seen, self.gate_proj, all_seen)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int, fused: bool = False) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx, fused)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.dim, cfg.hidden_dim)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        rope: RotaryEmbedding,
        mask: Tensor | None,
        cache: Cache | None,
        visual: VisualContext | RowVisuals | None,
        cos_sin: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        # the layer's own input RMSNorm is shared by text and visual tokens
        x = x + self.self_attn(
            self.input_layernorm(x), positions, rope, mask, cache, visual, self.input_layernorm, cos_sin
        )
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Model(nn.Module):
    def __init__(self, cfg: TextConfig, fused: bool = False) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, fused) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.rms_norm_eps)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        self.gradient_checkpointing = False

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        mask: Tensor | None = None,
        cache: Cache | None = None,
        visual: VisualContext | RowVisuals | None = None,
    ) -> Tensor:
        # x (B, T, D) embeddings -> (B, T, D) final-normed hidden states
        cos_sin = self.rope(positions, x.dtype)  # once per forward, shared by every layer
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(
                    layer, x, positions, self.rope, mask, cache, visual, cos_sin, use_reentrant=False
                )
            else:
                x = layer(x, positions, self.rope, mask, cache, visual, cos_sin)
        return self.norm(x)


class Qwen2ForCausalLM(nn.Module):
    def __init__(self, cfg: TextConfig, fused: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = Qwen2Model(cfg, fused)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
