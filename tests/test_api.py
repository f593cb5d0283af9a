"""The Python API end to end on the tiny random checkpoint: chat/stream/generate agree, placeholders and
cropping defaults, videos from files and frames, batching, logits, loading (sharded, bf16) and every
user mistake turning into one `Owl3Error` with a message that says what is wrong."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import owl3
from owl3 import Completion, Conversation, Owl3Error
from owl3.checkpoint import save_model

IMAGE_TOKEN = "<|image|>"
GREEDY = dict(max_new_tokens=6)


@pytest.fixture(scope="module")
def img(tiny_dir) -> Path:
    return tiny_dir / "images" / "one.png"


@pytest.fixture(scope="module")
def img2(tiny_dir) -> Path:
    return tiny_dir / "images" / "wide.png"


def _write_video(path: Path, n: int = 30, w: int = 64, h: int = 48) -> Path:
    """n frames of solid colours (red/green/blue cycling through brightness), mpeg4."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            a = np.zeros((h, w, 3), np.uint8)
            a[..., i % 3] = 60 + 6 * i
            out.mux(stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return _write_video(tmp_path_factory.mktemp("video") / "clip.mp4")


def _n_image_tokens(pipe, enc) -> int:
    return int((enc.input_ids == pipe.processor.image_token_id).sum())


def _ckpt_copy(src: Path, dst: Path, *, config: dict | None = None, weights: dict | None = None) -> Path:
    """A checkpoint folder in dst: src's files, with config.json fields overridden and/or other weights."""
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, dst / f.name)
    if config is not None:
        cfg = json.loads((src / "config.json").read_text())
        cfg.update(config)
        (dst / "config.json").write_text(json.dumps(cfg))
    if weights is not None:
        save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


# ---------------------------------------------------------------------------------------- generation
def test_chat_equals_joined_stream(tiny_pipe, img):
    for images in ([], [img]):
        text = tiny_pipe.chat("Describe the picture.", images=images, **GREEDY)
        pieces = list(tiny_pipe.stream("Describe the picture.", images=images, **GREEDY))
        assert pieces, "stream yielded nothing"
        assert "".join(pieces) == text


def test_generate_completion_fields(tiny_pipe, img):
    c = tiny_pipe.generate("Describe", images=[img], max_new_tokens=5)
    assert isinstance(c, Completion)
    assert c.finish_reason == "length"
    assert len(c.token_ids) == 5
    assert c.prompt_tokens == tiny_pipe.encode("Describe", images=[img]).input_ids.shape[0]
    assert c.text == tiny_pipe.tokenizer.decode(c.token_ids, skip_special_tokens=True)
    assert c.text == tiny_pipe.chat("Describe", images=[img], max_new_tokens=5)
    # the greedy continuation is the argmax of the last prompt position
    logits = tiny_pipe.logits("Describe", images=[img])
    assert c.token_ids[0] == int(logits[-1].argmax())
    # a longer budget extends the same greedy answer (prefix property)
    longer = tiny_pipe.generate("Describe", images=[img], max_new_tokens=8)
    assert longer.token_ids[:5] == c.token_ids


def test_generate_stop_token_finishes_with_stop(tiny_pipe):
    first = tiny_pipe.generate("Hello", max_new_tokens=3).token_ids
    c = tiny_pipe.generate("Hello", max_new_tokens=3, stop_token_ids=[first[1]])
    assert c.finish_reason == "stop"
    assert c.token_ids == first[:2]


def test_seeded_sampling_is_reproducible(tiny_pipe):
    kw = dict(max_new_tokens=8, temperature=1.5, seed=123)
    a = tiny_pipe.generate("Hello", **kw).token_ids
    assert a == tiny_pipe.generate("Hello", **kw).token_ids
    others = [tiny_pipe.generate("Hello", **{**kw, "seed": s}).token_ids for s in (1, 2, 3)]
    assert any(o != a for o in others)


# ---------------------------------------------------------------------------------------- placeholders
def test_placeholders_inserted_at_start_of_last_user_turn(tiny_pipe, img, img2):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Compare these."},
    ]
    before = copy.deepcopy(messages)
    enc = tiny_pipe.encode(messages, images=[img, img2])
    assert messages == before  # the caller's list and dicts are untouched
    assert _n_image_tokens(tiny_pipe, enc) == 2
    assert enc.prompt.count(IMAGE_TOKEN) == 2
    assert f"<|im_start|>user\n{IMAGE_TOKEN}{IMAGE_TOKEN}\nCompare these.<|im_end|>" in enc.prompt
    assert "<|im_start|>user\nHi<|im_end|>" in enc.prompt  # the earlier turn got nothing
    # same as writing the placeholders by hand
    by_hand = copy.deepcopy(messages)
    by_hand[-1]["content"] = f"{IMAGE_TOKEN}{IMAGE_TOKEN}\nCompare these."
    assert torch.equal(tiny_pipe.encode(by_hand, images=[img, img2]).input_ids, enc.input_ids)

    # chat does not mutate the caller's messages either
    tiny_pipe.chat(messages, images=[img, img2], max_new_tokens=2)
    assert messages == before


