"""The 7B-241101 family on a tiny checkpoint in its official layout, written by the tests
(tests/helpers_241101.py): family detection and strict loading, the fused hyper attention against its
stated equations, the engine (cached decode, chunked prefill, batching, rows joining a running batch,
media cache, saved memory), the cut and video templates token for token, training and the 241101 save
layout. No official 241101 outputs are at hand, so the model is checked against the equations of
docs/mplug-owl3.md §4 (the fused variant), written out here independently of owl3's code."""

from __future__ import annotations

import json
import shutil

import pytest
import tokenizers
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import owl3
from owl3.checkpoint import load_model, read_config, save_model
from owl3.config import Owl3Config, preset
from owl3.errors import Owl3Error
from owl3.inference.engine import Engine
from owl3.inference.sampling import SamplingParams
from owl3.processing import Processor, choose_grid
from tests.helpers_241101 import FIXTURE, NEW_TOKENS, config_241101, official_names, random_state


def _img(folder, name):
    return Image.open(folder / "images" / name)


def _frames(folder, n=5):
    return [_img(folder, f"f{i}.png") for i in range(n)]


def _run(engine, encs, params):
    out = [[] for _ in encs]
    for ev in engine.generate(encs, params):
        out[ev.request_id].append(ev.token_id)
    return out


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
    from owl3.model import hyper

    model = tiny241101_pipe.model
    g = torch.Generator().manual_seed(9)
    ids = torch.randint(0, 400, (2, 40), generator=g)
    T, D = model.cfg.vision.n_tokens, model.cfg.text.dim
    feats = [torch.randn(2, T, D, generator=g), torch.randn(3, T, D, generator=g)]
    starts = [[3, 30], [0, 17, 18]]
    with torch.no_grad():
        whole = model(ids, visual=model.visual_context(feats, starts))
        monkeypatch.setattr(hyper, "FUSED_MASK_BUDGET", 2 * 3 * (2 * 3 * T + 40))  # blocks of 4 queries
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


# ---------------------------------------------------------------------------------------- the engine
def _requests(pipe, folder):
    return [
        pipe.encode("Tell me a story."),
        pipe.encode(
            "Image 1: <|image|> Image 2: <|image|>. Compare.",
            [_img(folder, "m1.png"), _img(folder, "m2.png")],
        ),
        pipe.encode("What is this?", [_img(folder, "wide.png")]),  # cropped: 5 views
        pipe.encode("<|video|>What happens?", videos=[_frames(folder)]),
    ]


def test_cached_decode_equals_full_forward(tiny241101_pipe, tiny241101_dir):
    pipe = tiny241101_pipe
    for enc in _requests(pipe, tiny241101_dir)[1:]:
        ids = _run(pipe.engine, [enc], SamplingParams(max_new_tokens=10))[0]
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
    enc = _requests(pipe, tiny241101_dir)[2]
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
    encs = _requests(pipe, tiny241101_dir)
    params = SamplingParams(max_new_tokens=12)
    alone = [_run(pipe.engine, [e], params)[0] for e in encs]
    assert _run(pipe.engine, encs, params) == alone
    assert _run(pipe.engine, encs[::-1], params) == alone[::-1]
    # requests join while others decode (small prefill pieces: a join takes several steps)
    eng = Engine(
        pipe.model,
        pipe.processor.stop_token_ids,
        pipe.processor.pad_token_id,
        prefill_chunk=7,
        vision_chunk_size=2,
        max_num_seqs=3,
    )
    got: dict[int, list[int]] = {}
    order = {eng.add_request(encs[1], params): 1}
    for step in range(200):
        if step == 3:
            order[eng.add_request(encs[3], params)] = 3
        if step == 6:
            order[eng.add_request(encs[0], params)] = 0
            order[eng.add_request(encs[2], params)] = 2
        for ev in eng.step():
            got.setdefault(order[ev.request_id], []).append(ev.token_id)
        if not eng.has_unfinished and step > 6:
            break
    assert [got[i] for i in range(4)] == alone


