"""Write a training set of the synthetic world: ms-swift JSONL with PNG pictures and mp4 videos.

Rows: `{"messages": [{"role": "user", "content": "Image 1: <image> Image 2: <image>. In Image 2, what
colour is the star?"}, {"role": "assistant", "content": "The star is red."}], "images": [...]}`; videos as
`<video>` + `"videos": ["videos/two-000123.mp4"]`; attention targets as `"attend": [...]` (training/data.py).
Paths are relative to the output folder.

Scenes come from a pool (`pool` scenes, each rendered once to `images/`), so a large set stays a few
thousand small files; questions are drawn fresh per row. Videos are written as lossless RGB H.264 mp4 at
1 frame per second with exactly `n_frames` frames (owl3's default 8-frame sampling then returns each frame
as drawn). A `Mix` sets what share of rows is single-image, "In Image X" multi-image, "which image" and
video, how many images, which question kinds and which attention targets the rows carry.

The rows of a seed are a fixed sequence of random draws: the shipped model was trained on them, so a change
here that adds, drops or reorders a draw changes what `owl3 demo-train` writes.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import av
import numpy as np

from owl3.demo.questions import (
    ALL_VIDEO_KINDS,
    IMAGE,
    QA,
    SINGLE_KINDS,
    VIDEO,
    VIDEO_QUESTION_KINDS,
    WHICH_KINDS,
    Question,
    ask,
    list_prompt,
    lower_first,
    video_grounding,
    video_qa,
    video_question,
    which_property,
)
from owl3.demo.world import random_scene, render
from owl3.errors import Owl3Error

# text tokens right after image X that an "In Image X" answer's binding targets name (`Mix.bind`)
BIND_TOKENS = 4
# the decoder layers of the label targets (`Mix.copy_label`): the token after image X looks at its label in
# the first, the answer at the question's "Image X" in the second
COPY_LAYERS = (0, 1)


@dataclass(frozen=True)
class Mix:
    """Shares of row types (normalized), the image counts of multi-image rows, the question kinds and the
    attention targets the rows carry."""

    single: float = 0.3
    multi: float = 0.4  # "In Image X, ..." among n_min..n_max images
    which: float = 0.15  # "Which image has ...?"
    video: float = 0.15
    n_min: int = 2
    n_max: int = 8
    log_uniform: bool = False  # draw the image count log-uniformly (more small counts)
    hard: float = 0.5  # share of distractors that show the shape the question names
    # share of multi / which rows numbered from a random start (`Image 41: ... Image 48:`), a window of a
    # list of up to `max_label` images: every label token up to max_label is trained without long rows
    window: float = 0.0
    max_label: int = 128
    # question kinds of single / multi rows (default: all); a kind listed twice is drawn twice as often
    kinds: tuple[str, ...] | None = None
    # question kinds of video rows (default: all, `questions.ALL_VIDEO_KINDS`), drawn as `kinds`
    video_kinds: tuple[str, ...] | None = None
    n_frames: int = 8
    # one-image rows whose answer is read from one object (colour, shape, position, size, a "yes" of
    # exists) carry "attend" targets: that object's cell, at each deciding word (training's attention loss);
    # video rows naming one object (what appeared first / last / after X, what moved) too, in the frame
    # where it appeared (or the first)
    attend: bool = False
    # "In Image X" rows carry binding targets at each deciding word (as `attend`, in image X): that object's
    # cell, and the BIND_TOKENS text tokens right after image X (self-attention: the route by which the
    # question reaches image X's content)
    bind: bool = False
    # answers that say "there is none" (exists "No", a count of zero) carry a target on the empty cells of
    # the picture (of image X, with the text target too, in "In Image X" rows with `bind`), at the word
    # that says it, in the rows that carry targets (`attend`, `bind`): where a look for a missing thing lands
    absent: bool = False
    # questions per row: `turns` - 1 follow-up turns ask about the same pictures (one-image rows: other kinds
    # about that picture; "In Image X" and "which image?" rows: "In Image Y" about other images of the list;
    # video rows: other questions about that video), each with its own targets as above ("turn": k). The
    # pictures pass the tower once for all of them
    turns: int = 1
    # video rows asking how many objects appeared carry a target on every object of the last frame (which
    # shows them all) at the count word, the answer's first: where to count
    count_look: bool = False
    # one-image and "In Image X" rows asking how many objects of a colour or shape draw their true count
    # uniformly from 0-2 (the world makes one far the most common: "There is one" is right 3 times in 4)
    count_balance: bool = False
    # False: `count_balance` on one-image rows only; "In Image X" rows keep the world's counts, whose prior
    # ("one") is what a list answer leans on (balanced list counts cost the lists, docs/demo.md)
    count_balance_lists: bool = True
    # count answers of one or more carry a target on every counted object at the words that say how many
    # ("There", "There is" / "There are"), in the rows that carry targets (`attend`, `bind`), as `absent`
    # puts one on the empty cells for a count of none: where to count
    count_objects: bool = False
    # > 0: those count looks spread over the picture, each counted object's cell taking `count_odds` times
    # the share of any other cell (training/data.py `Attend.odds`), so that the share on the counted
    # objects grows with their number instead of being all of the look for one object and for two
    count_odds: float = 0.0
    # list rows ("In Image X", "which image?") carry label targets: the token right after image X (of
    # "which image?": the answer's image) looks at its label's number ("Image 3: <|image|>" -> " 3") in
    # decoder layer COPY_LAYERS[0], and in "In Image X" rows with `bind` each deciding word looks at the
    # question's "Image X" in layer COPY_LAYERS[1]: the answer and the tokens after image X then carry the
    # same number, by which the answer can find them (docs/demo.md)
    copy_label: bool = False
    # the query heads those targets ask to look (empty: all of the layer's): with all, the answer's every
    # head of layer COPY_LAYERS[1] learns to look for a number, and one-image counts suffered (docs/demo.md)
    copy_heads: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.video_kinds or ()) - set(ALL_VIDEO_KINDS))
        if unknown:
            raise ValueError(f"unknown video question kind(s) {unknown}; choose from {list(ALL_VIDEO_KINDS)}")


# the counts `Mix.count_balance` draws from, each as often
BALANCED_COUNTS = (0, 1, 2)


def n_images(rng: random.Random, mix: Mix) -> int:
    if mix.log_uniform:
        return min(mix.n_max, int(math.exp(rng.uniform(math.log(mix.n_min), math.log(mix.n_max + 1)))))
    return rng.randint(mix.n_min, mix.n_max)


class ScenePool:
    """`size` random scenes; each drawn question picks scenes from it."""

    def __init__(self, size: int, seed: int) -> None:
        rng = random.Random(f"pool:{seed}")
        self.scenes = [random_scene(rng) for _ in range(size)]

    def pick(self, rng: random.Random, accept=lambda s: True, tries: int = 10_000) -> int:
        for _ in range(tries):
            i = rng.randrange(len(self.scenes))
            if accept(self.scenes[i]):
                return i
        raise RuntimeError("no pool scene fits; enlarge the pool")


@dataclass(frozen=True)
class Row:
    kind: str
    prompt: str  # with <|image|> / <|video|> placeholders
    answer: str
    images: tuple[int, ...] = ()  # pool indices, in placeholder order
    video: Question | None = None
    attend: tuple[dict, ...] = ()  # training/data.py `Attend` targets, as written to the row
    more: tuple[tuple[str, str], ...] = ()  # follow-up turns (question, answer) about the same media
    start: int = 1  # the label of the first image in a list ("Image 41: ... Image 48:")
    # what the questions were about: (image index, the cell of the object read, or None), one per question
    about: tuple[tuple[int, int | None], ...] = ()


def draw_row(rng: random.Random, pool: ScenePool, mix: Mix) -> Row:
    row = _first_row(rng, pool, mix)
    if mix.turns <= 1:
        return row
    more, attend, about = [], list(row.attend), list(row.about)
    for turn in range(1, mix.turns):
        said = [row.prompt, row.answer, *(t for qa in more for t in qa)]
        follow = _follow_up(rng, pool, mix, row, said, about)
        if follow is None:
            break
        question, answer, targets = follow
        more.append((question, answer))
        attend += [{**t, "turn": turn} for t in targets]
    return replace(row, more=tuple(more), attend=tuple(attend), about=tuple(about))


def _follow_up(
    rng: random.Random, pool: ScenePool, mix: Mix, row: Row, said: list[str], about: list
) -> tuple[str, str, list[dict]] | None:
    """Another question about the media of `row`, its answer and its targets; None if none is found. Never
    one asked before (`said`: the turns so far), nor one whose answer an earlier turn gives away: in a
    list, only about an image not asked about yet; in one image, not about an object read before; in a
    video, not naming an object named before. Appends to `about`."""
    for _ in range(20):
        if row.video is not None:
            video = row.video.video
            kind = rng.choice(VIDEO_QUESTION_KINDS[video.kind])
            question, answer = video_qa(video, kind, rng)
            named = " ".join(answer.split(" ")[1:3]) if answer.startswith("The ") else None
            if named is not None and named not in question and any(named in t for t in said):
                continue
            attend = _video_targets(Question(kind, question, answer, video=video), mix)
            on = (0, None)
        else:
            kind = rng.choice(mix.kinds or SINGLE_KINDS)
            x = rng.randrange(len(row.images))
            qa = ask(pool.scenes[row.images[x]], kind, rng)
            if qa is None:
                continue
            seen = {c for _, c in about} if len(row.images) == 1 else {i for i, _ in about}
            if (qa.cell if len(row.images) == 1 else x) in seen - {None}:
                continue
            on = (x, qa.cell)
            if len(row.images) == 1:
                question, answer = qa.question, qa.answer
                attend = [{"image": 0, **look} for look, _ in _looks(qa, mix)] if mix.attend else []
            else:
                question, answer = f"In Image {row.start + x}, {lower_first(qa.question)}", qa.answer
                attend = _bind_targets(qa, x, mix, row.start + x) if mix.bind else []
        if not any(question in t for t in said):
            about.append(on)
            return question, answer, attend
    return None


def _first_row(rng: random.Random, pool: ScenePool, mix: Mix) -> Row:
    r = rng.random() * (mix.single + mix.multi + mix.which + mix.video)
    if r < mix.video:
        q = video_question(rng, rng.choice(mix.video_kinds or ALL_VIDEO_KINDS), mix.n_frames)
        return Row(q.kind, q.prompt, q.answer, video=q, attend=tuple(_video_targets(q, mix)))
    r -= mix.video
    if r < mix.which:
        return _which_row(rng, pool, n_images(rng, mix), mix)
    r -= mix.which
    n = 1 if r < mix.single else n_images(rng, mix)
    kind = rng.choice(mix.kinds or SINGLE_KINDS)
    counted = kind in ("count_colour", "count_shape")
    balance = mix.count_balance and counted and (n == 1 or mix.count_balance_lists)
    want = rng.choice(BALANCED_COUNTS) if balance else None
    for tries in itertools.count():
        target = pool.pick(rng)
        qa = ask(pool.scenes[target], kind, rng)
        # a wanted count the pool cannot give within 1,000 draws is given up (never with the world's pool)
        if qa is not None and (want is None or len(qa.counted) == want or tries >= 1000):
            break
    if n == 1:
        attend = tuple({"image": 0, **look} for look, _ in _looks(qa, mix)) if mix.attend else ()
        prompt = f"{IMAGE}\n{qa.question}"
        return Row(kind, prompt, qa.answer, (target,), attend=attend, about=((0, qa.cell),))
    others = []
    for _ in range(n - 1):
        hard = qa.subject is not None and rng.random() < mix.hard
        others.append(pool.pick(rng, (lambda s: s.count(shape=qa.subject) > 0) if hard else (lambda s: True)))
    x = rng.randint(1, n)
    others.insert(x - 1, target)
    # a draw that chose the list's layout in the research recipes (526f300); the shipped recipe's rows
    # are the draws with it, so it stays
    rng.random()
    start = _start(rng, mix, n)
    prompt = list_prompt(n, f"In Image {start + x - 1}, {lower_first(qa.question)}", start)
    attend = tuple(_bind_targets(qa, x - 1, mix, start + x - 1)) if mix.bind else ()
    attend += _label_target(x - 1, start, mix)
    return Row(kind, prompt, qa.answer, tuple(others), attend=attend, start=start, about=((x - 1, qa.cell),))


def _looks(qa: QA, mix: Mix) -> list[tuple[dict, str]]:
    """Where the answer should look at each deciding word, without its picture, and that word's prefix:
    the object's cell, with `mix.absent` the empty cells of an answer that says none, and with
    `mix.count_objects` the counted objects of a count of one or more (a share spread by `mix.count_odds`)."""
    looks = [({"box": _cell_box(cell), "after": after}, after) for cell, after in qa.grounding()]
    unions = qa.absence() if mix.absent else []
    looks += [({"boxes": [_cell_box(c) for c in cells], "after": after}, after) for cells, after in unions]
    odds = {"odds": mix.count_odds} if mix.count_odds > 0 else {}
    counts = qa.count_looks() if mix.count_objects else []
    looks += [({"boxes": [_cell_box(c) for c in cells], **odds, "after": a}, a) for cells, a in counts]
    return looks


def _bind_targets(qa: QA, x: int, mix: Mix, label: int) -> list[dict]:
    """Binding targets of an "In Image X" answer about image `x` (0-based; its label `label`): each look
    of `_looks` in image x, the BIND_TOKENS tokens after image x at the same word, and with
    `mix.copy_label` the question's "Image X" at that word too."""
    targets = []
    for look, after in _looks(qa, mix):
        targets.append({"image": x, **look})
        targets.append({"image": x, "next_tokens": BIND_TOKENS, "after": after})
        if mix.copy_label:
            heads = {"heads": list(mix.copy_heads)} if mix.copy_heads else {}
            targets.append({"text": f"Image {label}", "after": after, "layer": COPY_LAYERS[1], **heads})
    return targets