def test_existing_placeholder_is_kept_where_written(tiny_pipe, img):
    messages = [{"role": "user", "content": f"Look: {IMAGE_TOKEN} what is it?"}]
    enc = tiny_pipe.encode(messages, images=[img], cut=False)
    assert f"Look: {IMAGE_TOKEN} what is it?" in enc.prompt
    assert _n_image_tokens(tiny_pipe, enc) == 1
    assert messages == [{"role": "user", "content": f"Look: {IMAGE_TOKEN} what is it?"}]


def test_text_only_has_no_image_tokens(tiny_pipe):
    enc = tiny_pipe.encode("Just text")
    assert enc.pixel_values is None
    assert _n_image_tokens(tiny_pipe, enc) == 0


# ---------------------------------------------------------------------------------------- cropping
def test_cut_default_crops_a_lone_image_only(tiny_pipe, img, img2):
    one = tiny_pipe.encode("Describe", images=[img])
    assert one.pixel_values.shape[0] > 1  # grid cells + the global view
    assert _n_image_tokens(tiny_pipe, one) == one.pixel_values.shape[0]
    assert "Cut to" in one.prompt and "global_view" in one.prompt

    two = tiny_pipe.encode("Describe", images=[img, img2])
    assert two.pixel_values.shape == (2, 3, 56, 56)
    assert "Cut to" not in two.prompt

    off = tiny_pipe.encode("Describe", images=[img], cut=False)
    assert off.pixel_values.shape == (1, 3, 56, 56)
    assert "Cut to" not in off.prompt

    on = tiny_pipe.encode("Describe", images=[img, img2], cut=True)
    assert on.pixel_values.shape[0] > 2
    assert on.prompt.count("Cut to") == 2


# ---------------------------------------------------------------------------------------- video
def test_video_file(tiny_pipe, video):
    enc = tiny_pipe.encode("What happens?", videos=[video], frames=4)
    assert _n_image_tokens(tiny_pipe, enc) == 4
    assert enc.pixel_values.shape == (4, 3, 56, 56)
    assert "Cut to" not in enc.prompt  # frames are never cropped
    answer = tiny_pipe.chat("What happens?", videos=[video], frames=4, max_new_tokens=4)
    assert isinstance(answer, str)

    # the same video as a list of its PIL frames gives the same inputs and answer
    frames = tiny_pipe.load_video(video, frames=4)
    assert len(frames) == 4 and all(isinstance(f, Image.Image) for f in frames)
    assert frames[0].size == (64, 48)
    enc2 = tiny_pipe.encode("What happens?", videos=[frames])
    assert torch.equal(enc2.input_ids, enc.input_ids)
    assert torch.equal(enc2.pixel_values, enc.pixel_values)
    assert tiny_pipe.chat("What happens?", videos=[frames], max_new_tokens=4) == answer


def test_video_frames_list_of_any_length(tiny_pipe):
    frames = [Image.new("RGB", (64, 48), c) for c in ("red", "green", "blue")]
    enc = tiny_pipe.encode("What happens?", videos=[frames])
    assert _n_image_tokens(tiny_pipe, enc) == 3
    assert isinstance(tiny_pipe.chat("What happens?", videos=[frames], max_new_tokens=2), str)


def test_video_fps_and_max_frames(tiny_pipe, video):
    # 30 frames at 25 fps, 1 frame per second -> frames 0 and 25; max_frames caps it
    assert _n_image_tokens(tiny_pipe, tiny_pipe.encode("x", videos=[video], fps=1)) == 2
    assert _n_image_tokens(tiny_pipe, tiny_pipe.encode("x", videos=[video], fps=25, max_frames=3)) == 3


