"""The synthetic world (owl3.demo): seeded and reproducible, answers true of the drawn pixels, every
question type generated, tokenizer, data writer and initial checkpoint in the official layout."""

from __future__ import annotations

import json
import random
from collections import deque

import numpy as np
import pytest

from owl3.demo import questions as Q
from owl3.demo.world import (
    BACKGROUND,
    CELL_NAMES,
    COLOURS,
    DEFAULT_SIZE,
    SHAPES,
    Scene,
    random_scene,
    random_video,
    render,
)


def blobs(img, colour) -> list[tuple[float, float, int]]:
    """Connected components (4-neighbour) of exactly `colour`: (centre x, centre y, pixels) each."""
    a = np.asarray(img)
    mask = np.all(a == np.array(colour, np.uint8), axis=-1)
    seen = np.zeros_like(mask)
    out = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        todo, pix = deque([(y0, x0)]), []
        while todo:
            y, x = todo.popleft()
            pix.append((y, x))
            for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    todo.append((yy, xx))
        ys, xs = zip(*pix, strict=True)
        out.append((float(np.mean(xs)), float(np.mean(ys)), len(pix)))
    return out


def cell_of(x: float, y: float, size: int = DEFAULT_SIZE) -> int:
    return int(y // (size / 3)) * 3 + int(x // (size / 3))


# ----------------------------------------------------------------------------------- determinism
def test_scenes_questions_and_pixels_are_reproducible():
    a = [random_scene(random.Random(f"s{i}")) for i in range(20)]
    b = [random_scene(random.Random(f"s{i}")) for i in range(20)]
    assert a == b
    assert len(set(a)) == 20  # and not all the same
    assert render(a[3]).tobytes() == render(b[3]).tobytes()
    q1 = [Q.multi_question(random.Random(7), 6) for _ in range(3)]
    q2 = [Q.multi_question(random.Random(7), 6) for _ in range(3)]
    assert q1 == q2
    v1, v2 = random_video(random.Random(3)), random_video(random.Random(3))
    assert [f.tobytes() for f in v1.render()] == [f.tobytes() for f in v2.render()]


# ----------------------------------------------------------------------------------- pixels
@pytest.mark.parametrize("seed", range(6))
def test_counts_colours_and_positions_match_the_pixels(seed):
    rng = random.Random(f"pixels{seed}")
    scene = random_scene(rng, word=False, max_objects=5)
    img = render(scene)
    found = {name: blobs(img, rgb) for name, rgb in COLOURS.items()}
    assert sum(len(v) for v in found.values()) == len(scene.objects)  # one blob per object
    for name in COLOURS:
        assert len(found[name]) == scene.count(colour=name)
        qa = Q.ask(scene, "count_colour", random.Random(0))
        n = scene.count(colour=qa.question.split()[2])  # "How many {colour} objects are there?"
        assert qa.answer == Q.count_sentence(n, f"{qa.question.split()[2]} object")
    for o in scene.objects:  # every object's blob lies in its cell, big ones are bigger
        ((cx, cy, area),) = [b for b in found[o.colour] if cell_of(b[0], b[1]) == o.cell]
        assert area > (60 if o.size == "big" else 15)
    for _ in range(5):
        qa = Q.ask(scene, "position", rng)
        if qa is None:
            continue
        ref, cell = qa.answer.removeprefix("The ").split(" is in the ")
        (o,) = [o for o in scene.objects if ref in (o.shape, f"{o.colour} {o.shape}")]
        assert CELL_NAMES[o.cell] == cell.rstrip(".")
        assert [cell_of(x, y) for x, y, _ in found[o.colour]].count(o.cell) == 1
    total = Q.ask(scene, "count_all", rng).answer
    assert total == Q.count_sentence(sum(len(v) for v in found.values()), "object")


def test_a_written_word_is_drawn_in_its_row():
    scene = random_scene(random.Random(11), word=True)
    img = np.asarray(render(scene))
    w = scene.word
    band = img[w.row * 28 : (w.row + 1) * 28]
    letters = np.all(band == COLOURS[w.colour], axis=-1).sum()
    assert letters > 40 * len(w.text)  # about 4 dots of 2x2 px per letter column at least
    assert Q.ask(scene, "word", random.Random(0)).answer == f"The word is {w.text}."


def test_videos_show_what_the_answers_say():
    rng = random.Random(5)
    appear = random_video(rng, "appear")
    counts = [len(f.objects) for f in appear.frames]
    assert counts == sorted(counts) and counts[-1] == len(appear.script) >= 3
    order = []
    for f in appear.frames:
        order += [o for o in f.objects if o not in order]
    assert order == list(appear.script)
    _, answer = Q.video_qa(appear, "appear_first", rng)
    assert answer == f"The {appear.script[0].colour} {appear.script[0].shape} appeared first."

    for direction, (dy, dx) in {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}.items():
        while True:
            move = random_video(rng, "move")
            if move.script[1] == direction:
                break
        mover = move.script[0]
        ends = []
        for frame in (move.frames[0], move.frames[-1]):  # draw the mover alone, find its blob
            (o,) = [o for o in frame.objects if (o.shape, o.colour) == (mover.shape, mover.colour)]
            ((x, y, _),) = blobs(render(Scene((o,))), COLOURS[o.colour])
            ends.append((x, y))
        (x0, y0), (x1, y1) = ends
        assert np.sign(round(x1 - x0)) == dx and np.sign(round(y1 - y0)) == dy
        assert Q.video_qa(move, "move_direction", rng)[1].endswith(f"moved {Q.MOVES[direction]}.")

    rec = random_video(rng, "recolour")
    before, after = rec.script
    first, last = render(rec.frames[0]), render(rec.frames[-1])
    assert blobs(first, COLOURS[before.colour]) and blobs(last, COLOURS[after.colour])
    assert Q.video_qa(rec, "recolour_after", rng)[1] == f"The {before.shape} turned {after.colour}."


def test_background_is_flat():
    img = np.asarray(render(random_scene(random.Random(2), word=False)))
    assert np.all(img[0, 0] == BACKGROUND)


# ----------------------------------------------------------------------------------- questions
@pytest.mark.parametrize("kind", Q.SINGLE_KINDS)
def test_every_single_image_kind(kind):
    rng = random.Random(kind)
    for _ in range(5):
        q = Q.single_question(rng, kind)
        assert q.kind == kind and q.prompt.startswith("<|image|>\n") and q.prompt.endswith("?")
        assert q.answer.endswith(".") and q.n_images == 1
        m = Q.multi_question(rng, 7, kind)
        assert m.prompt.count("<|image|>") == 7 and m.n_images == 7
        assert m.prompt.startswith("Image 1: <|image|> Image 2: <|image|>")
        assert f"<|image|>. In Image {m.target}, " in m.prompt
        assert m.prompt.split(f"In Image {m.target}, ")[1][0].islower()


@pytest.mark.parametrize("kind", Q.WHICH_KINDS)
def test_which_image_has_exactly_one_answer(kind):
    rng = random.Random(kind)
    for _ in range(5):
        q = Q.which_question(rng, 9, kind)
        assert q.answer.startswith(f"Image {q.target} ") and q.prompt.count("<|image|>") == 9
        tail = q.answer.split(" ", 2)[2]  # "has two circles." / "has a red star." / "shows the word X."
        hits = [i + 1 for i, s in enumerate(q.images) if _has(s, tail)]
        assert hits == [q.target]


def _has(scene, tail: str) -> bool:
    words = tail.rstrip(".").split()
    if words[0] == "shows":
        return scene.word is not None and scene.word.text == words[-1]
    if words[1] == "a":
        return scene.count(shape=words[3], colour=words[2]) > 0
    n = Q.NUMBERS.index(words[1])
    nouns = {w: s for s in (*SHAPES, "object") for w in (s, Q.plural(s))}
    noun = nouns[words[2]]
    return (len(scene.objects) if noun == "object" else scene.count(shape=noun)) == n


@pytest.mark.parametrize("kind", Q.ALL_VIDEO_KINDS)
def test_every_video_kind(kind):
    q = Q.video_question(random.Random(kind), kind, n_frames=6)
    assert q.prompt.startswith("<|video|>\n") and len(q.render_video(56)) == 6
    assert q.answer.endswith(".")


def test_plurals_and_counts():
    assert Q.count_sentence(0, "cross") == "There are no crosses."
    assert Q.count_sentence(1, "star") == "There is one star."
    assert Q.count_sentence(3, "red object") == "There are three red objects."


# ----------------------------------------------------------------------------------- tokenizer, data, model
@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from owl3.demo.tokenizer import build_tokenizer

    d = tmp_path_factory.mktemp("tok")
    build_tokenizer(d)
    return d


def test_tokenizer_layout_and_labels(tokenizer_dir):
    from tokenizers import Tokenizer

    from owl3.demo.tokenizer import SPECIAL_TOKENS
    from owl3.processing import Processor

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    n = tok.get_vocab_size()
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(n - 4, n))
    for k in (1, 9, 37, 100, 400):
        assert len(tok.encode(f" {k}").ids) == 1
    cfg = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    assert cfg["eos_token"] == "<|im_end|>" and len(cfg["added_tokens_decoder"]) == 4
    proc = Processor.from_dir(tokenizer_dir, 84)
    enc = proc([{"role": "user", "content": "Image 1: <|image|> Image 2: <|image|>. In Image 2, what?"}],
               images=[render(random_scene(random.Random(0)))] * 2, cut=False)  # fmt: skip
    assert len(enc.media_starts) == 2
    text = "The blue circle appeared after the red square."
    assert tok.decode(tok.encode(text).ids) == text and len(tok.encode(text).ids) <= 10


