"""The 7B-241101 family in use, on the tiny checkpoint in its official layout that the tests write
(tests/helpers_241101.py): the cut and video templates token for token, training (a step's loss, the
stages, LoRA) and saving in the 241101 layout, the CLI, the server and the benchmarks. The model itself:
tests/test_241101_model.py."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import owl3
from owl3.checkpoint import load_model, read_config, save_model
from owl3.config import preset
from owl3.processing import Processor, choose_grid
from tests.helpers_241101 import (
    FIXTURE,
    NEW_TOKENS,
    config_241101,
    frames,
    img,
    official_names,
)


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
    wide, tall = img(tiny241101_dir, "wide.png"), img(tiny241101_dir, "tall.png")
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
    enc = proc([{"role": "user", "content": "<|video|>What happens?"}], videos=[frames(tiny241101_dir)])
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
        videos=[frames(tiny241101_dir, 3)],
    )
    video = "<|start_video_frame|>" + "<|image|>" * 3 + "<|end_video_frame|>"
    want = _prompt(f"<|image|> and {video}")
    assert enc.prompt == want and enc.input_ids.tolist() == _expected_ids(tok, want)
    assert enc.pixel_values.shape[0] == 4


def test_240728_processor_keeps_its_own_templates(tiny_pipe, tiny_dir):
    enc = tiny_pipe.processor([{"role": "user", "content": "<|video|>?"}], videos=[frames(tiny_dir, 2)])
    assert "<|image|><|image|>?" in enc.prompt and "video_frame" not in enc.prompt
    assert tiny_pipe.processor.variant == "240728"


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
    wide = img(tiny241101_dir, "wide.png")
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
    assert "<|start_video_frame|>" in served.encode("<|video|>?", videos=[frames(FIXTURE, 2)]).prompt
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


# ---------------------------------------------------------------------------------------- evaluation
def test_eval_runs_a_241101_checkpoint(tiny241101_dir, tmp_path, capsys):
    from owl3.cli import main

    out = tmp_path / "R.jsonl"
    args = ["eval", "synthetic", "--model", str(tiny241101_dir), "--images", "1,3", "--limit", "2",
            "--video-frames", "2", "--which-images", "0", "--max-new-tokens", "3", "--output", str(out),
            "--json"]  # fmt: skip
    assert main(args) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(r["images"], r["questions"]) for r in final["results"]] == [(1, 2), (3, 2)]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6 and all(isinstance(r["prediction"], str) for r in records)
    assert sum("<|video|>" in r["prompt"] for r in records) == 2  # the video row ran too
