"""The 7B-241101 family's model on a tiny checkpoint in its official layout, written by the tests
(tests/helpers_241101.py): family detection and strict loading, the fused hyper attention against its
stated equations, the engine (cached decode, chunked prefill, batching, rows joining a running batch,
media cache, saved memory, compiled decode), the vision tower's chunks. No official 241101 outputs are at
hand, so the model is checked against the equations of docs/mplug-owl3.md §4 (the fused variant), written
out here independently of owl3's code. Its templates, training, CLI, server and benchmarks:
tests/test_241101_use.py."""

from __future__ import annotations

import json
import shutil

import pytest
import tokenizers
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import owl3
from owl3.checkpoint import load_model
from owl3.config import Owl3Config, preset
from owl3.errors import Owl3Error
from owl3.inference.engine import Engine
from owl3.inference.sampling import SamplingParams
from owl3.processing import Processor
from tests.helpers_241101 import (
    FIXTURE,
    config_241101,
    frames,
    img,
    random_state,
    requests,
    run,
)


# ---------------------------------------------------------------------------------------- config, loading
def test_family_is_read_from_config_json():
    cfg = Owl3Config.from_hf(config_241101())
    assert cfg.variant == "241101" and cfg.attention == "fused" and cfg.projector == "mlp2x_gelu"
    assert cfg.vision_batch_size == 3 and cfg.mi_rope_offset == 0
    assert Owl3Config.from_hf(cfg.to_hf()) == cfg  # to_hf writes the field that marks the family
    old = Owl3Config.from_hf(json.loads((FIXTURE / "config.json").read_text()))
    assert old.variant == "240728" and old.mi_rope_offset == 1 and "vision_batch_size" not in old.to_hf()
    big = preset("7b-241101")
    assert (big.variant, big.image_size, big.vision.n_tokens, big.text.hyper_layers, big.text.vocab_size) == (
        "241101",
        378,
        729,
        (7, 15, 23, 26),
        151651,
    )
    with pytest.raises(Owl3Error, match="no released family"):
        Owl3Config(projector="mlp2x_gelu", attention="gated")
    bad = {**config_241101(), "vision_batch_size": 0}
    with pytest.raises(Owl3Error, match="vision_batch_size"):
        Owl3Config.from_hf(bad)


def test_loads_strictly_in_the_official_241101_layout(tiny241101_dir, tiny241101_pipe):
    model = tiny241101_pipe.model
    with safe_open(tiny241101_dir / "model.safetensors", "pt") as f:
        names = set(f.keys())
        state = model.state_dict()
        for name in names - {"vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias"}:
            assert torch.equal(state[name], f.get_tensor(name)), name
    assert {"vision2text_model.0.weight", "vision2text_model.2.weight"} <= names
    assert not any("gate_proj" in n and "mlp" not in n for n in state)  # no gate in the fused family
    assert isinstance(model.vision2text_model, torch.nn.Sequential)
    assert tiny241101_pipe.processor.variant == "241101"


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_mixed_families_are_refused_with_what_disagrees(tiny241101_dir, tmp_path):
    # 241101 weights under a 240728 config.json
    a = _copy(tiny241101_dir, tmp_path / "a")
    d = config_241101()
    d.pop("vision_batch_size")
    (a / "config.json").write_text(json.dumps(d))
    with pytest.raises(Owl3Error, match="240728-family model .* weights have the 241101 projector"):
        load_model(a)
    # a 240728 checkpoint whose config.json says 241101
    b = _copy(FIXTURE, tmp_path / "b")
    (b / "config.json").write_text(json.dumps(config_241101()))
    with pytest.raises(Owl3Error, match="241101-family model .* weights have the 240728 projector"):
        load_model(b)
    # the 241101 model with the 240728 tokenizer, and a tokenizer with only some of the four tokens
    c = _copy(tiny241101_dir, tmp_path / "c")
    shutil.copy2(FIXTURE / "tokenizer.json", c / "tokenizer.json")
    with pytest.raises(Owl3Error, match="241101-family model but its tokenizer lacks"):
        owl3.load(c)
    with pytest.raises(Owl3Error, match="240728-family model but its tokenizer has"):
        Processor.from_dir(tiny241101_dir, 56, "240728")
    tok = tokenizers.Tokenizer.from_file(str(FIXTURE / "tokenizer.json"))
    tok.add_special_tokens(["<|start_cut|>"])
    with pytest.raises(Owl3Error, match="has all four"):
        Processor(tok, 56)
    # a missing gate-free tensor is still named
    e = _copy(tiny241101_dir, tmp_path / "e")
    state = random_state(config_241101())
    state.pop("language_model.model.layers.0.self_attn.v_kv_proj.bias")
    save_file(state, e / "model.safetensors")
    with pytest.raises(Owl3Error, match="missing 1 tensor.*layers.0.self_attn.v_kv_proj.bias"):
        load_model(e)


