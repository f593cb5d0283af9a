"""Questions and short-sentence answers about the synthetic world, in the mPLUG-Owl3 prompt format.

- single image: `<|image|>\\nWhat colour is the star?` -> `The star is red.`
- several images, about one of them (the paper's distractor format):
  `Image 1: <|image|> Image 2: <|image|> ... Image N: <|image|>. In Image X, what colour is the star?`
- several images, find the one: `Image 1: <|image|> ... Image N: <|image|>. Which image has two circles?`
  -> `Image 3 has two circles.`
- video (frames fed as one `<|video|>`): `<|video|>\\nWhat appeared after the red square?`
  -> `The blue circle appeared after the red square.`

Every question is answerable from its media alone and has exactly one right answer (questions that
would be ambiguous for a scene are never asked about it). Deterministic given the `random.Random`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

from owl3.demo.world import (
    CELL_NAMES,
    COLOURS,
    DEFAULT_SIZE,
    SHAPES,
    VIDEO_KINDS,
    WORDS,
    Scene,
    Video,
    random_scene,
    random_video,
    render,
)

IMAGE = "<|image|>"
VIDEO = "<|video|>"
NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SINGLE_KINDS = (
    "colour", "shape", "count_shape", "count_colour", "count_all",
    "position", "size", "exists", "word", "word_colour",
)  # fmt: skip
WORD_KINDS = ("word", "word_colour")
WHICH_KINDS = ("which_count", "which_has", "which_word", "which_total")
VIDEO_QUESTION_KINDS = {
    "appear": ("appear_after", "appear_first", "appear_last", "appear_count"),
    "move": ("move_direction", "move_what"),
    "recolour": ("recolour_after", "recolour_before", "recolour_what"),
}
MOVES = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}


@dataclass(frozen=True)
class QA:
    kind: str
    question: str  # a full sentence, capitalised: "What colour is the star?"
    answer: str
    subject: str | None = None  # the shape asked about, if any (hard distractors show it too)
    cell: int | None = None  # the cell of the one object the answer is read from (colour/shape/position/size)
    # an answer that says "there is none" ("No, there is no blue square.", "There are no circles."): the
    # cells that show nothing (no object, no word), where a look for the missing thing lands
    empty: tuple[int, ...] = ()
    # a count ("How many ... are there?"): the cells of the counted objects (empty for a count of none)
    counted: tuple[int, ...] = ()

    def grounding(self) -> list[tuple[int, str]]:
        """(cell, the answer before a word read from that object) for each such word: "The star is" of "The
        star is red."; "The star is in the" and "The star is in the top" of "The star is in the top
        left."; "" (the first word) of "Yes, there is a red star.". Empty when no one object decides."""
        if self.cell is None:
            return []
        if self.kind == "exists":
            return [(self.cell, "")]
        if self.kind == "position":
            name = CELL_NAMES[self.cell]
            start = self.answer.rindex(" " + name + ".")
            words = name.split(" ")
            return [
                (self.cell, self.answer[:start] + "".join(" " + w for w in words[:i]))
                for i in range(len(words))
            ]
        return [(self.cell, self.answer[: self.answer.rindex(" ")])]

    def absence(self) -> list[tuple[tuple[int, ...], str]]:
        """(the empty cells, the answer before a word that says "none") for each such word of an answer that
        says there is none: "" of "No, there is no blue square."; "There" and "There are" of "There are no
        circles." ("are", not "is", is already the count's first word); else empty."""
        if not self.empty:
            return []
        if self.kind == "exists":
            return [(self.empty, "")]
        return [(self.empty, "There"), (self.empty, "There are")]

    def count_looks(self) -> list[tuple[tuple[int, ...], str]]:
        """(the counted objects' cells, the answer before a word that says how many) for a count of one or
        more: "There" and "There is" of "There is one star."; "There" and "There are" of "There are two
        stars."; else empty (a count of none: `absence`)."""
        if not self.counted:
            return []
        return [(self.counted, "There"), (self.counted, " ".join(self.answer.split(" ")[:2]))]


@dataclass(frozen=True)
class Question:
    """One question with its media: images fill the `<|image|>`s in order, the video the `<|video|>`."""

    kind: str
    prompt: str  # the user turn, with placeholders
    answer: str
    images: tuple[Scene, ...] = ()
    video: Video | None = None
    target: int | None = None  # the 1-based image the question is about (or the answer of "which")

    @property
    def n_images(self) -> int:
        return len(self.images)

    def render_images(self, size: int = DEFAULT_SIZE) -> list[Image.Image]:
        return [render(s, size) for s in self.images]

    def render_video(self, size: int = DEFAULT_SIZE) -> list[Image.Image]:
        return self.video.render(size) if self.video is not None else []


