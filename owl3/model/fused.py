"""The 241101 family's hyper attention: one softmax over [visual keys; text keys] per query, no gate.

The visual K/V are the same per-request ones as the 240728 family's (model/hyper.py `visual_kv`: shared
input RMSNorm -> v_kv_proj -> MI-RoPE, here at s_k instead of s_k + 1); what differs is the attention:
each query that sees an image attends its visible visual tokens and its text keys in one softmax, which
the model computes as the official formula itself (one SDPA over the joined keys with the joined mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from owl3.model.hyper import QUERY_BLOCK
from owl3.model.layers import attend_grouped

# most elements of one fused-attention mask block (query rows of all heads of a kv head x all keys); a
# CUDA kernel may hold it as a float bias, so it stays well under MASK_BUDGET
FUSED_MASK_BUDGET = 1 << 27


def fused_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    text_mask: Tensor | None,
    vk: Tensor,
    vv: Tensor,
    key_starts: Tensor,
    positions: Tensor,
    after_prompt: bool = False,
) -> tuple[Tensor, Tensor]:
    """241101 fused hyper attention: one softmax over [visual keys; text keys] per query.

    q (B, H, L, d) rotated queries; k, v (B, kv, S, d) the text keys/values the layer's self-attention
    read (cache included); text_mask: what that self-attention used, None (causal, top-left aligned like
    SDPA's is_causal; every key for a single query) or bool broadcastable to (B, 1, L, S); vk, vv
    (B, kv, M, d) the visual K/V (MI-RoPE at s_k); key_starts (B, M); positions (B, L).
    Query p sees visual token k iff s_k <= p (its own image token included; during generation every
    image lies before the query). Returns the attention output (B, H, L, d) and `seen` (B, L): whether
    the query saw any image; a query that saw none must keep plain self-attention (the caller selects).
    `after_prompt` (decode steps): every real visual token is visible, so nothing is counted on the host.

    This is the official formula itself: one SDPA over the concatenated keys with the joined mask, so it
    is exact and differentiable. The visual K/V are joined to the text ones once per forward (a copy of
    the visible visual tokens, small next to the attention over them); queries run in blocks whose mask
    stays under FUSED_MASK_BUDGET elements; the query heads of a kv head are laid along the query axis,
    so no K/V is repeated per head.
    """
    b, h, n_q, d = q.shape
    n_kv, s = k.shape[1], k.shape[2]
    n_rep = h // n_kv
    # a row's images are in token order (padding NEVER last): what any query sees is a prefix of the visual
    # tokens; at least one is joined so that a training step's graph always holds the visual branch
    if after_prompt:
        mv = vk.shape[2]
    else:
        mv = max(1, int((key_starts <= positions.amax(1, keepdim=True)).sum(-1).max()))
    k_all = torch.cat([vk[:, :, :mv].to(k.dtype), k], dim=2)  # (B, kv, mv + S, d)
    v_all = torch.cat([vv[:, :, :mv].to(v.dtype), v], dim=2)
    n_keys = mv + s
    block = max(1, min(QUERY_BLOCK, FUSED_MASK_BUDGET // max(1, n_rep * n_keys)))
    outs, seens = [], []
    for i in range(0, n_q, block):
        j = min(n_q, i + block)
        lb = j - i
        pos = positions[:, i:j]
        visible = key_starts[:, None, :mv] <= pos[:, :, None]  # (B, lb, mv)
        if text_mask is None:
            q_idx = torch.arange(i, j, device=q.device)[:, None]
            causal = torch.arange(s, device=q.device)[None, :] <= q_idx if n_q > 1 else q_idx.new_ones(1, s)
            tmask = causal.bool()[None].expand(b, lb, s)
        else:
            tmask = text_mask[:, 0, i:j].expand(b, lb, s)
        mask = torch.cat([visible, tmask], dim=2)  # (B, lb, mv + S)
        qg = q[:, :, i:j].reshape(b, n_kv, n_rep * lb, d)  # head g*n_rep + r, query p -> row r*lb + p
        mg = mask[:, None, None].expand(b, 1, n_rep, lb, n_keys).reshape(b, 1, n_rep * lb, n_keys)
        out = F.scaled_dot_product_attention(qg, k_all, v_all, attn_mask=mg)
        outs.append(out.reshape(b, h, lb, d))
        seens.append(visible.any(-1))
    if len(outs) == 1:
        return outs[0], seens[0]
    return torch.cat(outs, dim=2), torch.cat(seens, dim=1)


def fused_decode(
    a_self: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    text_mask: Tensor | None,
    vk: Tensor,
    vv: Tensor,
    visual_mask: Tensor | None,
    has_media: Tensor | None,
) -> Tensor:
    """A 241101 decode step over rows of separate requests, all in one call: each row's query attends one
    softmax over [its visual keys; its text keys] (`fused_attention` after the prompt, for every row at
    once). q, a_self (B, H, 1, d); k, v (B, kv, S, d) and text_mask (B, 1, 1, S) or None: the text side;
    vk, vv (B, kv, M, d) and visual_mask (B, 1, 1, M) or None: the rows' visual K/V right-padded
    (`RowVisuals.prepare`); has_media (B,) or None (every row): rows without media keep `a_self`."""
    keys, values = torch.cat([vk.to(k.dtype), k], dim=2), torch.cat([vv.to(v.dtype), v], dim=2)
    mask = None
    if visual_mask is not None or text_mask is not None:
        b, m, s = q.shape[0], vk.shape[2], k.shape[2]
        vm = visual_mask if visual_mask is not None else q.new_ones(b, 1, 1, m, dtype=torch.bool)
        tm = text_mask if text_mask is not None else q.new_ones(b, 1, 1, s, dtype=torch.bool)
        mask = torch.cat([vm.expand(b, 1, 1, m), tm.expand(b, 1, 1, s)], dim=3)
    out = attend_grouped(q, keys, values, mask)
    return out if has_media is None else torch.where(has_media[:, None, None, None], out, a_self)