def test_data_writer(tmp_path):
    from owl3.demo.data import Mix, write_dataset
    from owl3.processing.video import read_video

    mix = Mix(single=0.2, multi=0.5, which=0.15, video=0.15, n_min=2, n_max=8)
    path = write_dataset(tmp_path / "d", 60, mix=mix, pool=80, seed=1)
    again = write_dataset(tmp_path / "e", 60, mix=mix, pool=80, seed=1)
    assert path.read_text() == again.read_text()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 60
    for r in rows:
        user, bot = r["messages"]
        assert user["role"] == "user" and bot["role"] == "assistant" and bot["content"].endswith(".")
        assert user["content"].count("<image>") == len(r.get("images", []))
        assert user["content"].count("<video>") == len(r.get("videos", []))
        assert all((tmp_path / "d" / p).is_file() for p in r.get("images", []) + r.get("videos", []))
    video_rows = [r for r in rows if "videos" in r]
    assert video_rows and any(r["messages"][0]["content"].count("<image>") > 2 for r in rows)
    frames = read_video(tmp_path / "d" / video_rows[0]["videos"][0])
    assert len(frames) == 8 and frames[0].size == (DEFAULT_SIZE, DEFAULT_SIZE)
    pixels = np.asarray(frames[-1])
    assert set(map(tuple, pixels.reshape(-1, 3))) <= {BACKGROUND, *COLOURS.values()}  # lossless