# ---------------------------------------------------------------------------------------- the fused attention
def _rope(x, pos, theta, d):
    """Rotate-half RoPE written out: x (..., T, d) at integer positions pos (T,)."""
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos.double()[:, None] * inv[None]  # (T, d/2)
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _reference_layer(attn, norm, x, feats, starts, theta):
    """One 241101 hyper layer's attention output, from the stated equations, in float64: queries p see
    text keys j <= p and image k's tokens iff p >= s_k, image keys rotated at position s_k; one softmax
    over both. x (L, D) the layer input, feats (n, T, D) the projected visual features."""
    w = {n: t.double() for n, t in attn.state_dict().items()}
    h = norm(x[None])[0].double()
    vis = norm(feats.reshape(1, -1, feats.shape[-1]))[0].double()  # the layer's own norm, shared
    n_h, n_kv, d = attn.n_heads, attn.n_kv_heads, attn.head_dim
    L, T = x.shape[0], feats.shape[1]
    pos = torch.arange(L)
    q = (h @ w["q_proj.weight"].T + w["q_proj.bias"]).view(L, n_h, d).transpose(0, 1)
    k = (h @ w["k_proj.weight"].T + w["k_proj.bias"]).view(L, n_kv, d).transpose(0, 1)
    v = (h @ w["v_proj.weight"].T + w["v_proj.bias"]).view(L, n_kv, d).transpose(0, 1)
    q, k = _rope(q, pos, theta, d), _rope(k, pos, theta, d)
    kv = (vis @ w["v_kv_proj.weight"].T + w["v_kv_proj.bias"]).view(-1, n_kv, 2, d)  # channel (h*2+j)*d+e
    s_tok = torch.tensor(starts).repeat_interleave(T)  # s_k of every visual token
    vk = _rope(kv[:, :, 0].transpose(0, 1), s_tok, theta, d)  # MI-RoPE at s_k, no +1
    vv = kv[:, :, 1].transpose(0, 1)
    out = torch.empty(L, n_h, d, dtype=torch.float64)
    for head in range(n_h):
        g = head // (n_h // n_kv)
        keys, vals = torch.cat([vk[g], k[g]]), torch.cat([vv[g], v[g]])
        scores = q[head] @ keys.T / d**0.5  # (L, M + L)
        img_ok = pos[:, None] >= s_tok[None, :]
        txt_ok = pos[None, :] <= pos[:, None]
        scores = scores.masked_fill(~torch.cat([img_ok, txt_ok], 1), float("-inf"))
        out[:, head] = scores.softmax(-1) @ vals
    return out.reshape(L, -1) @ w["o_proj.weight"].T


@pytest.mark.parametrize("starts", [[0], [2, 7, 8], [5, 11]])
def test_fused_attention_equals_one_softmax_over_image_and_text_keys(tiny241101_pipe, starts):
    # several images at different positions (two of them adjacent), one at position 0; queries at an
    # image token's own position see that image, queries before the first image get plain self-attention
    model = tiny241101_pipe.model
    layer = next(lyr for lyr in model.language_model.model.layers if lyr.self_attn.is_hyper)
    g = torch.Generator().manual_seed(len(starts))
    L, dim = 14, model.cfg.text.dim
    x = torch.randn(L, dim, generator=g)
    feats = torch.randn(len(starts), model.cfg.vision.n_tokens, dim, generator=g)
    visual = model.visual_context([feats], [starts])
    rope, norm = model.language_model.model.rope, layer.input_layernorm
    pos = torch.arange(L)[None]
    with torch.no_grad():
        got = layer.self_attn(norm(x[None]), pos, rope, None, None, visual, norm)[0]
        plain = layer.self_attn(norm(x[None]), pos, rope, None, None, None, norm)[0]
    ref = _reference_layer(layer.self_attn, norm, x, feats, starts, model.cfg.text.rope_theta)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)
    first = starts[0]
    assert torch.equal(got[:first], plain[:first])  # no image visible yet: self-attention, bit for bit
    assert (got[first] - plain[first]).abs().max() > 1e-3  # the image token itself sees its image