def test_media_cache_and_saved_memory_answer_as_fresh(tiny241101_pipe, tiny241101_dir, tmp_path):
    pipe = tiny241101_pipe
    enc = _requests(pipe, tiny241101_dir)[3]
    params = SamplingParams(max_new_tokens=8)
    first = _run(pipe.engine, [enc], params)[0]
    hits = pipe.engine.media_cache_hits
    assert _run(pipe.engine, [enc], params)[0] == first
    assert pipe.engine.media_cache_hits == hits + enc.pixel_values.shape[0]
    # a saved memory of a video (its template ends after the last frame) and of a cropped image
    for i, (images, videos) in enumerate(
        (([], [_frames(tiny241101_dir)]), ([_img(tiny241101_dir, "wide.png")], []))
    ):
        mem = pipe.watch(images, videos, system="Be brief.")
        loaded = pipe.load_memory(mem.save(tmp_path / f"{i}.owl3"))
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What happens?"}]
        fresh = pipe.generate(messages, images, videos, max_new_tokens=10)
        asked = pipe.ask(loaded, "What happens?", max_new_tokens=10)
        assert asked.token_ids == fresh.token_ids and asked.prompt_tokens == fresh.prompt_tokens


# ---------------------------------------------------------------------------------------- templates
def _expected_ids(tok, text, image_token="<|image|>"):
    """Token ids of a prompt laid out in the official segments, each tokenized on its own, split around
    every image token (docs/mplug-owl3.md §5)."""
    import re

    header = "\n<|im_start|>assistant\n"
    assert text.startswith("<|im_start|>system\n<|im_end|>") and text.endswith(header)
    segments = [
        "<|im_start|>system\n<|im_end|>",
        text[len("<|im_start|>system\n<|im_end|>") : -len(header)],
        header,
    ]
    ids = []
    for seg in segments:
        for piece in re.split(f"({re.escape(image_token)})", seg):
            if piece:
                ids += tok.encode(piece, add_special_tokens=False).ids
    return ids


def _prompt(user):
    return f"<|im_start|>system\n<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def _cut(rows, cols):
    lines = "\n".join(" ".join(["<|image|>"] * cols) for _ in range(rows))
    return f"<|start_cut|>{rows}*{cols}\n{lines}\n<|image|><|end_cut|>"


def test_cropped_images_several_images_and_a_video_match_the_241101_templates(
    tiny241101_pipe, tiny241101_dir
):
    proc = tiny241101_pipe.processor
    tok = proc.tokenizer
    ids = {t: tok.token_to_id(t) for t in NEW_TOKENS}
    wide, tall = _img(tiny241101_dir, "wide.png"), _img(tiny241101_dir, "tall.png")
    gw, gt = choose_grid(*wide.size, 56), choose_grid(*tall.size, 56)
    assert gw != gt  # each image gets its own grid

    # one cropped image
    enc = proc([{"role": "user", "content": "<|image|>Describe."}], images=[wide])
    want = _prompt(f"{_cut(*gw)}Describe.")
    assert enc.prompt == want
    assert enc.input_ids.tolist() == _expected_ids(tok, want)
    assert enc.pixel_values.shape[0] == gw[0] * gw[1] + 1 == len(enc.media_starts)
    first = enc.input_ids.tolist().index(ids["<|start_cut|>"])
    assert enc.input_ids[first + 1 :].tolist().index(proc.image_token_id) > 0  # "{r}*{c}\n" comes first

    # several cropped images, each with its own grid
    enc = proc([{"role": "user", "content": "A <|image|> B <|image|>?"}], images=[wide, tall])
    want = _prompt(f"A {_cut(*gw)} B {_cut(*gt)}?")
    assert enc.prompt == want and enc.input_ids.tolist() == _expected_ids(tok, want)
    assert enc.input_ids.tolist().count(ids["<|end_cut|>"]) == 2

    # a video, and a video with an image in one conversation (no cropping when a video is there)
    enc = proc([{"role": "user", "content": "<|video|>What happens?"}], videos=[_frames(tiny241101_dir)])
    video = "<|start_video_frame|>" + "<|image|>" * 5 + "<|end_video_frame|>"
    want = _prompt(f"{video}What happens?")
    assert enc.prompt == want and enc.input_ids.tolist() == _expected_ids(tok, want)
    s = enc.media_starts
    assert (
        enc.input_ids[s[0] - 1] == ids["<|start_video_frame|>"]
        and enc.input_ids[s[-1] + 1] == ids["<|end_video_frame|>"]
    )
    enc = proc(
        [{"role": "user", "content": "<|image|> and <|video|>"}],
        images=[wide],
        videos=[_frames(tiny241101_dir, 3)],
    )
    video = "<|start_video_frame|>" + "<|image|>" * 3 + "<|end_video_frame|>"
    want = _prompt(f"<|image|> and {video}")
    assert enc.prompt == want and enc.input_ids.tolist() == _expected_ids(tok, want)
    assert enc.pixel_values.shape[0] == 4