def test_initial_checkpoint_loads_and_is_small(tmp_path, tokenizer_dir):
    import torch

    import owl3
    from owl3.demo.model import init_checkpoint, n_params

    path = init_checkpoint(tmp_path / "demo-init", tokenizer_dir=tokenizer_dir)
    assert (path / "model.safetensors").stat().st_size < 20e6
    pipe = owl3.load(path)
    cfg = pipe.config
    assert cfg.image_size == 84 and cfg.text.vocab_size % 64 == 0
    assert cfg.eos_token_id == pipe.tokenizer.token_to_id("<|im_end|>")
    assert 1e6 < n_params(pipe.model) < 5e6
    attn = pipe.model.language_model.model.layers[0].self_attn
    assert attn.is_hyper
    w = attn.v_kv_proj.weight.view(cfg.text.n_kv_heads, 2, cfg.text.head_dim, cfg.text.dim)
    assert torch.equal(w[:, 0].reshape(-1, cfg.text.dim), attn.k_proj.weight)
    assert torch.equal(w[:, 1].reshape(-1, cfg.text.dim), attn.v_proj.weight)
    q = Q.multi_question(random.Random(0), 3)
    out = pipe.generate(q.prompt, images=q.render_images(), max_new_tokens=3)
    assert out.prompt_tokens > 10
