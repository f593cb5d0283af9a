"""The attention share (`attribution=True`): exact cross-attention probabilities rebuilt from hooks that
are gone afterwards, one share per image and per video frame, the answer unchanged, and on the demo model
the largest share on the image a question names."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from owl3 import cli
from owl3.demo.synthetic import SyntheticTask
from owl3.demo.world import random_scene, render
from owl3.errors import Owl3Error
from owl3.inference.attribution import hyper_layers, view_mass
from owl3.model.capture import Readout, cross_scores
from owl3.model.hyper import cross_attention
from owl3.model.layers import repeat_kv


def _pictures(n, seed=0):
    rng = random.Random(seed)
    return [render(random_scene(rng)) for _ in range(n)]


def _no_hooks(model):
    return all(not m._forward_hooks for m in model.modules())


def test_shares_add_up_and_the_answer_is_unchanged(tiny_pipe):
    prompt = "Image 1: <|image|> Image 2: <|image|> Image 3: <|image|>. In Image 2, what is there?"
    plain = tiny_pipe.generate(prompt, _pictures(3), max_new_tokens=6)
    out = tiny_pipe.generate(prompt, _pictures(3), attribution=True, max_new_tokens=6)
    assert out.token_ids == plain.token_ids and plain.shares is None
    assert [(s.kind, s.index, s.frame) for s in out.shares] == [("image", i, None) for i in range(3)]
    assert sum(s.share for s in out.shares) == pytest.approx(1.0)
    assert all(s.share > 0 for s in out.shares)
    layers = hyper_layers(tiny_pipe.model)
    for layer in layers:  # the share within each hyper layer alone adds up to 1 too
        assert sum(s.by_layer[layer] for s in out.shares) == pytest.approx(1.0)
    assert _no_hooks(tiny_pipe.model)
    # chat returns the Completion (its str is the text) when attribution is asked for
    answer = tiny_pipe.chat(prompt, _pictures(3), attribution=True, max_new_tokens=6)
    assert str(answer) == plain.text and len(answer.shares) == 3


def test_video_frames_and_cropped_views(tiny_pipe):
    frames = _pictures(3, seed=1)
    out = tiny_pipe.generate(
        "<|image|> <|video|> What changed?", [_pictures(1)[0]], [frames], attribution=True, max_new_tokens=4
    )
    labels = ["image 1", "video 1 frame 1", "video 1 frame 2", "video 1 frame 3"]
    assert [s.label for s in out.shares] == labels
    # a lone image is cropped (a grid plus a global view): its views count as one image
    big = Image.new("RGB", (900, 300), (40, 90, 200))
    one = tiny_pipe.generate("What is this?", [big], attribution=True, max_new_tokens=3)
    assert len(one.shares) == 1 and one.shares[0].share == pytest.approx(1.0)


def test_rebuilt_probabilities_are_the_models(tiny_pipe):
    """p @ V from the captured queries equals the model's own cross-attention output at every query."""
    pipe, model = tiny_pipe, tiny_pipe.model
    enc = pipe.encode("Image 1: <|image|> Image 2: <|image|>. Which is brighter?", _pictures(2), cut=False)
    ctx = pipe.engine.encode_visual([enc])
    ids = enc.input_ids[None]
    positions = torch.arange(ids.shape[1])[None]
    layers = hyper_layers(model)
    taps = Readout(model.language_model.model, {i: {"rotate", "gate_proj"} for i in layers})
    with torch.inference_mode(), taps.capture():
        model(ids, positions, visual=ctx)
    assert _no_hooks(model)
    after = positions[0] > enc.media_starts[0]  # queries that see an image
    for i in layers:
        q = taps.queries(i)
        k, v = ctx.kv[i]
        p = cross_scores(q, k, ctx.key_starts, positions).softmax(-1)[:, :, after]  # (1, H, n, M)
        mine = p @ repeat_kv(v, q.shape[1] // k.shape[1])
        ref, seen = cross_attention(q, k, v, ctx, positions)
        assert seen[0, after].all()
        torch.testing.assert_close(mine, ref[:, :, after], atol=1e-5, rtol=1e-4)
        assert taps.gates(i).shape == q.shape


def test_unknown_attention_variant_is_refused():
    fake = SimpleNamespace(cfg=SimpleNamespace(attention="sparse"))
    with pytest.raises(Owl3Error, match="not available for the 'sparse'"):
        view_mass(fake, None, None, [1])


def test_241101_shares_are_the_image_part_of_its_one_softmax(tiny241101_pipe):
    """[p_img; p_txt] @ [V_img; V_txt] from the captured queries and keys is the model's fused attention
    output at every query that sees an image; the shares of an answer add up to 1."""
    from owl3.inference.attribution import fused_probs
    from owl3.model.fused import fused_attention

    pipe, model = tiny241101_pipe, tiny241101_pipe.model
    enc = pipe.encode("Image 1: <|image|> Image 2: <|image|>. Which is brighter?", _pictures(2), cut=False)
    ctx = pipe.engine.encode_visual([enc])
    ids = enc.input_ids[None]
    positions = torch.arange(ids.shape[1])[None]
    layers = hyper_layers(model)
    taps = Readout(model.language_model.model, {i: {"rotate", "v_proj"} for i in layers})
    with torch.inference_mode(), taps.capture():
        model(ids, positions, visual=ctx)
    sees = positions[0] >= enc.media_starts[0]  # s_k <= p: the image token sees its own image
    for i in layers:
        attn = model.language_model.model.layers[i].self_attn
        q, k_txt = taps.queries(i), taps.keys(i)
        v_txt = taps.output(i, "v_proj")[0].view(1, -1, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        vk, vv = ctx.kv[i]
        p = fused_probs(q, vk, ctx.key_starts, k_txt, positions[0])  # (1, H, L, M + T)
        n_rep = q.shape[1] // vk.shape[1]
        mine = p @ torch.cat([repeat_kv(vv, n_rep), repeat_kv(v_txt, n_rep)], 2)
        ref, seen = fused_attention(q, k_txt, v_txt, None, vk, vv, ctx.key_starts, positions)
        assert seen[0].tolist() == sees.tolist()
        torch.testing.assert_close(mine[:, :, sees], ref[:, :, sees], atol=1e-5, rtol=1e-4)
    out = pipe.generate("Image 1: <|image|> Image 2: <|image|>. Which?", _pictures(2), attribution=True,
                        max_new_tokens=4)  # fmt: skip
    assert len(out.shares) == 2 and sum(s.share for s in out.shares) == pytest.approx(1.0)
    assert _no_hooks(model)


def test_cli_prints_the_shares(tmp_path, tiny_dir, capsys):
    paths = []
    for i, img in enumerate(_pictures(2)):
        paths += ["--image", str(tmp_path / f"{i}.png")]
        img.save(tmp_path / f"{i}.png")
    args = ["generate", "--model", str(tiny_dir), *paths, "--attribution", "--max-new-tokens", "3", "Hi."]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "Attention share" in out and "image 1" in out and "image 2" in out


def test_demo_model_looks_at_the_asked_image(demo_pipe):
    """8 images, 'In Image X, ...': the largest share falls on X far more often than chance (1 in 8)."""
    task = SyntheticTask(seed=3, images=[8], limit=8, frames=0, which_images=0)
    hits = 0
    for item in task.items(demo_pipe.config.image_size):
        images, _ = item.media()
        out = demo_pipe.generate(item.prompt, images, attribution=True, cut=False, max_new_tokens=16)
        top = max(range(8), key=lambda i: out.shares[i].share) + 1
        hits += top == item.meta["target"]
    assert hits >= 4, hits