# ------------------------------------------------------------------------------------- sentences
def plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x")) else "s")


def count_sentence(n: int, noun: str) -> str:
    if n == 1:
        return f"There is one {noun}."
    return f"There are {NUMBERS[n]} {plural(noun)}."


def has_phrase(n: int, noun: str) -> str:
    return f"one {noun}" if n == 1 else f"{NUMBERS[n]} {plural(noun)}"


def refer(scene: Scene, obj) -> str | None:
    """The shortest unambiguous name of an object ("star", "red star"), or None if there is none."""
    if scene.count(shape=obj.shape) == 1:
        return obj.shape
    if scene.count(shape=obj.shape, colour=obj.colour) == 1:
        return f"{obj.colour} {obj.shape}"
    return None


def lower_first(s: str) -> str:
    return s[:1].lower() + s[1:]


def empty_cells(scene: Scene) -> tuple[int, ...]:
    """The cells of the 3x3 grid that show nothing: no object, not the word's row."""
    taken = {o.cell for o in scene.objects}
    if scene.word is not None:
        taken |= {3 * scene.word.row + c for c in range(3)}
    return tuple(c for c in range(9) if c not in taken)


# ------------------------------------------------------------------------------------- one scene
def ask(scene: Scene, kind: str, rng: random.Random) -> QA | None:
    """A question of `kind` about `scene`, or None if the scene cannot answer one unambiguously."""
    objs = list(scene.objects)
    if kind == "colour":
        cands = [o for o in objs if scene.count(shape=o.shape) == 1]
        if not cands:
            return None
        o = rng.choice(cands)
        return QA(kind, f"What colour is the {o.shape}?", f"The {o.shape} is {o.colour}.", o.shape, o.cell)
    if kind == "shape":
        cands = [o for o in objs if scene.count(colour=o.colour) == 1]
        if not cands:
            return None
        o = rng.choice(cands)
        answer = f"The {o.colour} object is a {o.shape}."
        return QA(kind, f"What shape is the {o.colour} object?", answer, None, o.cell)
    if kind == "count_shape":
        present = sorted({o.shape for o in objs})
        shape = rng.choice(present) if present and rng.random() < 0.8 else rng.choice(SHAPES)
        counted = tuple(o.cell for o in objs if o.shape == shape)
        empty = () if counted else empty_cells(scene)
        question, answer = f"How many {plural(shape)} are there?", count_sentence(len(counted), shape)
        return QA(kind, question, answer, shape, empty=empty, counted=counted)
    if kind == "count_colour":
        present = sorted({o.colour for o in objs})
        colour = rng.choice(present) if present and rng.random() < 0.8 else rng.choice(tuple(COLOURS))
        counted = tuple(o.cell for o in objs if o.colour == colour)
        question = f"How many {colour} objects are there?"
        answer = count_sentence(len(counted), f"{colour} object")
        return QA(kind, question, answer, empty=() if counted else empty_cells(scene), counted=counted)
    if kind == "count_all":
        counted = tuple(o.cell for o in objs)
        return QA(kind, "How many objects are there?", count_sentence(len(objs), "object"), counted=counted)
    if kind in ("position", "size"):
        cands = [(o, r) for o in objs if (r := refer(scene, o)) is not None]
        if not cands:
            return None
        o, r = rng.choice(cands)
        if kind == "position":
            return QA(kind, f"Where is the {r}?", f"The {r} is in the {CELL_NAMES[o.cell]}.", o.shape, o.cell)
        return QA(kind, f"Is the {r} big or small?", f"The {r} is {o.size}.", o.shape, o.cell)
    if kind == "exists":
        if objs and rng.random() < 0.5:
            o = rng.choice(objs)
            colour, shape, yes = o.colour, o.shape, True
        else:  # a near miss when possible: a present shape in another colour, or the reverse
            o = rng.choice(objs) if objs else None
            for _ in range(20):
                colour, shape = rng.choice(tuple(COLOURS)), rng.choice(SHAPES)
                if o is not None and rng.random() < 0.7:
                    colour, shape = (colour, o.shape) if rng.random() < 0.5 else (o.colour, shape)
                if scene.count(shape=shape, colour=colour) == 0:
                    break
            yes = scene.count(shape=shape, colour=colour) > 0
        answer = f"Yes, there is a {colour} {shape}." if yes else f"No, there is no {colour} {shape}."
        # a lone match decides "Yes" (the near-miss loop can land on a present pair by chance: any match)
        matches = [o.cell for o in objs if (o.shape, o.colour) == (shape, colour)]
        cell = matches[0] if yes and len(matches) == 1 else None
        empty = () if yes else empty_cells(scene)
        return QA(kind, f"Is there a {colour} {shape}?", answer, shape, cell, empty)
    if kind == "word":
        if scene.word is None:
            return None
        return QA(kind, "What word is written?", f"The word is {scene.word.text}.")
    if kind == "word_colour":
        if scene.word is None:
            return None
        return QA(kind, "What colour is the word?", f"The word is {scene.word.colour}.")
    raise ValueError(f"unknown question kind {kind!r}")