def _label_target(x: int, start: int, mix: Mix) -> tuple[dict, ...]:
    """With `mix.copy_label`: the token right after image `x` (0-based) looks at that image's label number
    (`Mix.copy_label`)."""
    if not mix.copy_label:
        return ()
    heads = {"heads": list(mix.copy_heads)} if mix.copy_heads else {}
    return ({"image": x, "text": f"Image {start + x}", "query": "after_image", "layer": COPY_LAYERS[0],
             **heads},)  # fmt: skip


def _video_targets(q: Question, mix: Mix) -> list[dict]:
    """The frame and cell of the object a video answer names (`video_grounding`), if `mix.attend`; with
    `mix.count_look`, the objects of the last frame for "how many objects appeared?"."""
    targets = video_grounding(q) if mix.attend else []
    out = [{"video": 0, "frame": f, "box": _cell_box(cell), "after": after} for f, cell, after in targets]
    if mix.count_look and q.kind == "appear_count":
        last = len(q.video.frames) - 1
        boxes = [_cell_box(o.cell) for o in q.video.frames[last].objects]
        out.append({"video": 0, "frame": last, "boxes": boxes, "after": ""})
    return out


def _cell_box(cell: int) -> list[float]:
    """The box [x0, y0, x1, y1] of a cell of the 3x3 grid, in fractions of the picture."""
    row, col = divmod(cell, 3)
    return [round(col / 3, 4), round(row / 3, 4), round((col + 1) / 3, 4), round((row + 1) / 3, 4)]