def test_240728_processor_keeps_its_own_templates(tiny_pipe, tiny_dir):
    enc = tiny_pipe.processor([{"role": "user", "content": "<|video|>?"}], videos=[_frames(tiny_dir, 2)])
    assert "<|image|><|image|>?" in enc.prompt and "video_frame" not in enc.prompt
    assert tiny_pipe.processor.variant == "240728"


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


# ---------------------------------------------------------------------------------------- training, saving
def test_training_loss_is_the_cross_entropy_of_the_fused_model(tiny241101_pipe, tiny241101_dir, tmp_path):
    import torch.nn.functional as F

    from owl3.training.data import read_data
    from owl3.training.encode import IGNORE, SampleEncoder, collate
    from owl3.training.step import TrainStep
    from tests.train_helpers import IMAGES, write_data

    m = load_model(tiny241101_dir)
    swift, llava = write_data(tmp_path)
    records, _ = read_data([swift, llava], media_root=str(IMAGES))
    enc = SampleEncoder(Processor.from_dir(tiny241101_dir, 56), seq_len=4096, frames=8, crop_prob=1.0, seed=0)
    samples = [enc(r) for r in records[:4]]  # a cropped image, two images, text only, a video
    batch = collate(samples, pad_id=420)
    assert batch.n_media == [7, 2, 0, 5] and "<|start_cut|>" in enc.processor.tokenizer.decode(
        batch.input_ids[0].tolist(), skip_special_tokens=False
    )  # the 241101 templates, and a padded batch with different image counts
    loss = TrainStep(m)(batch.input_ids, batch.labels, batch.pixel_values, batch.n_media, batch.media_starts)
    total, start = 0.0, 0
    for i in range(len(batch)):
        n, k = int(batch.lengths[i]), batch.n_media[i]
        vis = None
        if k:
            vis = m.visual_context(
                [m.encode_media(batch.pixel_values[start : start + k])], [batch.media_starts[i]]
            )
            start += k
        with torch.no_grad():
            logits = m(batch.input_ids[i : i + 1, :n], visual=vis)[0]
        total += F.cross_entropy(
            logits[:-1], batch.labels[i, 1:n], ignore_index=IGNORE, reduction="sum"
        ).item()
    assert loss.item() == pytest.approx(total, rel=1e-5)


def test_training_steps_and_save_load_round_trip_in_the_241101_layout(tiny241101_dir, tmp_path):
    from owl3.training import TrainConfig, train
    from tests.train_helpers import base_options

    opts = base_options(tmp_path, model=str(tiny241101_dir), max_steps=4, lr=2e-3, crop_prob=1.0)
    result = train(TrainConfig.from_dict(opts))
    assert result.step == 4 and all(loss == loss for loss in result.losses)
    out = tmp_path / "out"
    cfg = json.loads((out / "config.json").read_text())
    assert "vision_batch_size" in cfg and read_config(out).variant == "241101"
    with safe_open(out / "model.safetensors", "pt") as f:
        names = set(f.keys())
    want = set(official_names(config_241101())) - {
        "vision_model.post_layernorm.weight",
        "vision_model.post_layernorm.bias",
    }
    assert names == want  # exactly the official 241101 tensor names
    trained = owl3.load(out)
    before = load_model(tiny241101_dir).state_dict()
    after = trained.model.state_dict()
    assert any(not torch.equal(before[n], after[n]) for n in after)  # the steps changed the weights
    # save -> load is exact, and the reloaded model answers as the saved one
    again = owl3.load(save_model(trained.model, tmp_path / "again", copy_from=out))
    assert all(torch.equal(after[n], t) for n, t in again.model.state_dict().items())
    q = dict(images=[tiny241101_dir / "images" / "wide.png"], max_new_tokens=6)
    assert again.generate("What is this?", **q).token_ids == trained.generate("What is this?", **q).token_ids