def scene_and_qa(rng: random.Random, kind: str) -> tuple[Scene, QA]:
    """A fresh scene that can answer a question of `kind`, and that question."""
    while True:
        scene = random_scene(rng, word=kind in WORD_KINDS or None)
        qa = ask(scene, kind, rng)
        if qa is not None:
            return scene, qa


def single_question(rng: random.Random, kind: str | None = None) -> Question:
    kind = kind or rng.choice(SINGLE_KINDS)
    scene, qa = scene_and_qa(rng, kind)
    return Question(kind, f"{IMAGE}\n{qa.question}", qa.answer, (scene,), target=1)


# ------------------------------------------------------------------------------------- many images
def image_list(n: int, start: int = 1) -> str:
    """`Image 1: <|image|> Image 2: <|image|> ... Image N: <|image|>` (the paper's layout); `start` numbers
    the images from there on (training windows of a longer list)."""
    return " ".join(f"Image {i}: {IMAGE}" for i in range(start, start + n))


def list_prompt(n: int, question: str, start: int = 1) -> str:
    """A question about a list of `n` images, after them: `Image 1: <|image|> ... Image N: <|image|>.
    QUESTION` (the paper's order)."""
    return f"{image_list(n, start)}. {question}"


def multi_question(
    rng: random.Random, n_images: int, kind: str | None = None, target: int | None = None
) -> Question:
    """A single-image question about Image X among n_images: `... In Image X, what colour is the star?`;
    the distractors are random scenes."""
    if n_images == 1:
        return single_question(rng, kind)
    kind = kind or rng.choice(SINGLE_KINDS)
    target = target or rng.randint(1, n_images)
    scene, qa = scene_and_qa(rng, kind)
    images = []
    for _ in range(n_images - 1):
        # a draw that once chose a hard distractor (never in use); the world tokenizer's corpus is these
        # draws, so it stays
        rng.random()
        images.append(random_scene(rng))
    images.insert(target - 1, scene)
    prompt = list_prompt(n_images, f"In Image {target}, {lower_first(qa.question)}")
    return Question(kind, prompt, qa.answer, tuple(images), target=target)


def which_property(scene: Scene, kind: str, rng: random.Random):
    """(question, answer tail, predicate) for a property `scene` has, or None."""
    objs = scene.objects
    if kind == "which_count":
        shape = rng.choice(sorted({o.shape for o in objs}))
        n = scene.count(shape=shape)
        return (
            f"Which image has {has_phrase(n, shape)}?",
            f"has {has_phrase(n, shape)}.",
            (lambda s: s.count(shape=shape) == n),
        )
    if kind == "which_has":
        o = rng.choice(objs)
        return (
            f"Which image has a {o.colour} {o.shape}?",
            f"has a {o.colour} {o.shape}.",
            (lambda s: s.count(shape=o.shape, colour=o.colour) > 0),
        )
    if kind == "which_word":
        if scene.word is None:
            return None
        w = scene.word.text
        return (
            f"Which image shows the word {w}?",
            f"shows the word {w}.",
            (lambda s: s.word is not None and s.word.text == w),
        )
    if kind == "which_total":
        n = len(objs)
        return (
            f"Which image has {has_phrase(n, 'object')}?",
            f"has {has_phrase(n, 'object')}.",
            (lambda s: len(s.objects) == n),
        )
    raise ValueError(f"unknown question kind {kind!r}")