def test_fused_attention_in_query_blocks_is_exact(tiny241101_pipe, monkeypatch):
    # long prompts run the fused softmax in blocks of queries (bounded mask): same numbers as one block
    from owl3.model import fused

    model = tiny241101_pipe.model
    g = torch.Generator().manual_seed(9)
    ids = torch.randint(0, 400, (2, 40), generator=g)
    T, D = model.cfg.vision.n_tokens, model.cfg.text.dim
    feats = [torch.randn(2, T, D, generator=g), torch.randn(3, T, D, generator=g)]
    starts = [[3, 30], [0, 17, 18]]
    with torch.no_grad():
        whole = model(ids, visual=model.visual_context(feats, starts))
        monkeypatch.setattr(fused, "FUSED_MASK_BUDGET", 2 * 3 * (2 * 3 * T + 40))  # blocks of 4 queries
        blocked = model(ids, visual=model.visual_context(feats, starts))
    torch.testing.assert_close(blocked, whole, atol=1e-6, rtol=1e-6)


def test_fused_attention_of_padded_rows_and_a_row_without_images(tiny241101_pipe):
    # a batch: rows with 1 and 2 images (padded visual tokens) and a row with none; each row equals alone
    model = tiny241101_pipe.model
    g = torch.Generator().manual_seed(5)
    T, D = model.cfg.vision.n_tokens, model.cfg.text.dim
    ids = torch.randint(0, 400, (3, 12), generator=g)
    feats = [torch.randn(1, T, D, generator=g), torch.randn(2, T, D, generator=g), None]
    starts = [[4], [1, 6], []]
    with torch.no_grad():
        batch = model(ids, visual=model.visual_context(feats, starts))
        for i in range(3):
            vis = model.visual_context([feats[i]], [starts[i]]) if feats[i] is not None else None
            torch.testing.assert_close(batch[i], model(ids[i : i + 1], visual=vis)[0], atol=1e-5, rtol=1e-5)