# ---------------------------------------------------------------------------------------- command line
def test_cli_answers_about_a_cropped_image_and_a_video(tiny241101_dir, tmp_path, capsys):
    import av
    import numpy as np

    from owl3.cli import main

    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(30):
            a = np.full((48, 64, 3), 8 * i, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
        out.mux(stream.encode())
    pipe = owl3.load(tiny241101_dir)
    image = str(tiny241101_dir / "images" / "wide.png")
    for media, kw in (
        (["--image", image], {"images": [image]}),
        (["--video", str(video), "--frames", "4"], {"videos": [str(video)], "frames": 4}),
    ):
        capsys.readouterr()
        rc = main(
            ["generate", "--model", str(tiny241101_dir), *media, "--max-new-tokens", "5", "What is this?"]
        )
        out = capsys.readouterr().out
        assert rc == 0
        want = pipe.generate("What is this?", max_new_tokens=5, **kw).text
        assert out.strip() == want.strip() and want.strip()
    enc = pipe.encode("What is this?", [image])
    assert "<|start_cut|>" in enc.prompt  # the CLI's lone image was cropped with the 241101 template


# ---------------------------------------------------------------------------------------- server
def test_server_answers_a_cropped_image_and_a_video_as_the_python_api(tiny241101_dir, tmp_path):
    openai = pytest.importorskip("openai")
    from owl3.serving.app import create_app
    from owl3.serving.chat import ServeConfig
    from owl3.serving.command import DEFAULT_NAME, make_engine
    from owl3.serving.prepare import Limits
    from tests.serve_helpers import ServerThread, data_url, image_part, write_video

    ref = owl3.load(tiny241101_dir)  # the server's engine belongs to its worker thread: its own copy
    pipe = owl3.load(tiny241101_dir)
    config = ServeConfig(model_name=DEFAULT_NAME, limits=Limits(max_images=8, max_frames=8))
    video = tmp_path / "clip.mp4"
    write_video(video, n_frames=12, size=64)
    wide = _img(tiny241101_dir, "wide.png")
    with ServerThread(create_app(pipe, make_engine(pipe, 4), config)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)

        def ask(content, **kw):
            messages = [{"role": "user", "content": content}]
            return client.chat.completions.create(model=DEFAULT_NAME, messages=messages, max_tokens=6, **kw)

        want = ref.generate("What is this?", images=[wide], max_new_tokens=6)
        content = [image_part(wide), {"type": "text", "text": "What is this?"}]
        r = ask(content)
        assert r.choices[0].message.content == want.text and r.usage.prompt_tokens == want.prompt_tokens
        chunks = list(ask(content, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
        video_part = {"type": "video_url", "video_url": {"url": data_url(video.read_bytes(), "video/mp4")}}
        want = ref.generate("<|video|>\nWhat moves?", videos=[video], frames=4, max_new_tokens=6)
        r = ask([video_part, {"type": "text", "text": "What moves?"}],
                extra_body={"media_io_kwargs": {"video": {"num_frames": 4}}})  # fmt: skip
        assert r.choices[0].message.content == want.text and r.usage.video_frames == 4


# ---------------------------------------------------------------------------------------- benchmarks
def test_benchmarks_run_241101_presets(capsys, tmp_path):
    from owl3.bench.followup import make_pipe
    from owl3.bench.serve import preset_checkpoint
    from owl3.cli import main

    argv = ["bench", "latency", "--preset", "tiny-241101", "--images", "1,2", "--new-tokens", "2",
            "--methods", "owl3,official", "--isolate", "none"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["preset"] == "tiny-241101" and all(r["status"] == "ok" for r in report["results"])
    # the served and the follow-up benchmarks' random 241101 models get the 241101 templates
    served = owl3.load(preset_checkpoint("tiny-241101", tmp_path / "p"))
    assert served.model.cfg.variant == served.processor.variant == "241101"
    assert "<|start_video_frame|>" in served.encode("<|video|>?", videos=[_frames(FIXTURE, 2)]).prompt
    assert make_pipe("tiny-241101", None, "float32", "cpu").processor.variant == "241101"
    assert preset("small-241101").variant == "241101" and preset("small").variant == "240728"


def test_pretrain_and_lora_stages_on_the_241101_layout(tiny241101_dir, tmp_path):
    from owl3.training import TrainConfig, apply_stage, train
    from tests.train_helpers import base_options

    m = load_model(tiny241101_dir)
    apply_stage(m, "pretrain")  # projector (both Linears) and v_kv_proj: there is no gate to train
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {
        f"vision2text_model.{i}.{leaf}" for i in (0, 2) for leaf in ("weight", "bias")
    } | {
        f"language_model.model.layers.{i}.self_attn.v_kv_proj.{leaf}"
        for i in (0, 2)
        for leaf in ("weight", "bias")
    }
    stages = ["pretrain"]
    try:
        import peft  # noqa: F401

        stages.append("lora")
    except ImportError:
        pass
    for stage in stages:
        opts = base_options(tmp_path / stage, model=str(tiny241101_dir), stage=stage, max_steps=2, lora_r=4)
        result = train(TrainConfig.from_dict(opts))
        assert result.step == 2
        pipe = owl3.load(tmp_path / stage / "out")
        assert pipe.model.cfg.variant == "241101"
        assert pipe.generate(
            "What is this?", images=[tiny241101_dir / "images" / "one.png"], max_new_tokens=3
        )


def test_compiled_decode_compiles_once_and_matches_eager(monkeypatch):
    # the fused decode step (rows with their own visual K/V, several image counts) is one graph too
    from torch._dynamo.utils import counters

    from owl3.bench.common import free_token_id, random_images, random_model, synthetic_prompt
    from owl3.inference import engine as engine_mod
    from owl3.processing import Encoding
    from owl3.processing.pixels import images_to_pixels

    cfg = preset("tiny-241101")
    model = random_model(cfg, seed=3)

    def request(n):
        ids, starts = synthetic_prompt(n, free_token_id(cfg), cfg.text.vocab_size, seed=n)
        return [Encoding(ids, images_to_pixels(random_images(n, 64, 48, seed=n), cfg.image_size), starts, "")]

    monkeypatch.setattr(engine_mod, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    counters.clear()
    eager = Engine(model, stop_token_ids=(), pad_token_id=0)
    fast = Engine(model, stop_token_ids=(), pad_token_id=0, compile_decode=True)
    for n, t in ((2, 5), (3, 9), (1, 7)):
        params = SamplingParams(max_new_tokens=t)
        want = [e.token_id for e in eager.generate(request(n), params)]
        assert [e.token_id for e in fast.generate(request(n), params)] == want
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def test_visual_kv_computed_once_per_request(tiny241101_pipe, tiny241101_dir):
    from owl3.bench.latency import StageTimedEngine

    pipe = tiny241101_pipe
    enc = _requests(pipe, tiny241101_dir)[1]
    hyper = [layer.self_attn for layer in pipe.model.language_model.model.layers if layer.self_attn.is_hyper]
    calls = []
    hooks = [a.v_kv_proj.register_forward_hook(lambda *_: calls.append(1)) for a in hyper]
    try:
        engine = Engine(
            pipe.model, pipe.processor.stop_token_ids, pipe.processor.pad_token_id, media_cache_mb=0
        )
        ids = _run(engine, [enc], SamplingParams(max_new_tokens=8))[0]
        assert len(ids) == 8 and len(calls) == len(hyper)  # once per hyper layer, not once per step
        calls.clear()  # the official cost (recomputed at every step) gives the same tokens
        official = StageTimedEngine(
            pipe.model, pipe.processor.stop_token_ids, pipe.processor.pad_token_id, recompute_visual_kv=True
        )
        assert _run(official, [enc], SamplingParams(max_new_tokens=8))[0] == ids
        assert len(calls) == len(hyper) * 8
    finally:
        for h in hooks:
            h.remove()