# ---------------------------------------------------------------------------------------- batching
def test_chat_batch_equals_each_alone(tiny_pipe, img, img2):
    convs = [
        Conversation("Tell me a story."),
        Conversation([{"role": "user", "content": "What is this?"}], images=[img]),
        {"messages": "Which one is bigger?", "images": [img, img2]},
    ]
    batched = tiny_pipe.chat_batch(convs, max_new_tokens=8)
    alone = [
        tiny_pipe.chat("Tell me a story.", max_new_tokens=8),
        tiny_pipe.chat([{"role": "user", "content": "What is this?"}], images=[img], max_new_tokens=8),
        tiny_pipe.chat("Which one is bigger?", images=[img, img2], max_new_tokens=8),
    ]
    assert batched == alone
    assert len(set(alone)) == 3  # the three requests really differ


def test_chat_many_answers_a_stream_as_each_alone_and_reads_it_lazily(tiny_pipe, img, img2):
    prompts = ["Tell me a story.", "What is this?", "Which one is bigger?", "Count.", "Why?", "Name it."]
    media = [[], [img], [img, img2], [img2], [], [img]]
    lengths = [3, 9, 5, 12, 1, 7]  # answers of different lengths finish out of order
    pulled = []

    def stream():
        for i, (p, m) in enumerate(zip(prompts, media, strict=True)):
            pulled.append(i)
            yield {"messages": p, "images": m, "max_new_tokens": lengths[i]}

    answers = tiny_pipe.chat_many(stream(), in_flight=2, temperature=0.0)
    first = next(answers)
    assert len(pulled) < len(prompts)  # two in flight and the encoder a little ahead, not the whole stream
    got = dict([first, *answers])
    assert sorted(got) == list(range(6))
    for i in range(6):
        alone = tiny_pipe.chat(prompts[i], images=media[i], max_new_tokens=lengths[i])
        assert got[i].text == alone
        assert got[i].prompt_tokens == int(tiny_pipe.encode(prompts[i], images=media[i]).input_ids.shape[0])
    assert not tiny_pipe.engine.has_unfinished


def test_chat_many_names_a_bad_conversation_and_aborts_the_rest(tiny_pipe, img, tmp_path):
    convs = [{"messages": "Tell me a story.", "max_new_tokens": 30}] * 3
    convs.insert(2, {"messages": "What is this?", "images": [tmp_path / "missing.png"]})
    with _raises(r"conversation 2: .*missing\.png"):
        list(tiny_pipe.chat_many(convs, in_flight=2))
    assert not tiny_pipe.engine.has_unfinished  # the ones in flight were aborted
    assert tiny_pipe.chat("Hi", max_new_tokens=2) == tiny_pipe.chat("Hi", max_new_tokens=2)  # it still serves


def test_logits_shape(tiny_pipe, img):
    enc = tiny_pipe.encode("Describe", images=[img])
    logits = tiny_pipe.logits("Describe", images=[img])
    assert logits.shape == (enc.input_ids.shape[0], tiny_pipe.config.text.vocab_size)
    assert torch.isfinite(logits).all()
    # the image changes the prediction (the cross-attention branch is live)
    text_only = tiny_pipe.logits("Describe")
    assert not torch.allclose(logits[-1], text_only[-1])


# ---------------------------------------------------------------------------------------- bad inputs
def _raises(match: str):
    return pytest.raises(Owl3Error, match=match)


def test_missing_and_corrupt_image(tiny_pipe, tmp_path):
    with _raises(r"(?i)not found.*nope\.png|nope\.png.*not found"):
        tiny_pipe.chat("x", images=[tmp_path / "nope.png"], max_new_tokens=1)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png at all" * 10)
    with _raises(r"(?i)cannot read image.*bad\.png"):
        tiny_pipe.chat("x", images=[bad], max_new_tokens=1)


def test_missing_and_corrupt_video(tiny_pipe, tmp_path):
    with _raises(r"(?i)video.*not found.*nope\.mp4"):
        tiny_pipe.chat("x", videos=[tmp_path / "nope.mp4"], max_new_tokens=1)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00garbage, not a video\xff" * 50)
    with _raises(r"(?i)bad\.mp4.*(video|corrupt)"):
        tiny_pipe.chat("x", videos=[bad], max_new_tokens=1)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with _raises(r"(?i)empty"):
        tiny_pipe.chat("x", videos=[empty], max_new_tokens=1)
    with _raises(r"(?i)no frames"):
        tiny_pipe.chat("x", videos=[[]], max_new_tokens=1)


def test_placeholder_count_mismatch(tiny_pipe, img, img2):
    with _raises(r"2 <\|image\|> placeholder\(s\) but 1 image"):
        tiny_pipe.chat(f"{IMAGE_TOKEN} and {IMAGE_TOKEN}", images=[img], max_new_tokens=1)
    with _raises(r"1 <\|image\|> placeholder\(s\) but 2 image"):
        tiny_pipe.chat(f"{IMAGE_TOKEN} only one", images=[img, img2], max_new_tokens=1)
    with _raises(r"1 <\|image\|> placeholder\(s\) but 0 image"):
        tiny_pipe.chat(f"{IMAGE_TOKEN} no image given", max_new_tokens=1)


