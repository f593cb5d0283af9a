"""Hyper Attention: the visual branch that runs in parallel with self-attention in a hyper layer.

Visual tokens never enter the text sequence. Per request, each hyper layer turns the projected visual
features into keys and values once (shared input RMSNorm -> v_kv_proj -> MI-RoPE on the keys) and keeps
them in `VisualContext.kv`; every later forward of the same request (each decode step) reuses them.
The official code recomputes them at every decode step; the results are identical (`recompute=True`
reproduces that cost for benchmarks).

Two families (docs/faithfulness.md): 240728 runs the visual branch as its own cross-attention and mixes it
into the self-attention output with an adaptive gate (`cross_attention`, `gate`); 241101 has no gate and
does one softmax over [visual keys; text keys] (model/fused.py). Both read the same per-request visual
K/V (`visual_kv`); only the MI-RoPE position of an image (s_k + 1 or s_k) and which queries see it differ
(`Owl3Config.mi_rope_offset`).

This file holds the math of the visual branch only; the decoder layer wires it in (model/text.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from owl3.model.layers import RotaryEmbedding, Rotate, attend_grouped, repeat_kv

# key_starts value of a padding visual token: larger than any query position, so never visible
NEVER = 2**62
# visual tokens per chunk when computing the visual K/V (bounds the fp32 temporaries of norm and RoPE)
KV_CHUNK = 1 << 16
# most elements of one prefill cross-attention mask block (mask rows x visual tokens)
MASK_BUDGET = 1 << 30
# most queries per prefill block: smaller blocks skip more of the visual tokens that no query of theirs sees
QUERY_BLOCK = 512
# most bytes of visual K/V repeated per query head in a prefill (beyond it heads are grouped, not copied)
REPEAT_KV_BUDGET = 8 << 30
# most elements of the explicit part of one split block (query rows x visual tokens in the block)
SPLIT_BUDGET = 1 << 24
# most bytes of one hyper layer's padded visual K/V that a decode step's rows share in one attention call
STACK_BYTES = 32 << 20


@dataclass
class VisualContext:
    """The visual side of one batch of requests.

    features:   (B, M, D) projected visual tokens, images of a sample concatenated, right-padded
    key_starts: (B, M) int64, s_k of the image each token belongs to (NEVER for padding). Query
                position p sees the token iff s_k < p (gated variant; strict) or s_k <= p (fused)
    positions:  (B, M) int64, MI-RoPE position of each token: s_k + 1 (gated variant) or s_k (fused)
    kv:         per hyper layer, the rotated keys and the values (B, kv_heads, M, d), filled lazily
    recompute:  recompute kv at every forward, as the official code does (benchmarks only)
    padded:     some row has padding visual tokens (rows with different image counts)
    after_prompt: set by the engine once the prompts are in the cache: every later query lies after every
                image of its row, so the s_k < p mask is all-true on real visual tokens and is skipped
    split_prefill: an inference prefill splits each query block's keys into the prefix every query of the
                block sees (fused kernel, no mask) and the few images inside the block (masked, explicit);
                see `_split_prefill`. None: on CUDA only (on CPU the masked kernel is as fast per operation,
                and the explicit part is slower); True/False forces it (the engine's `split_prefill`)
    """

    features: Tensor
    key_starts: Tensor
    positions: Tensor
    kv: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    recompute: bool = False
    padded: bool = False
    after_prompt: bool = False
    split_prefill: bool | None = None
    decode_mask: tuple[Tensor, Tensor | None] | None = None  # (seen, mask) of decode steps, made once
    # the split prefill's (positions, visible counts (B, L), blocks per row) of the current forward, made
    # by its first hyper layer and reused by the others (they see the same positions tensor)
    split_plan: tuple[Tensor, Tensor, list[list[tuple[int, int, int, int]]]] | None = None

    @staticmethod
    def layout(
        starts: list[int], tokens_per_image: int, device: torch.device, offset: int = 1
    ) -> tuple[Tensor, Tensor]:
        """One sample's (key_starts, positions) per visual token: image k's tokens start at s_k (their image
        token) and sit at MI-RoPE position s_k + offset."""
        s_t = torch.tensor(starts, dtype=torch.long, device=device).repeat_interleave(tokens_per_image)
        return s_t, s_t + offset

    @classmethod
    def build(cls, features: list[Tensor | None], starts: list[list[int]], offset: int = 1) -> VisualContext:
        """Pack per-sample features (n_img, T, D) and image-token indices s_k into a padded batch."""
        ref = next(f for f in features if f is not None)
        t, d = ref.shape[1], ref.shape[2]
        if len(features) == 1:  # one sample: its features as they are, no padded copy
            if ref.shape[0] != len(starts[0]):
                raise ValueError(f"sample 0: {ref.shape[0]} images but {len(starts[0])} image tokens")
            s_t, pos = cls.layout(starts[0], t, ref.device, offset)
            return cls(ref.reshape(1, -1, d), s_t[None], pos[None])
        m = max((0 if f is None else f.shape[0] * t) for f in features)
        b = len(features)
        feats = ref.new_zeros(b, m, d)
        key_starts = torch.full((b, m), NEVER, dtype=torch.long, device=ref.device)
        positions = torch.zeros((b, m), dtype=torch.long, device=ref.device)
        for i, (f, s) in enumerate(zip(features, starts, strict=True)):
            if f is None or f.shape[0] == 0:
                continue
            if f.shape[0] != len(s):
                raise ValueError(f"sample {i}: {f.shape[0]} images but {len(s)} image tokens")
            n = f.shape[0] * t
            feats[i, :n] = f.reshape(n, d)
            key_starts[i, :n], positions[i, :n] = cls.layout(s, t, ref.device, offset)
        padded = any((0 if f is None else f.shape[0] * t) < m for f in features)
        return cls(feats, key_starts, positions, padded=padded)

    @classmethod
    def from_kv(
        cls, kv: dict[int, tuple[Tensor, Tensor]], starts: list[int], tokens_per_image: int, offset: int = 1
    ) -> VisualContext:
        """One sample whose visual K/V are already computed (e.g. loaded from a saved memory)."""
        k0 = next(iter(kv.values()))[0]  # (1, kv, M, d)
        s_t, pos = cls.layout(starts, tokens_per_image, k0.device, offset)
        feats = k0.new_zeros(1, s_t.shape[0], 0)  # never read: every hyper layer's K/V is given
        return cls(feats, s_t[None], pos[None], kv=dict(kv))

    @property
    def n_tokens(self) -> int:
        return self.features.shape[1]

    def make_decode_mask(self) -> tuple[Tensor, Tensor | None]:
        """(seen (B, 1), mask (B, 1, 1, M) or None) of every query after the prompt."""
        valid = self.key_starts < NEVER  # (B, M)
        seen = valid.any(-1, keepdim=True)  # (B, 1)
        return seen, (valid | ~seen)[:, None, None, :] if self.padded else None

    def start_decoding(self) -> None:
        """Called once the prompts are in the cache: later queries lie after all images of their row."""
        self.after_prompt = True
        self.decode_mask = self.make_decode_mask()  # the same at every step; made outside compiled code


@dataclass
class RowVisuals:
    """The visual side of a forward whose rows are separate requests, each with its own `VisualContext`
    (K/V computed) or None (a text-only row, which skips the cross branch). Rows keep their own visual
    tokens: none is padded to the longest.

    A decode step (`after_prompt`): one query per row, after all of its images. A batch of prefill pieces
    (`after_prompt` False): row i's real queries are its last `counts[i]` columns (rows are left-padded),
    and only those go through its cross branch, masked by its own image positions."""

    rows: list[VisualContext | None]
    device: torch.device | str = "cpu"
    after_prompt: bool = True
    counts: list[int] | None = None  # prefill: real (last) columns of each row

    def __post_init__(self) -> None:
        self.with_media = [i for i, r in enumerate(self.rows) if r is not None]
        # (B,) which rows take the gated cross branch; None when every row does
        flags = [r is not None for r in self.rows]
        self.has_media = None if all(flags) else torch.tensor(flags, device=self.device)
        self._stacked: dict[int, tuple[Tensor, Tensor, Tensor | None] | None] = {}

    def prepare(self, layers: list[int]) -> None:
        """Decode steps: right-pad every row's visual K/V of each hyper layer in `layers` into (B, kv, M, d)
        keys and values, with the key mask (B, 1, 1, M) (None without padding; a row without media sees
        zeros, which its gate never uses). Called once per batch, outside the (compiled) decode step. So
        small visual contexts (many rows, few images: per-call overhead, not bandwidth, is what costs)
        take one attention call per layer; a layer past STACK_BYTES, or a batch where some row's K/V are
        recomputed at every step, is attended row by row on each row's own K/V (no copy)."""
        self._stacked = {i: self._stack(i) for i in layers}

    def stacked(self, layer_idx: int) -> tuple[Tensor, Tensor, Tensor | None] | None:
        """Layer `layer_idx`'s padded K/V, key mask from `prepare`, or None (rows one by one)."""
        return self._stacked.get(layer_idx)

    def _stack(self, layer_idx: int) -> tuple[Tensor, Tensor, Tensor | None] | None:
        kvs = [None if r is None else r.kv.get(layer_idx) for r in self.rows]
        own = [r.recompute or r.padded or kv is None for r, kv in zip(self.rows, kvs, strict=True) if r]
        if not self.after_prompt or any(own):
            return None
        ref = next(kv[0] for kv in kvs if kv is not None)  # (1, kv, M_i, d)
        b, n_kv, d = len(kvs), ref.shape[1], ref.shape[3]
        m = max(kv[0].shape[2] for kv in kvs if kv is not None)
        if 2 * b * n_kv * m * d * ref.element_size() > STACK_BYTES:
            return None
        k, v = ref.new_zeros(b, n_kv, m, d), ref.new_zeros(b, n_kv, m, d)
        mask = torch.ones(b, 1, 1, m, dtype=torch.bool, device=ref.device)
        for i, kv in enumerate(kvs):
            if kv is not None:
                n = kv[0].shape[2]
                k[i, :, :n], v[i, :, :n] = kv[0][0], kv[1][0]
                mask[i, ..., n:] = False
        return k, v, None if bool(mask.all()) else mask


# MI-RoPE of the visual keys for callers outside a layer; a layer passes its own `rotate_visual`, which
# forward hooks can read (model/capture.py)
ROTATE_VISUAL = Rotate(float32=True)


def visual_kv(
    ctx: VisualContext,
    layer_idx: int,
    norm: nn.Module,
    v_kv_proj: nn.Linear,
    rope: RotaryEmbedding,
    n_kv_heads: int,
    head_dim: int,
    rotate: Rotate = ROTATE_VISUAL,
) -> tuple[Tensor, Tensor]:
    """Rotated visual keys and values of one hyper layer, computed once per request."""
    if not ctx.recompute and layer_idx in ctx.kv:
        return ctx.kv[layer_idx]
    k, v = project_kv_chunked(
        ctx.features, ctx.positions, norm, v_kv_proj, rope, n_kv_heads, head_dim, rotate=rotate
    )
    if not ctx.recompute:
        ctx.kv[layer_idx] = (k.contiguous(), v.contiguous())
    return k, v


def project_kv_chunked(
    features: Tensor,
    positions: Tensor,
    norm: nn.Module,
    v_kv_proj: nn.Linear,
    rope: RotaryEmbedding,
    n_kv_heads: int,
    head_dim: int,
    out: tuple[Tensor, Tensor] | None = None,
    at: int = 0,
    rotate: Rotate = ROTATE_VISUAL,
) -> tuple[Tensor, Tensor]:
    """`project_kv` in chunks of KV_CHUNK tokens, so the float32 norm and RoPE temporaries stay bounded
    for thousands of images. With `out` (K, V buffers (B, kv, N, d)) the result is written into them
    from token `at` on; without, a single chunk is returned as computed and longer inputs get new buffers."""
    b, m, _ = features.shape
    if out is None:
        if m <= KV_CHUNK:
            return project_kv(features, positions, norm, v_kv_proj, rope, n_kv_heads, head_dim, rotate)
        out = (features.new_empty(b, n_kv_heads, m, head_dim), features.new_empty(b, n_kv_heads, m, head_dim))
    k, v = out
    for i in range(0, m, KV_CHUNK):
        j = min(m, i + KV_CHUNK)
        k[:, :, at + i : at + j], v[:, :, at + i : at + j] = project_kv(
            features[:, i:j], positions[:, i:j], norm, v_kv_proj, rope, n_kv_heads, head_dim, rotate
        )
    return k, v


def project_kv(
    features: Tensor,
    positions: Tensor,
    norm: nn.Module,
    v_kv_proj: nn.Linear,
    rope: RotaryEmbedding,
    n_kv_heads: int,
    head_dim: int,
    rotate: Rotate = ROTATE_VISUAL,
) -> tuple[Tensor, Tensor]:
    return split_visual_kv(v_kv_proj(norm(features)), positions, rope, n_kv_heads, head_dim, rotate)


def split_visual_kv(
    kv: Tensor,
    positions: Tensor,
    rope: RotaryEmbedding,
    n_kv_heads: int,
    head_dim: int,
    rotate: Rotate = ROTATE_VISUAL,
) -> tuple[Tensor, Tensor]:
    """v_kv_proj's output (B, M, kv * 2 * d), channel (h * 2 + j) * d + e -> the rotated keys and the
    values (B, kv, M, d). MI-RoPE: every token of image k rotated by one position, in float32."""
    b, m, _ = kv.shape
    kv = kv.view(b, m, n_kv_heads, 2, head_dim).permute(3, 0, 2, 1, 4)  # (2, B, kv, M, d)
    k, v = kv[0], kv[1]
    cos, sin = rope(positions, torch.float32)
    return rotate(cos, sin, k)[0], v


def cross_attention(
    q: Tensor, k: Tensor, v: Tensor, ctx: VisualContext, positions: Tensor
) -> tuple[Tensor, Tensor]:
    """Text queries over visual keys.

    q (B, H, L, d) already rotated; k, v (B, kv, M, d); positions (B, L).
    Returns the attention output (B, H, L, d) and `seen` (B, L): whether each query saw any image.
    Decode steps group the query heads by kv head instead of copying k/v n_rep times. The prefill runs in
    blocks of queries whose mask stays under MASK_BUDGET elements, each reading only the visual tokens
    that some query of the block can see.
    """
    key_starts = ctx.key_starts
    b, h, n_q, d = q.shape
    n_kv, m = k.shape[1], k.shape[2]
    n_rep = h // n_kv
    if n_q == 1 and ctx.after_prompt:
        # decode: every real visual token is visible, so no mask is built unless rows are padded
        seen, mask = ctx.decode_mask if ctx.decode_mask is not None else ctx.make_decode_mask()
        if ctx.recompute:
            # the official path (benchmarks): having recomputed the visual K/V, it GQA-repeats them per
            # query head at every step (docs/mplug-owl3.md §4, step 5)
            k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), seen
        return attend_grouped(q, k, v, mask), seen
    split = q.device.type == "cuda" if ctx.split_prefill is None else ctx.split_prefill
    if split and not torch.is_grad_enabled() and _lse_kernel_ok(q.device, q.dtype):
        if ctx.split_plan is None or ctx.split_plan[0] is not positions:
            counts = torch.searchsorted(key_starts, positions)  # (B, L) visual tokens each query sees
            ctx.split_plan = (positions, counts, [_split_blocks(c, n_rep) for c in counts.tolist()])
        _, counts, blocks = ctx.split_plan
        rows = [
            _split_prefill(
                q[i : i + 1], k[i : i + 1], v[i : i + 1], key_starts[i], positions[i], counts[i], blocks[i]
            )
            for i in range(b)
        ]
        return torch.cat([r[0] for r in rows]), torch.stack([r[1] for r in rows])
    # with room for it, the K/V are repeated per query head once per layer so that each block is one
    # kernel over all H heads (the most parallel work per launch); past REPEAT_KV_BUDGET (thousands of
    # images) the query heads of a kv head are laid along the query axis instead, and nothing is copied
    expand = n_rep > 1 and 2 * b * h * m * d * k.element_size() <= REPEAT_KV_BUDGET
    if expand:
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, M, d)
    rows = 1 if expand or n_rep == 1 else n_rep  # mask rows per query
    block = max(1, min(QUERY_BLOCK, MASK_BUDGET // max(1, rows * m)))
    outs, seens = [], []
    for i in range(0, n_q, block):
        qb, pos = q[:, :, i : i + block], positions[:, i : i + block]
        lb = qb.shape[2]
        # a row's images are in token order, so what any query of the block sees is a prefix of the visual
        # tokens: the keys past it are masked for every query and are not read at all
        # (at least one: a block before every image still runs, its output discarded by the gate, so that
        # the visual branch stays in the autograd graph of a training step)
        mv = max(1, int((key_starts < pos.amax(1, keepdim=True)).sum(-1).max()))
        mask = key_starts[:, None, :mv] < pos[:, :, None]  # (B, lb, mv)
        seen = mask.any(-1)  # (B, lb)
        # a row that sees nothing would softmax over -inf; let it see everything and discard it later
        mask = mask | ~seen[..., None]
        if rows == 1:
            out = F.scaled_dot_product_attention(qb, k[:, :, :mv], v[:, :, :mv], attn_mask=mask[:, None])
        else:
            # heads g*n_rep + r of kv head g become rows r*lb + p of that kv head's queries
            qg = qb.reshape(b, n_kv, n_rep * lb, d)
            mg = mask[:, None].expand(b, n_rep, lb, mv).reshape(b, 1, n_rep * lb, mv)
            out = F.scaled_dot_product_attention(qg, k[:, :, :mv], v[:, :, :mv], attn_mask=mg)
        outs.append(out.reshape(b, h, lb, d))
        seens.append(seen)
    if len(outs) == 1:
        return outs[0], seens[0]
    return torch.cat(outs, dim=2), torch.cat(seens, dim=1)


def _split_prefill(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_starts: Tensor,
    positions: Tensor,
    counts: Tensor,
    bounds: list[tuple[int, int, int, int]],
) -> tuple[Tensor, Tensor]:
    """One row's prefill cross-attention without a mask over the visual tokens that every query sees.

    q (1, H, L, d); k, v (1, kv, M, d); key_starts (M,) ascending (padding NEVER last); positions (L,)
    ascending. Query p sees the first count(p) = #{s_k < p} visual tokens, a count that grows along the
    queries. Queries are cut into blocks; in a block [i, j) every query sees tokens [0, a) with
    a = count(p_i), and tokens [a, c) (the images that start inside the block) only partly. The first part
    runs through a fused kernel with no mask, the second explicitly with its small mask, and the two are
    merged by their log-sum-exps: exact, and no mask ever spans the many images before a block (the cost of
    the masked path at thousands of images). Query heads sharing a kv head are laid along the query axis,
    so nothing is copied per head. `counts` (L,) and `bounds` (`_split_blocks`) are the row's plan.
    Returns (1, H, L, d) and seen (L,).
    """
    _, h, n_q, d = q.shape
    n_kv = k.shape[1]
    n_rep = h // n_kv
    scale = d**-0.5
    out = q.new_zeros(1, h, n_q, d)
    for i, j, a, c in bounds:
        lb = j - i
        qg = q[:, :, i:j].reshape(1, n_kv, n_rep * lb, d)  # head g*n_rep + r, query p -> row r*lb + p
        parts = []
        if a > 0:
            parts.append(_attention_with_lse(qg, k[:, :, :a], v[:, :, :a], scale))
        if c > a:
            s = torch.matmul(qg.float(), k[:, :, a:c].float().transpose(-1, -2)) * scale  # (1, kv, R, c-a)
            hidden = key_starts[None, a:c] >= positions[i:j, None]  # (lb, c-a): images after the query
            # rows r*lb + p: one (lb, c-a) mask broadcast over the n_rep head groups, not copied per group
            s = s.view(1, n_kv, n_rep, lb, c - a).masked_fill(hidden, float("-inf")).view_as(s)
            lse = torch.logsumexp(s, -1)  # -inf where a query sees none of these tokens
            p = torch.exp(s - lse.nan_to_num(neginf=0.0)[..., None])  # exp(-inf) = 0 on unseen rows
            parts.append((torch.matmul(p, v[:, :, a:c].float()), lse))
        if not parts:
            continue  # no query of the block sees an image: zeros, discarded by the gate
        if len(parts) == 1:
            o = parts[0][0]
        else:
            (o1, l1), (o2, l2) = parts
            both = torch.logaddexp(l1, l2)
            o = o1.float() * torch.exp(l1 - both)[..., None] + o2 * torch.exp(l2 - both)[..., None]
        out[:, :, i:j] = o.to(q.dtype).reshape(1, h, lb, d)
    return out, counts > 0


def _split_blocks(counts: list[int], n_rep: int) -> list[tuple[int, int, int, int]]:
    """Cut queries with non-decreasing visible counts into blocks (i, j, a, c): at most QUERY_BLOCK
    queries, and an explicit part (rows x (c - a)) under SPLIT_BUDGET unless a single query needs more."""
    blocks, i, n = [], 0, len(counts)
    while i < n:
        a, j = counts[i], i + 1
        while j < n and j - i < QUERY_BLOCK and n_rep * (j + 1 - i) * (counts[j] - a) <= SPLIT_BUDGET:
            j += 1
        blocks.append((i, j, a, counts[j - 1]))
        i = j
    return blocks


def _attention_with_lse(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Unmasked attention through a fused kernel that also returns each query's log-sum-exp (float32).

    These are the kernels behind F.scaled_dot_product_attention (and behind PyTorch's own ring attention,
    which merges blocks the same way); the public function does not return the log-sum-exp.
    """
    if q.device.type == "cuda":
        if q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] % 8 == 0 and q.shape[-1] <= 256:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
                q, k, v, 0.0, False, False, scale=scale
            )[:2]
        else:
            out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
                q, k, v, None, True, 0.0, False, scale=scale
            )[:2]
        return out, lse[..., : q.shape[2]].float()  # the memory-efficient kernel pads its log-sum-exp
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, False, attn_mask=None, scale=scale
    )
    return out, lse.float()


_LSE_OK: dict[tuple[str, torch.dtype], bool] = {}


def _lse_kernel_ok(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `_attention_with_lse` runs here and agrees with an explicit computation (checked once per
    device type and dtype on a small problem); if not, the prefill keeps the masked path."""
    key = (device.type, dtype)
    if key not in _LSE_OK:
        try:
            g = torch.Generator(device="cpu").manual_seed(0)
            q, k, v = (torch.randn(1, 2, n, 64, generator=g).to(device, dtype) for n in (40, 72, 72))
            out, lse = _attention_with_lse(q, k, v, 0.125)
            s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * 0.125
            ref_out = torch.matmul(s.softmax(-1), v.float())
            tol = 1e-4 if dtype == torch.float32 else 3e-2
            _LSE_OK[key] = bool(
                torch.allclose(lse, s.logsumexp(-1), atol=tol, rtol=tol)
                and torch.allclose(out.float(), ref_out, atol=tol, rtol=tol)
            )
        except (RuntimeError, AttributeError, NotImplementedError):
            _LSE_OK[key] = False
    return _LSE_OK[key]


def gate(
    a_self: Tensor, a_cross: Tensor, seen: Tensor | None, gate_proj: nn.Module, all_seen: bool = False
) -> Tensor:
    """Adaptive gate, one Linear(d, d) shared by all heads.

    a_self, a_cross (B, H, L, d); seen (B, L). Rows that saw no image keep a_self, ungated.
    `all_seen` (known without looking at `seen`: decode steps of unpadded rows) skips the selection.
    """
    g = gate_proj(a_self)  # sigmoid inside gate_proj
    mixed = a_self * (1 - g) + a_cross * g
    if all_seen:
        return mixed
    return torch.where(seen[:, None, :, None], mixed, a_self)
