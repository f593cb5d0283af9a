"""The demo model's recency heads: the first hyper layer's tokens after image k look at image k."""

from __future__ import annotations

import pytest
import torch

from owl3.config import preset
from owl3.demo.model import init_recency, init_weights
from owl3.model import Owl3Model, VisualContext
from owl3.model.hyper import project_kv
from owl3.model.layers import apply_rope, repeat_kv


def first_layer_shares(model: Owl3Model) -> torch.Tensor:
    """Share of the first hyper layer's attention (per head) that the token right after each inner image
    puts on that image, in a `x x x <img> x x x <img> ...` prompt with random
    visual features. The layer's input is read by a forward pre-hook; its cross-attention logits are
    rebuilt from it with the layer's own projections."""
    torch.manual_seed(0)
    n_img, t = 5, model.cfg.vision.n_tokens
    starts = [3 + 4 * k for k in range(n_img)]
    ids = torch.randint(0, 900, (1, starts[-1] + 6))
    feats = torch.randn(n_img, t, model.cfg.text.dim)
    attn = next(lay.self_attn for lay in model.language_model.model.layers if lay.self_attn.is_hyper)
    seen = []
    hook = attn.register_forward_pre_hook(lambda module, args: seen.append(args))
    try:
        with torch.no_grad():
            ctx = VisualContext.build([feats], [starts])
            model.language_model.model(model.embed(ids), torch.arange(ids.shape[1])[None], None, None, ctx)
    finally:
        hook.remove()
    h, positions, rope, _, _, visual, norm, _ = seen[0]
    b, n, d = h.shape[0], h.shape[1], attn.head_dim
    with torch.no_grad():
        q = attn.q_proj(h).view(b, n, attn.n_heads, d).transpose(1, 2)  # (B, H, L, d)
        q = apply_rope(q, *rope(positions, h.dtype))
        vk, _ = project_kv(visual.features, visual.positions, norm, attn.v_kv_proj, rope, attn.n_kv_heads, d)
        scores = q @ repeat_kv(vk, attn.n_heads // attn.n_kv_heads).transpose(-1, -2) / d**0.5  # (B, H, L, M)
    visible = visual.key_starts[:, None, None, :] < positions[:, None, :, None]
    w = torch.softmax(scores.masked_fill(~visible, float("-inf"))[0], -1).nan_to_num(0.0)  # (H, L, M)
    return torch.stack([w[:, s + 1, k * t : (k + 1) * t].sum(-1) for k, s in enumerate(starts[:-1])]).mean(0)


def test_recency_heads_look_at_the_image_just_before():
    cfg = preset("demo")
    model = init_weights(Owl3Model(cfg), seed=0)
    plain = first_layer_shares(model)
    init_recency(model, kv_heads=(0,), strength=3.0)
    shares = first_layer_shares(model)
    n_rep = cfg.text.n_heads // cfg.text.n_kv_heads
    # images 1..4 before the probed tokens: a head that looks at all alike puts ~1/k on the last one
    uniform = sum(1 / (k + 1) for k in range(4)) / 4
    assert plain.max() < uniform + 0.1
    assert (shares[:n_rep] > 0.95).all()  # the heads of kv head 0 now look at the image just before
    assert shares[n_rep:] == pytest.approx(plain[n_rep:].tolist(), abs=1e-5)  # the others are untouched


def test_recency_phase_of_a_recipe(tmp_path):
    """`RecencyInit` in a recipe writes the model so far with the recency heads set, and is resumable."""
    from owl3.checkpoint import load_model
    from owl3.demo.train import RecencyInit, train_demo

    phases = (RecencyInit("recency", strength=3.0),)
    final = train_demo(tmp_path / "run", progress=False, say=lambda s: None, phases=phases)
    model = load_model(final)
    n_rep = model.cfg.text.n_heads // model.cfg.text.n_kv_heads
    assert (first_layer_shares(model)[:n_rep] > 0.95).all()
    said = []
    train_demo(tmp_path / "run", progress=False, say=said.append, phases=phases)
    assert any("done before" in s for s in said)


@pytest.mark.parametrize("model_preset", ["demo", "tiny"])
def test_gate_step_and_a_grounded_phase(tmp_path, model_preset):
    """`GateInit` adds its bias to every hyper layer's gate; a phase with `Mix.attend` and the grounding
    options trains with the attention loss (logged) and the hyper layers' o_proj at 10x the lr, wherever
    the preset puts its hyper layers (demo: 1 and 4 of 6; tiny: 1 and 3 of 4)."""
    from owl3.checkpoint import load_model
    from owl3.demo.data import Mix
    from owl3.demo.train import GROUND, GateInit, Phase, train_demo
    from owl3.training.metrics import read_metrics

    mix = Mix(single=1.0, multi=0.0, which=0.0, video=0.0, kinds=("colour",), attend=True)
    phases = (GateInit("gates", 3.0), Phase("ground", mix, steps=3, lr=1e-3, min_lr=1e-4, **GROUND))
    out = tmp_path / "run"
    train_demo(out, batch_size=4, threads=1, pool=30, progress=False, say=lambda s: None, phases=phases,
               preset=model_preset)  # fmt: skip
    init, opened = load_model(out / "init"), load_model(out / "phase-1-gates")
    assert opened.cfg.text.hyper_layers == preset(model_preset).text.hyper_layers
    for a, b in zip(init.language_model.model.layers, opened.language_model.model.layers, strict=True):
        if a.self_attn.is_hyper:
            gain = b.self_attn.gate_proj[0].bias - a.self_attn.gate_proj[0].bias
            assert torch.allclose(gain, torch.full_like(gain, 3.0))
    rows = read_metrics(out / "phase-2-ground" / "metrics.jsonl")
    assert len(rows) == 3 and all(r["attention_loss"] > 0 for r in rows)  # every colour row is grounded
    trained = load_model(out / "phase-2-ground").state_dict()
    before = opened.state_dict()

    def moved(name):
        return float((trained[name] - before[name]).abs().max())

    hyper = [i for i, layer in enumerate(opened.language_model.model.layers) if layer.self_attn.is_hyper]
    o_proj = "language_model.model.layers.{}.self_attn.o_proj.weight"
    q_proj = f"language_model.model.layers.{hyper[0]}.self_attn.q_proj.weight"
    # Adam moves each weight by about lr per step: the hyper layers' o_proj at 10x, the other layers' not
    for i in range(len(opened.language_model.model.layers)):
        ratio = moved(o_proj.format(i)) / moved(q_proj)
        assert ratio > 5 if i in hyper else ratio < 2, (i, ratio)