def test_prompt_longer_than_max_positions(tiny_dir, tmp_path):
    short = owl3.load(_ckpt_copy(tiny_dir, tmp_path / "short", config={"max_position_embeddings": 64}))
    with _raises(r"max_position_embeddings"):
        short.chat("hello " * 100, max_new_tokens=1)
    with _raises(r"max_position_embeddings"):
        list(short.stream("hello " * 100, max_new_tokens=1))
    # a prompt that fits is answered, and the answer stops at the position limit ("length")
    n = short.encode("hello").input_ids.shape[0]
    assert n < 60
    c = short.generate("hello", max_new_tokens=200)
    assert c.finish_reason == "length"
    assert len(c.token_ids) == 64 - n  # prompt + answer never pass max_position_embeddings


def test_logits_of_too_long_prompt(tiny_dir, tmp_path):
    short = owl3.load(_ckpt_copy(tiny_dir, tmp_path / "short", config={"max_position_embeddings": 64}))
    with _raises(r"max_position_embeddings"):
        short.logits("hello " * 100)


def test_not_a_checkpoint(tmp_path):
    with _raises(r"(?i)does not exist"):
        owl3.load(tmp_path / "no-such-dir")
    empty = tmp_path / "empty"
    empty.mkdir()
    with _raises(r"(?i)not an mPLUG-Owl3 checkpoint.*config\.json"):
        owl3.load(empty)
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with _raises(r"model_type 'llama'.*mplugowl3"):
        owl3.load(other)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with _raises(r"(?i)not valid JSON"):
        owl3.load(broken)


def test_checkpoint_without_weights(tiny_dir, tmp_path):
    d = _ckpt_copy(tiny_dir, tmp_path / "noweights")
    (d / "model.safetensors").unlink()
    with _raises(r"model\.safetensors"):
        owl3.load(d)


def test_missing_unexpected_and_misshapen_tensors(tiny_dir, tmp_path):
    state = load_file(tiny_dir / "model.safetensors")

    name = "language_model.model.layers.1.mlp.down_proj.weight"
    missing = {k: v for k, v in state.items() if k != name}
    with _raises(rf"(?i)missing 1 tensor.*{name}"):
        owl3.load(_ckpt_copy(tiny_dir, tmp_path / "missing", weights=missing))

    extra = {**state, "language_model.model.layers.1.mlp.extra_proj.weight": torch.zeros(2, 2)}
    with _raises(r"(?i)unexpected 1 tensor.*extra_proj"):
        owl3.load(_ckpt_copy(tiny_dir, tmp_path / "extra", weights=extra))

    name = "vision2text_model.weight"
    bent = {**state, name: torch.zeros(64, 31)}
    with _raises(rf"{name}.*\(64, 31\).*\(64, 32\)"):
        owl3.load(_ckpt_copy(tiny_dir, tmp_path / "bent", weights=bent))