def _start(rng: random.Random, mix: Mix, n: int) -> int:
    """1, or (with probability `mix.window`) a random first label of a window of `n` labels."""
    if mix.window <= 0 or rng.random() >= mix.window or n >= mix.max_label:
        return 1
    return rng.randint(1, mix.max_label - n + 1)


def _which_row(rng: random.Random, pool: ScenePool, n: int, mix: Mix) -> Row:
    kind = rng.choice(WHICH_KINDS)
    target = pool.pick(rng, (lambda s: s.word is not None) if kind == "which_word" else (lambda s: True))
    question, tail, has = which_property(pool.scenes[target], kind, rng)
    others = [pool.pick(rng, lambda s: not has(s)) for _ in range(n - 1)]
    x = rng.randint(1, n)
    others.insert(x - 1, target)
    start = _start(rng, mix, n)
    return Row(
        kind,
        list_prompt(n, question, start),
        f"Image {start + x - 1} {tail}",
        tuple(others),
        attend=_label_target(x - 1, start, mix),
        start=start,
        about=((x - 1, None),),  # the image the answer names: a question about it could give it away
    )


# ----------------------------------------------------------------------------------------- writing
def write_video(frames, path: Path) -> None:
    """Lossless RGB H.264 (libx264rgb, qp 0) at 1 fps: decoding gives the frames back bit-exactly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if "libx264rgb" not in av.codecs_available:
        raise Owl3Error("this PyAV build lacks libx264rgb, which the demo's lossless videos need")
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264rgb", rate=1)
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "rgb24"
        stream.options = {"qp": "0", "preset": "ultrafast"}
        for img in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")))
        out.mux(stream.encode())


def write_dataset(
    out_dir: str | Path, n_rows: int, *, mix: Mix, seed: int = 0, pool: int = 20_000, name: str = "rows"
) -> Path:
    """Write `n_rows` rows to `out_dir/{name}.jsonl`; returns that file.

    Rows come from the stream `train:{seed}:custom`, disjoint from the evaluation's `eval:` streams."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    scenes = ScenePool(pool, seed)
    # "custom": the stream's name from when mixes had names too (the shipped model's rows are drawn from it)
    rng = random.Random(f"train:{seed}:custom")
    written: set[int] = set()

    def image_path(i: int) -> str:
        rel = f"images/{i:06d}.png"
        if i not in written:
            render(scenes.scenes[i]).save(out / rel)
            written.add(i)
        return rel

    rows, kinds = [], Counter()
    for r in range(n_rows):
        row = draw_row(rng, scenes, mix)
        kinds[row.kind] += 1
        record: dict = {"messages": _messages(((row.prompt, row.answer), *row.more))}
        images = [image_path(i) for i in row.images]
        if images:
            record["images"] = images
        if row.video is not None:
            rel = f"videos/{name}-{r:06d}.mp4"
            write_video(row.video.render_video(), out / rel)
            record["videos"] = [rel]
        if row.attend:
            record["attend"] = list(row.attend)
        rows.append(record)
    target = out / f"{name}.jsonl"
    with open(target, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    manifest = {
        "rows": n_rows, "seed": seed, "pool": pool, "mix": asdict(mix), "kinds": dict(sorted(kinds.items())),
    }  # fmt: skip
    (out / f"{name}.manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return target


def _messages(turns: tuple[tuple[str, str], ...]) -> list[dict]:
    """ms-swift messages of (question, answer) turns, the first with the media placeholders."""
    out = []
    for q, a in turns:
        out.append({"role": "user", "content": q.replace(IMAGE, "<image>").replace(VIDEO, "<video>")})
        out.append({"role": "assistant", "content": a})
    return out


__all__ = ["BIND_TOKENS", "COPY_LAYERS", "Mix", "ScenePool", "draw_row", "write_dataset", "write_video"]