def test_fused_decode_of_stacked_rows_equals_each_row_alone():
    """One call for a decode step of three requests (different image and text lengths, one without
    images) gives each row what `fused_attention` gives it alone; the row without images keeps a_self."""
    from owl3.model.fused import fused_attention, fused_decode

    g = torch.Generator().manual_seed(3)
    h, n_kv, d = 4, 2, 8
    n_visual, n_text = [5, 0, 3], [6, 4, 7]
    m, s = max(n_visual), max(n_text)
    q, a_self = torch.randn(3, h, 1, d, generator=g), torch.randn(3, h, 1, d, generator=g)
    k, v = torch.randn(3, n_kv, s, d, generator=g), torch.randn(3, n_kv, s, d, generator=g)
    vk, vv = torch.zeros(3, n_kv, m, d), torch.zeros(3, n_kv, m, d)
    for i, n in enumerate(n_visual):
        vk[i, :, :n], vv[i, :, :n] = torch.randn(2, n_kv, n, d, generator=g)
    text_mask = (torch.arange(s)[None, :] < torch.tensor(n_text)[:, None])[:, None, None]
    visual_mask = (torch.arange(m)[None, :] < torch.tensor(n_visual)[:, None])[:, None, None]
    has_media = torch.tensor([n > 0 for n in n_visual])
    out = fused_decode(a_self, q, k, v, text_mask, vk, vv, visual_mask, has_media)
    for i, (nv, nt) in enumerate(zip(n_visual, n_text, strict=True)):
        if not nv:
            assert torch.equal(out[i], a_self[i])
            continue
        alone, seen = fused_attention(
            q[i : i + 1], k[i : i + 1, :, :nt], v[i : i + 1, :, :nt], None, vk[i : i + 1, :, :nv],
            vv[i : i + 1, :, :nv], torch.zeros(1, nv, dtype=torch.long), torch.tensor([[50]]),
            after_prompt=True,
        )  # fmt: skip
        assert seen.all()
        torch.testing.assert_close(out[i], alone[0], atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------- the engine
def test_cached_decode_equals_full_forward(tiny241101_pipe, tiny241101_dir):
    pipe = tiny241101_pipe
    for enc in requests(pipe, tiny241101_dir)[1:]:
        ids = run(pipe.engine, [enc], SamplingParams(max_new_tokens=10))[0]
        full = torch.cat([enc.input_ids, torch.tensor(ids)])[None]
        with torch.no_grad():
            logits = pipe.model(full, visual=pipe.engine.encode_visual([enc]))[0]
        n = enc.input_ids.shape[0]
        assert logits[n - 1 : n - 1 + len(ids)].argmax(-1).tolist() == ids


def test_chunked_prefill_and_pool_decode_match_full_forward(tiny241101_pipe, tiny241101_dir):
    # prefill in three chunks (one cut right at an image token), decode through the pool beside a
    # text-only row: the full forward's logits, where generated tokens see every image
    from owl3.inference.kv_cache import DecodeView, KVPool, SlotView
    from owl3.model import RowVisuals
    from owl3.model.layers import causal_mask

    pipe = tiny241101_pipe
    model = pipe.model
    enc = requests(pipe, tiny241101_dir)[2]
    n = enc.input_ids.shape[0]
    s0 = enc.media_starts[0]
    visual = pipe.engine.encode_visual([enc])
    pool = KVPool(model.cfg.text, 3, 256, model.dtype, model.device, capacity=8)
    p, logits = 0, []
    with torch.no_grad():
        for c in (s0, 3, n - s0 - 3):  # the second chunk starts at the first image token
            pool.ensure(p + c)
            mask = None if p == 0 else causal_mask(torch.ones(1, p + c, dtype=torch.bool), c)
            out = model(
                enc.input_ids[p : p + c][None],
                torch.arange(p, p + c)[None],
                mask,
                SlotView(pool, 2, p),
                visual,
                True,
            )
            p += c
        logits.append(out[0, -1])
        pool.move(2, 0, n)
        visual.start_decoding()
        other = pipe.encode("Hi")
        m = other.input_ids.shape[0]
        model(other.input_ids[None], None, None, SlotView(pool, 1, 0), None)
        length = torch.tensor([n, m])
        toks = [3, 17, 42]
        for t in toks:
            window = int(length.max()) + 1
            mask = (torch.arange(window)[None, :] <= length[:, None])[:, None, None, :]
            out = model(
                torch.tensor([[t], [5]]),
                length[:, None],
                mask,
                DecodeView(pool, length, window),
                RowVisuals([visual, None]),
            )
            logits.append(out[0, -1])
            length = length + 1
        full = torch.cat([enc.input_ids, torch.tensor(toks)])[None]
        ref = model(full, visual=pipe.engine.encode_visual([enc]))[0, n - 1 :]
    torch.testing.assert_close(torch.stack(logits), ref, atol=1e-5, rtol=1e-5)


def test_batched_equals_alone_and_rows_joining_a_running_batch(tiny241101_pipe, tiny241101_dir):
    pipe = tiny241101_pipe
    encs = requests(pipe, tiny241101_dir)
    params = SamplingParams(max_new_tokens=12)
    alone = [run(pipe.engine, [e], params)[0] for e in encs]
    assert run(pipe.engine, encs, params) == alone
    assert run(pipe.engine, encs[::-1], params) == alone[::-1]
    # requests join while others decode (small prefill pieces: a join takes several steps, during which
    # the running rows keep decoding); three slots for four requests, so the last one waits for a slot
    eng = Engine(
        pipe.model,
        pipe.processor.stop_token_ids,
        pipe.processor.pad_token_id,
        prefill_chunk=16,
        vision_chunk_size=3,
        max_num_seqs=3,
    )
    got: dict[int, list[int]] = {1: []}
    order = {eng.add_request(encs[1], params): 1}
    joined = []
    for _ in range(200):
        n = len(got[1])
        if n == 2 and 3 not in order.values() or n == 5 and 0 not in order.values():
            joined.append(len(eng.running))
            for i in (3,) if n == 2 else (0, 2):
                order[eng.add_request(encs[i], params)] = i
        for ev in eng.step():
            got.setdefault(order[ev.request_id], []).append(ev.token_id)
        if not eng.has_unfinished:
            break
    assert len(joined) == 2 and min(joined) >= 1  # each join found rows decoding
    assert [got[i] for i in range(4)] == alone


def test_media_cache_and_saved_memory_answer_as_fresh(tiny241101_pipe, tiny241101_dir, tmp_path):
    pipe = tiny241101_pipe
    enc = requests(pipe, tiny241101_dir)[3]
    params = SamplingParams(max_new_tokens=8)
    first = run(pipe.engine, [enc], params)[0]
    hits = pipe.engine.media_cache_hits
    assert run(pipe.engine, [enc], params)[0] == first
    assert pipe.engine.media_cache_hits == hits + enc.pixel_values.shape[0]
    # a saved memory of a video (its template ends after the last frame) and of a cropped image
    for i, (images, videos) in enumerate(
        (([], [frames(tiny241101_dir)]), ([img(tiny241101_dir, "wide.png")], []))
    ):
        mem = pipe.watch(images, videos, system="Be brief.")
        loaded = pipe.load_memory(mem.save(tmp_path / f"{i}.owl3"))
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What happens?"}]
        fresh = pipe.generate(messages, images, videos, max_new_tokens=10)
        asked = pipe.ask(loaded, "What happens?", max_new_tokens=10)
        assert asked.token_ids == fresh.token_ids and asked.prompt_tokens == fresh.prompt_tokens


# ---------------------------------------------------------------------------------------- vision tower
def test_vision_tower_runs_in_chunks_of_vision_batch_size(tiny241101_pipe):
    model = tiny241101_pipe.model
    sizes = []
    hook = model.vision_model.register_forward_hook(lambda mod, args, out: sizes.append(args[0].shape[0]))
    try:
        pixels = torch.randn(8, 3, 56, 56)
        with torch.no_grad():
            feats = model.encode_media(pixels)
            alone = torch.cat([model.encode_media(pixels[i : i + 1]) for i in range(8)])
    finally:
        hook.remove()
    assert sizes[:3] == [3, 3, 2]  # vision_batch_size = 3 in its config.json
    torch.testing.assert_close(feats, alone, atol=1e-5, rtol=1e-5)


def test_compiled_decode_compiles_once_and_matches_eager():
    # the fused decode step (rows with their own visual K/V, several image counts) is one graph too
    from torch._dynamo.utils import counters

    from owl3.bench.common import free_token_id, random_images, random_model, synthetic_prompt
    from owl3.processing import Encoding
    from owl3.processing.pixels import images_to_pixels

    cfg = preset("tiny-241101")
    model = random_model(cfg, seed=3)

    def request(n):
        ids, starts = synthetic_prompt(n, free_token_id(cfg), cfg.text.vocab_size, seed=n)
        return [Encoding(ids, images_to_pixels(random_images(n, 64, 48, seed=n), cfg.image_size), starts, "")]

    torch._dynamo.reset()
    counters.clear()
    eager = Engine(model, stop_token_ids=(), pad_token_id=0)
    fast = Engine(model, stop_token_ids=(), pad_token_id=0, compile_decode="eager")
    for n, t in ((2, 5), (3, 9), (1, 7)):
        params = SamplingParams(max_new_tokens=t)
        want = [e.token_id for e in eager.generate(request(n), params)]
        assert [e.token_id for e in fast.generate(request(n), params)] == want
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def test_visual_kv_computed_once_per_request(tiny241101_pipe, tiny241101_dir):
    from owl3.bench.latency import StageTimedEngine

    pipe = tiny241101_pipe
    enc = requests(pipe, tiny241101_dir)[1]
    hyper = [layer.self_attn for layer in pipe.model.language_model.model.layers if layer.self_attn.is_hyper]
    calls = []
    hooks = [a.v_kv_proj.register_forward_hook(lambda *_: calls.append(1)) for a in hyper]
    try:
        engine = Engine(
            pipe.model, pipe.processor.stop_token_ids, pipe.processor.pad_token_id, media_cache_mb=0
        )
        ids = run(engine, [enc], SamplingParams(max_new_tokens=8))[0]
        assert len(ids) == 8 and len(calls) == len(hyper)  # once per hyper layer, not once per step
        calls.clear()  # the official cost (recomputed at every step) gives the same tokens
        official = StageTimedEngine(
            pipe.model, pipe.processor.stop_token_ids, pipe.processor.pad_token_id, recompute_visual_kv=True
        )
        assert run(official, [enc], SamplingParams(max_new_tokens=8))[0] == ids
        assert len(calls) == len(hyper) * 8
    finally:
        for h in hooks:
            h.remove()
