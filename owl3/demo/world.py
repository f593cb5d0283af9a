"""A procedurally generated visual world: scenes of coloured shapes and short words, drawn with PIL.

A scene is a 3x3 grid of cells holding at most one object each (a shape with a colour and a size,
jittered inside its cell) and, optionally, one written word across a whole row. Scenes are plain frozen
data in unit coordinates, so the same scene renders at any canvas size; a video is a tuple of scenes
(its frames). Everything is drawn without anti-aliasing on a flat grey background, so each object is one
connected blob of exactly its palette colour (the tests count shapes by pixel colour).

Generation is deterministic: every function takes a `random.Random` and draws from nothing else.
Questions about scenes live in `questions.py`; this file knows nothing of text prompts.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross", "heart")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (245, 215, 30),
    "purple": (150, 50, 200),
    "orange": (250, 140, 20),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
}
SIZES = ("small", "big")
BACKGROUND = (128, 128, 128)
# cell index = row * 3 + col
CELL_NAMES = (
    "top left", "top middle", "top right",
    "middle left", "center", "middle right",
    "bottom left", "bottom middle", "bottom right",
)  # fmt: skip
WORDS = ("CAT", "DOG", "SUN", "KEY", "FISH", "BIRD", "TREE", "MOON", "CAKE", "LAMP", "SHIP", "BOOK")
RADIUS = {"small": 0.24, "big": 0.38}  # in cell units
MAX_EXTENT = 0.46  # an object never leaves [0.04, 0.96] of its cell: neighbours never touch
DEFAULT_SIZE = 84  # the demo model's image size: a 6x6 grid of 14-px patches


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    cell: int  # 0..8, row-major
    dx: float = 0.0  # centre offset inside the cell, in cell units
    dy: float = 0.0

    @property
    def row(self) -> int:
        return self.cell // 3

    @property
    def col(self) -> int:
        return self.cell % 3


@dataclass(frozen=True)
class Word:
    text: str
    colour: str
    row: int  # the word fills this row of the grid; no object shares it
    x: float  # left edge of the text, in units of the canvas width


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...] = ()
    word: Word | None = None

    def count(self, shape: str | None = None, colour: str | None = None) -> int:
        return sum(
            1
            for o in self.objects
            if (shape is None or o.shape == shape) and (colour is None or o.colour == colour)
        )

    def with_objects(self, objects: tuple[Obj, ...]) -> Scene:
        return replace(self, objects=tuple(sorted(objects, key=lambda o: o.cell)))


# ---------------------------------------------------------------------------------------- generation
def random_object(rng: random.Random, cell: int, **fixed: str) -> Obj:
    size = fixed.get("size") or rng.choice(SIZES)
    room = MAX_EXTENT - RADIUS[size]
    return Obj(
        shape=fixed.get("shape") or rng.choice(SHAPES),
        colour=fixed.get("colour") or rng.choice(tuple(COLOURS)),
        size=size,
        cell=cell,
        dx=round(rng.uniform(-room, room), 3),
        dy=round(rng.uniform(-room, room), 3),
    )


def random_word(rng: random.Random, row: int, size: int = DEFAULT_SIZE) -> Word:
    text = rng.choice(WORDS)
    width = text_width(text, glyph_scale(size)) / size
    return Word(text, rng.choice(tuple(COLOURS)), row, round(rng.uniform(0.04, 0.96 - width), 3))


def random_scene(
    rng: random.Random, n_objects: int | None = None, word: bool | None = None, max_objects: int = 4
) -> Scene:
    """A scene of 1..max_objects objects (in distinct cells) and, if `word` (else 20% of the time), a word."""
    if word is None:
        word = rng.random() < 0.2
    w = random_word(rng, rng.randrange(3)) if word else None
    cells = [c for c in range(9) if w is None or c // 3 != w.row]
    n = n_objects if n_objects is not None else rng.randint(1, max_objects)
    n = min(n, len(cells))
    objs = tuple(random_object(rng, c) for c in sorted(rng.sample(cells, n)))
    return Scene(objs, w)


def free_cells(scene: Scene, exclude: tuple[int, ...] = ()) -> list[int]:
    used = {o.cell for o in scene.objects} | set(exclude)
    return [c for c in range(9) if c not in used and (scene.word is None or c // 3 != scene.word.row)]


# ---------------------------------------------------------------------------------------- rendering
def render(scene: Scene, size: int = DEFAULT_SIZE) -> Image.Image:
    """Draw a scene on a size x size RGB canvas."""
    img = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    cell = size / 3
    for o in scene.objects:
        cx = (o.col + 0.5 + o.dx) * cell
        cy = (o.row + 0.5 + o.dy) * cell
        draw_shape(draw, o.shape, cx, cy, RADIUS[o.size] * cell, COLOURS[o.colour])
    if scene.word is not None:
        w = scene.word
        scale = glyph_scale(size)
        top = round((w.row + 0.5) * cell - 3.5 * scale)
        draw_text(draw, w.text, round(w.x * size), top, scale, COLOURS[w.colour])
    return img


def _regular(cx: float, cy: float, r: float, n: int, phase: float) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(phase + 2 * math.pi * i / n), cy + r * math.sin(phase + 2 * math.pi * i / n))
        for i in range(n)
    ]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    up = -math.pi / 2
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=fill)
    elif shape == "star":
        outer, inner = _regular(cx, cy, r, 5, up), _regular(cx, cy, r * 0.45, 5, up + math.pi / 5)
        draw.polygon([p for pair in zip(outer, inner, strict=True) for p in pair], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)], fill=fill)
    elif shape == "hexagon":
        draw.polygon(_regular(cx, cy, r, 6, 0.0), fill=fill)
    elif shape == "cross":
        a = r * 0.36
        draw.rectangle((cx - r, cy - a, cx + r, cy + a), fill=fill)
        draw.rectangle((cx - a, cy - r, cx + a, cy + r), fill=fill)
    elif shape == "heart":
        pts = []
        for i in range(32):
            t = 2 * math.pi * i / 32
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + x / 17 * r, cy - (y + 2.5) / 17 * r))
        draw.polygon(pts, fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


# A 5x7 pixel font (upper case), so words render identically everywhere, with no font file.
_FONT = {
    "A": "01110 10001 10001 11111 10001 10001 10001", "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01110 10001 10000 10000 10000 10001 01110", "D": "11100 10010 10001 10001 10001 10010 11100",
    "E": "11111 10000 10000 11110 10000 10000 11111", "F": "11111 10000 10000 11110 10000 10000 10000",
    "G": "01110 10001 10000 10111 10001 10001 01111", "H": "10001 10001 10001 11111 10001 10001 10001",
    "I": "01110 00100 00100 00100 00100 00100 01110", "J": "00111 00010 00010 00010 00010 10010 01100",
    "K": "10001 10010 10100 11000 10100 10010 10001", "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001", "N": "10001 10001 11001 10101 10011 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110", "P": "11110 10001 10001 11110 10000 10000 10000",
    "Q": "01110 10001 10001 10001 10101 10010 01101", "R": "11110 10001 10001 11110 10100 10010 10001",
    "S": "01111 10000 10000 01110 00001 00001 11110", "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110", "V": "10001 10001 10001 10001 10001 01010 00100",
    "W": "10001 10001 10001 10101 10101 10101 01010", "X": "10001 10001 01010 00100 01010 10001 10001",
    "Y": "10001 10001 10001 01010 00100 00100 00100", "Z": "11111 00001 00010 00100 01000 10000 11111",
}  # fmt: skip


def glyph_scale(size: int) -> int:
    """Pixels per font dot: 2 at 84 px, so a letter is 10x14."""
    return max(1, size // 42)


def text_width(text: str, scale: int) -> int:
    return (6 * len(text) - 1) * scale


def draw_text(draw: ImageDraw.ImageDraw, text: str, left: int, top: int, scale: int, fill) -> None:
    for k, ch in enumerate(text):
        rows = _FONT[ch].split()
        x0 = left + 6 * k * scale
        for j, bits in enumerate(rows):
            for i, bit in enumerate(bits):
                if bit == "1":
                    x, y = x0 + i * scale, top + j * scale
                    draw.rectangle((x, y, x + scale - 1, y + scale - 1), fill=fill)


# ---------------------------------------------------------------------------------------- videos
@dataclass(frozen=True)
class Video:
    """A short clip: its frames (scenes) and the script that produced them."""

    kind: str  # "appear", "move" or "recolour"
    frames: tuple[Scene, ...]
    # appear: the objects in order of appearance; move: (object, direction); recolour: (before, after)
    script: tuple

    def render(self, size: int = DEFAULT_SIZE) -> list[Image.Image]:
        return [render(f, size) for f in self.frames]


VIDEO_KINDS = ("appear", "move", "recolour")
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


def random_video(rng: random.Random, kind: str | None = None, n_frames: int = 8) -> Video:
    if n_frames < 2:
        raise ValueError(f"a video needs at least 2 frames, got {n_frames}")
    kind = kind or rng.choice(VIDEO_KINDS)
    if kind == "appear":
        return _appear_video(rng, n_frames)
    if kind == "move":
        return _move_video(rng, n_frames)
    if kind == "recolour":
        return _recolour_video(rng, n_frames)
    raise ValueError(f"unknown video kind {kind!r}")


def _distinct_objects(rng: random.Random, n: int, cells: list[int]) -> list[Obj]:
    """n objects with pairwise different (colour, shape), in distinct cells."""
    seen: set[tuple[str, str]] = set()
    out: list[Obj] = []
    for c in rng.sample(cells, n):
        while True:
            o = random_object(rng, c)
            if (o.colour, o.shape) not in seen:
                break
        seen.add((o.colour, o.shape))
        out.append(o)
    return out


def _appear_video(rng: random.Random, n_frames: int) -> Video:
    """3-4 objects appear one after another (one per chosen frame) and stay."""
    n = rng.randint(min(3, n_frames), min(4, n_frames))
    objs = _distinct_objects(rng, n, list(range(9)))
    first = rng.choice((0, 1)) if n_frames > n else 0
    times = sorted([first] + rng.sample(range(first + 1, n_frames), n - 1))
    frames = tuple(Scene().with_objects(tuple(o for o, t in zip(objs, times, strict=True) if t <= f))
                   for f in range(n_frames))  # fmt: skip
    return Video("appear", frames, tuple(objs))


def _move_video(rng: random.Random, n_frames: int) -> Video:
    """One object slides two cells along a row or column; 0-2 others stay put."""
    direction = rng.choice(tuple(DIRECTIONS))
    dr, dc = DIRECTIONS[direction]
    line = rng.randrange(3)  # the row (horizontal move) or column (vertical move) it travels along
    path = [line * 3 + i for i in range(3)] if dr == 0 else [i * 3 + line for i in range(3)]
    if dr + dc < 0:
        path.reverse()
    others = [c for c in range(9) if c not in path]
    objs = _distinct_objects(rng, 1 + rng.randint(0, 2), others)
    mover, still = replace(objs[0], dx=0.0, dy=0.0), objs[1:]  # the mover's cell is set per frame
    frames = []
    for f in range(n_frames):
        t = 2 * f / max(1, n_frames - 1)  # 0 .. 2 cells travelled
        step = min(int(t), 1)
        frac = t - step
        cell = path[step]
        moved = replace(mover, cell=cell, dx=dc * frac, dy=dr * frac)
        frames.append(Scene().with_objects((moved, *still)))
    return Video("move", tuple(frames), (mover, direction))


def _recolour_video(rng: random.Random, n_frames: int) -> Video:
    """One object (of a shape no other object has) changes colour at a frame in the middle."""
    n = rng.randint(1, 3)
    objs = _distinct_objects(rng, n, list(range(9)))
    while len({o.shape for o in objs}) < n:
        objs = _distinct_objects(rng, n, list(range(9)))
    target = objs[0]
    after = replace(target, colour=rng.choice([c for c in COLOURS if c != target.colour]))
    change = rng.randint(max(1, n_frames // 4), max(1, n_frames - n_frames // 4 - 1))
    frames = tuple(
        Scene().with_objects(((target if f < change else after), *objs[1:])) for f in range(n_frames)
    )
    return Video("recolour", frames, (target, after))