def test_bad_dtype_and_device(tiny_dir):
    with _raises(r"(?i)unknown dtype 'float8'.*bfloat16"):
        owl3.load(tiny_dir, dtype="float8")
    with _raises(r"(?i)device 'banana'"):
        owl3.load(tiny_dir, device="banana")
    with _raises(r"(?i)device 'tpu'"):
        owl3.load(tiny_dir, device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_gpu(tiny_dir):
    with _raises(r"(?i)'cuda'.*no CUDA GPU.*cpu"):
        owl3.load(tiny_dir, device="cuda")


def test_bad_sampling_values(tiny_pipe):
    with _raises(r"temperature.*-1"):
        tiny_pipe.chat("x", temperature=-1)
    with _raises(r"top_p.*\(0, 1\]"):
        tiny_pipe.chat("x", top_p=0)
    with _raises(r"top_k"):
        tiny_pipe.chat("x", top_k=-2)
    with _raises(r"max_new_tokens"):
        tiny_pipe.chat("x", max_new_tokens=0)
    with _raises(r"repetition_penalty"):
        tiny_pipe.chat("x", repetition_penalty=0)
    with _raises(r"(?i)unknown generation option.*tempreature"):
        tiny_pipe.chat("x", tempreature=0.5)
    with _raises(r"top_p"):
        list(tiny_pipe.stream("x", top_p=1.5))


def test_video_frames_not_wrapped_in_a_list(tiny_pipe):
    frames = [Image.new("RGB", (64, 48), c) for c in ("red", "green")]
    with _raises(r"(?i)videos=\[frames\]|list of frames|wrap"):
        tiny_pipe.encode("x", videos=frames)


def test_none_media_means_no_media(tiny_pipe):
    enc = tiny_pipe.encode("x", images=None, videos=None)
    assert torch.equal(enc.input_ids, tiny_pipe.encode("x").input_ids)


def test_chat_batch_bad_conversation_dict(tiny_pipe):
    with _raises(r"(?i)message"):
        tiny_pipe.chat_batch([{"message": "x"}], max_new_tokens=1)


def test_non_float_torch_dtype(tiny_dir):
    with _raises(r"(?i)dtype"):
        owl3.load(tiny_dir, dtype=torch.int8)


def test_model_path_is_a_file(tiny_dir):
    with _raises(r"(?i)not a (folder|directory)"):
        owl3.load(tiny_dir / "config.json")


def test_bad_messages(tiny_pipe):
    with _raises(r"(?i)empty"):
        tiny_pipe.chat([], max_new_tokens=1)
    with _raises(r"(?i)role"):
        tiny_pipe.chat([{"role": "robot", "content": "hi"}], max_new_tokens=1)


# ---------------------------------------------------------------------------------------- loading
def test_sharded_checkpoint_roundtrip(tiny_pipe, tiny_dir, tmp_path):
    out = save_model(tiny_pipe.model, tmp_path / "sharded", max_shard_bytes=200_000, copy_from=tiny_dir)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3
    assert not (out / "model.safetensors").exists()
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    assert all(s.stat().st_size < 200_000 + 50_000 for s in shards)
    assert (out / "tokenizer.json").is_file()

    again = owl3.load(out)
    for images in ([], [tiny_dir / "images" / "one.png"]):
        ref = tiny_pipe.logits("Describe", images=images)
        assert torch.equal(again.logits("Describe", images=images), ref)
    assert again.chat("Describe", **GREEDY) == tiny_pipe.chat("Describe", **GREEDY)


def test_bfloat16_loading(tiny_pipe, tiny_dir, img):
    bf = owl3.load(tiny_dir, dtype="bfloat16")
    dtypes = {p.dtype for p in bf.model.parameters()}
    assert dtypes == {torch.bfloat16}
    assert bf.model.dtype == torch.bfloat16
    ref = tiny_pipe.logits("Describe", images=[img])
    got = bf.logits("Describe", images=[img]).float()
    assert got.shape == ref.shape
    assert torch.isfinite(got).all()
    scale = ref.abs().max()
    assert (got - ref).abs().max() < 0.1 * scale
    assert torch.nn.functional.cosine_similarity(got, ref, dim=-1).min() > 0.98
    assert isinstance(bf.chat("Describe", images=[img], max_new_tokens=3), str)


def test_241101_family_is_refused_clearly(tiny_dir, tmp_path):
    import json
    import shutil

    folder = tmp_path / "m241101"
    shutil.copytree(tiny_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vision_batch_size"] = 16  # only the 241101 family has it
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(owl3.Owl3Error, match="241101"):
        owl3.load(folder)


def test_loading_skips_module_init_and_the_dynamo_import(tiny_dir):
    # building on the meta device with the modules' own init ran PyTorch's Python reference kernels, whose
    # first use imports torch._dynamo: ~2 s of every `owl3 generate`; loading must still be exact
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from owl3.checkpoint.load import load_model\n"
        f"m = load_model({str(tiny_dir)!r})\n"
        "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'\n"
        "w = torch.empty(1000)\n"
        "torch.nn.init.normal_(w)\n"  # the init functions are restored afterwards
        "assert w.std() > 0.5\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("depth", [0, 2])
def test_encoding_ahead_keeps_the_order_reads_lazily_and_raises_in_place(depth):
    # chat_many encodes in a thread when a core is free for it (depth 2) and inline otherwise (depth 0)
    from owl3.conversation import encode_ahead

    pulled = []

    def items():
        for x in range(6):
            pulled.append(x)
            yield x

    def fn(i, x):
        if x == 4:
            raise Owl3Error(f"conversation {i}: bad")
        return i * 10 + x

    it = encode_ahead(fn, items(), depth)
    assert [next(it), next(it)] == [0, 11]
    assert len(pulled) <= 2 + depth + 1  # at most `depth` items ahead of the reader
    assert [next(it), next(it)] == [22, 33]
    with _raises("conversation 4: bad"):
        next(it)