def which_question(
    rng: random.Random, n_images: int, kind: str | None = None, target: int | None = None
) -> Question:
    """`Image 1: <|image|> ... Image N: <|image|>. Which image has two circles?` -> `Image 3 has two
    circles.`; exactly one image has the property."""
    kind = kind or rng.choice(WHICH_KINDS)
    target = target or rng.randint(1, n_images)
    scene = random_scene(rng, word=kind == "which_word" or None)
    question, tail, has = which_property(scene, kind, rng)
    images = []
    for _ in range(n_images - 1):
        other = random_scene(rng)
        while has(other):
            other = random_scene(rng)
        images.append(other)
    images.insert(target - 1, scene)
    prompt = list_prompt(n_images, question)
    return Question(kind, prompt, f"Image {target} {tail}", tuple(images), target=target)


# ------------------------------------------------------------------------------------- videos
def video_qa(video: Video, kind: str, rng: random.Random) -> tuple[str, str]:
    s = video.script
    if kind.startswith("appear_"):
        names = [f"{o.colour} {o.shape}" for o in s]
        if kind == "appear_after":
            i = rng.randrange(len(names) - 1)
            return (
                f"What appeared after the {names[i]}?",
                f"The {names[i + 1]} appeared after the {names[i]}.",
            )
        if kind == "appear_first":
            return "What appeared first?", f"The {names[0]} appeared first."
        if kind == "appear_last":
            return "What appeared last?", f"The {names[-1]} appeared last."
        return "How many objects appeared?", f"{NUMBERS[len(names)].capitalize()} objects appeared."
    if kind.startswith("move_"):
        obj, direction = s
        name = f"{obj.colour} {obj.shape}"
        if kind == "move_direction":
            return f"Which way did the {name} move?", f"The {name} moved {MOVES[direction]}."
        return "What moved?", f"The {name} moved."
    if kind.startswith("recolour_"):
        before, after = s
        if kind == "recolour_after":
            return f"What colour did the {before.shape} turn?", f"The {before.shape} turned {after.colour}."
        if kind == "recolour_before":
            return (
                f"What colour was the {before.shape} at the start?",
                f"The {before.shape} was {before.colour} at the start.",
            )
        return "What changed colour?", f"The {before.shape} changed colour."
    raise ValueError(f"unknown video question kind {kind!r}")


def video_question(
    rng: random.Random, kind: str | None = None, n_frames: int = 8, video_kind: str | None = None
) -> Question:
    if kind is not None:
        video_kind = next(v for v, ks in VIDEO_QUESTION_KINDS.items() if kind in ks)
    video_kind = video_kind or rng.choice(VIDEO_KINDS)
    video = random_video(rng, video_kind, n_frames)
    kind = kind or rng.choice(VIDEO_QUESTION_KINDS[video_kind])
    question, answer = video_qa(video, kind, rng)
    return Question(kind, f"{VIDEO}\n{question}", answer, video=video)


def video_grounding(q: Question) -> list[tuple[int, int, str]]:
    """(frame, cell, the answer before a word read from that object) for video answers that name one
    object seen at one moment: what appeared first / last / after X (the frame it appeared in) and what
    moved (the first frame). Empty for the others (counts, directions, colour changes)."""
    if q.video is None or q.kind not in ("appear_after", "appear_first", "appear_last", "move_what"):
        return []
    _, colour, shape = q.answer.split(" ")[:3]  # "The blue circle appeared ..." / "The red square moved."
    shape = shape.rstrip(".")
    frame = next(
        f
        for f, scene in enumerate(q.video.frames)
        if any((o.colour, o.shape) == (colour, shape) for o in scene.objects)
    )
    obj = next(o for o in q.video.frames[frame].objects if (o.colour, o.shape) == (colour, shape))
    return [(frame, obj.cell, "The"), (frame, obj.cell, f"The {colour}")]


ALL_VIDEO_KINDS = tuple(k for ks in VIDEO_QUESTION_KINDS.values() for k in ks)
__all__ = [
    "ALL_VIDEO_KINDS", "IMAGE", "QA", "Question", "SINGLE_KINDS", "VIDEO", "WHICH_KINDS", "WORDS", "ask",
    "empty_cells", "image_list", "list_prompt", "multi_question", "single_question",
    "video_grounding", "video_question", "which_question",
]  # fmt: skip
