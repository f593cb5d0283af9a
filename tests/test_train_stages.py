"""Stage policies (exact trainable sets), LoRA on the LLM's linear layers and its merge, and the training
forward's loss against the model's own logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import owl3
from owl3.checkpoint import load_model
from owl3.processing import Processor
from owl3.training import IGNORE, SampleEncoder, apply_stage, collate, read_data
from owl3.training.step import TrainStep
from tests.train_helpers import FIXTURE, IMAGES, write_data


def _model():
    return load_model(FIXTURE)


def _names(model):
    return [n for n, _ in model.named_parameters()]


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_pretrain_trains_projector_and_hyper_modules_only():
    m = _model()
    apply_stage(m, "pretrain")
    # tiny model: hyper layers 1 and 3 (1-based) = layers 0 and 2
    expected = {"vision2text_model.weight", "vision2text_model.bias"} | {
        f"language_model.model.layers.{i}.self_attn.{mod}.{leaf}"
        for i in (0, 2)
        for mod in ("v_kv_proj", "gate_proj.0")
        for leaf in ("weight", "bias")
    }
    assert _trainable(m) == expected


@pytest.mark.parametrize("stage", ["multi-image", "sft"])
def test_multi_image_and_sft_train_projector_and_whole_llm(stage):
    m = _model()
    apply_stage(m, stage)
    expected = {n for n in _names(m) if n.startswith(("vision2text_model.", "language_model."))}
    assert _trainable(m) == expected
    assert "language_model.model.embed_tokens.weight" in expected
    assert not any(n.startswith("vision_model.") for n in _trainable(m))


def test_lora_adapts_llm_linears_and_trains_new_modules_fully():
    pytest.importorskip("peft")
    from owl3.training import add_lora

    m = _model()
    add_lora(m, r=4, alpha=8, dropout=0.0)
    apply_stage(m, "lora")
    trainable = _trainable(m)
    adapted = {n.split(".lora_")[0] for n in trainable if ".lora_" in n}
    expected = {
        f"language_model.model.layers.{i}.{mod}"
        for i in range(4)
        for mod in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    }
    assert adapted == expected  # not the vision tower's q/k/v/out_proj, not the hyper gate_proj
    full = {n for n in trainable if ".lora_" not in n}
    assert full == {
        n
        for n in _names(m)
        if n.startswith("vision2text_model.") or ".v_kv_proj." in n or ".self_attn.gate_proj." in n
    }
    assert not any(".base_layer." in n or n.startswith("vision_model.") for n in trainable)


def _logits(model, enc):
    """Prefill logits (L, V) of one encoded request; a fresh visual context (its K/V cache is per model)."""
    from owl3.model import VisualContext

    with torch.no_grad():
        visual = VisualContext.build([model.encode_media(enc.pixel_values)], [enc.media_starts])
        return model(enc.input_ids[None], visual=visual)[0]


def test_lora_merge_gives_the_adapter_logits(tmp_path):
    pytest.importorskip("peft")
    from owl3.training import add_lora, merge_adapter
    from owl3.training.stages import adapter_state, lora_scalings, merge_lora_state, new_module_state
    from owl3.training.state import write_adapter, write_model

    pipe = owl3.load(FIXTURE)
    enc = pipe.encode("Image 1: <|image|> Image 2: <|image|>", [IMAGES / "m1.png", IMAGES / "m2.png"])
    m = _model()
    cfg = add_lora(m, r=4, alpha=8, dropout=0.0)
    torch.manual_seed(1)
    with torch.no_grad():  # adapters and new modules away from their init, as after training
        for n, p in m.named_parameters():
            if ".lora_B." in n or ".v_kv_proj." in n:
                p.add_(torch.randn_like(p) * 0.05)
    m.eval()
    adapted = _logits(m, enc)
    assert (adapted - _logits(pipe.model, enc)).abs().max() > 1e-2  # the adapter does change the model

    state = {n: t.detach() for n, t in m.state_dict().items()}
    write_model(tmp_path / "merged", m.cfg, merge_lora_state(state, lora_scalings(m)), FIXTURE)
    merged = owl3.load(tmp_path / "merged")
    assert not any("lora" in n or "base_layer" in n for n, _ in merged.model.named_parameters())
    torch.testing.assert_close(_logits(merged.model, enc), adapted, atol=2e-5, rtol=1e-5)

    # an adapter folder (as a LoRA run writes it) merges the same way
    write_adapter(tmp_path / "adapter", cfg, adapter_state(state), new_module_state(state))
    again = owl3.load(merge_adapter(FIXTURE, tmp_path / "adapter", tmp_path / "merged2"))
    torch.testing.assert_close(_logits(again.model, enc), adapted, atol=2e-5, rtol=1e-5)


def _batch(tmp_path):
    swift, llava = write_data(tmp_path)
    records, _ = read_data([swift, llava], media_root=str(IMAGES))
    enc = SampleEncoder(Processor.from_dir(FIXTURE, 56), seq_len=4096, frames=8, crop_prob=1.0, seed=0)
    # a cropped image, two images, text only, a video
    return collate([enc(r) for r in records[:4]], pad_id=420)


def test_training_loss_is_the_cross_entropy_of_the_model_logits(tmp_path):
    m = _model()
    batch = _batch(tmp_path)
    step = TrainStep(m)
    loss = step(batch.input_ids, batch.labels, batch.pixel_values, batch.n_media, batch.media_starts)
    # reference: the model's own full forward, one row at a time (no padding at all)
    total = 0.0
    start = 0
    for i in range(len(batch)):
        n = int(batch.lengths[i])
        k = batch.n_media[i]
        enc_visual = None
        if k:
            feats = m.encode_media(batch.pixel_values[start : start + k])
            from owl3.model import VisualContext

            enc_visual = VisualContext.build([feats], [batch.media_starts[i]])
            start += k
        with torch.no_grad():
            logits = m(batch.input_ids[i : i + 1, :n], visual=enc_visual)[0]
        total += F.cross_entropy(
            logits[:-1], batch.labels[i, 1:n], ignore_index=IGNORE, reduction="sum"
        ).item()
    assert loss.item() == pytest.approx(total, rel=1e-5)


def test_blank_visual_context_changes_nothing_for_text_only_batches(tmp_path):
    m = _model()
    apply_stage(m, "pretrain")
    swift, _ = write_data(tmp_path)
    records, _ = read_data([swift], media_root=str(IMAGES))
    enc = SampleEncoder(Processor.from_dir(FIXTURE, 56), seq_len=4096, frames=8, crop_prob=0.0, seed=0)
    b = collate([enc(records[2])], pad_id=420)  # text only
    plain = TrainStep(m)(b.input_ids, b.labels, None, b.n_media, b.media_starts)
    blank = TrainStep(m, always_visual=True)(b.input_ids, b.labels, None, b.n_media, b.media_starts)
    assert plain.item() == blank.item()
    blank.backward()  # every trainable parameter is in the graph (DDP/FSDP need that), with zero gradient
    for n, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and not p.grad.any(), n


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    batch = _batch(tmp_path)
    grads = []
    for ckpt in (False, True):
        m = _model()
        apply_stage(m, "sft")
        m.train()
        m.language_model.model.gradient_checkpointing = ckpt
        TrainStep(m)(
            batch.input_ids, batch.labels, batch.pixel_values, batch.n_media, batch.media_starts
        ).backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-5)
