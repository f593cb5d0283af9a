"""`owl3 demo`: draw a few pictures and a short video of the synthetic world, ask the model about them.

Offline and deterministic by `--seed`: five images (PNG) and one 8-frame video (mp4) are written to a
folder (a temporary one unless `--output DIR`), then the model (default: the built-in demo model) answers
single-image questions, "In Image X" questions about all five images, a "which image" question and video
questions, greedily, in one batch. A table shows each question, the model's answer, the correct answer
and ✓/✗; then the score and the time taken. Scenes come from the stream `demo:{seed}`, which neither the
training data (`train:`) nor the evaluation (`eval:`) uses.

`owl3 demo-train OUT` trains the demo model from scratch (see owl3/demo/train.py).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from owl3.demo import DEFAULT_LENGTH_SPLIT, DEFAULT_THREADS
from owl3.errors import Owl3Error

N_IMAGES = 5
N_FRAMES = 8


@dataclass(frozen=True)
class DemoQuestion:
    label: str  # what the table shows for the media: "image 2", "images 1-5", "video"
    question: str  # the text question, without placeholders
    prompt: str  # the user turn with placeholders
    answer: str
    images: tuple[str, ...] = ()
    videos: tuple[str, ...] = ()


def make_demo(out_dir: str | Path, seed: int = 0) -> list[DemoQuestion]:
    """Write the demo's images and video to `out_dir` and return its questions (deterministic)."""
    from owl3.demo.data import write_video
    from owl3.demo.questions import (
        IMAGE,
        SINGLE_KINDS,
        VIDEO,
        VIDEO_QUESTION_KINDS,
        WHICH_KINDS,
        ask,
        list_prompt,
        lower_first,
        video_qa,
        which_property,
    )
    from owl3.demo.world import random_scene, random_video, render

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"demo:{seed}")
    scenes = [random_scene(rng) for _ in range(N_IMAGES)]
    paths = []
    for i, scene in enumerate(scenes, 1):
        path = out / f"image{i}.png"
        render(scene).save(path)
        paths.append(str(path))

    def qa_for(scene, kinds):
        for _ in range(100):
            qa = ask(scene, rng.choice(kinds), rng)
            if qa is not None:
                return qa
        raise RuntimeError("no question fits this scene")  # never: every scene has a colour question

    qs: list[DemoQuestion] = []
    for i in (1, 2):  # one image each
        qa = qa_for(scenes[i - 1], SINGLE_KINDS)
        qs.append(
            DemoQuestion(f"image {i}", qa.question, f"{IMAGE}\n{qa.question}", qa.answer, (paths[i - 1],))
        )
    all_images = f"images 1-{N_IMAGES}"
    for x in rng.sample(range(1, N_IMAGES + 1), 3):  # "In Image X" among all five
        qa = qa_for(scenes[x - 1], SINGLE_KINDS)
        text = f"In Image {x}, {lower_first(qa.question)}"
        prompt = list_prompt(N_IMAGES, text)
        qs.append(DemoQuestion(all_images, text, prompt, qa.answer, tuple(paths)))
    for _ in range(1000):  # "which image": a property exactly one of the five has
        x = rng.randint(1, N_IMAGES)
        found = which_property(scenes[x - 1], rng.choice(WHICH_KINDS), rng)
        if found is None:
            continue
        question, tail, has = found
        if sum(bool(has(s)) for s in scenes) == 1:
            qs.append(
                DemoQuestion(
                    all_images,
                    question,
                    list_prompt(N_IMAGES, question),
                    f"Image {x} {tail}",
                    tuple(paths),
                )
            )
            break
    video = random_video(rng, n_frames=N_FRAMES)
    video_path = out / "video.mp4"
    write_video(video.render(), video_path)
    for kind in rng.sample(VIDEO_QUESTION_KINDS[video.kind], 2):
        question, answer = video_qa(video, kind, rng)
        qs.append(DemoQuestion("video", question, f"{VIDEO}\n{question}", answer, videos=(str(video_path),)))
    return qs


def run_demo(pipe, questions: list[DemoQuestion]) -> list[tuple[DemoQuestion, str, bool]]:
    from owl3.api import Conversation
    from owl3.evaluation.task import normalize

    convs = [
        Conversation(
            q.prompt, images=list(q.images), videos=list(q.videos), cut=False, extra={"frames": N_FRAMES}
        )
        for q in questions
    ]
    answers = pipe.chat_batch(convs, max_new_tokens=32, temperature=0.0)
    return [(q, a, normalize(a) == normalize(q.answer)) for q, a in zip(questions, answers, strict=True)]


def format_results(results: list[tuple[DemoQuestion, str, bool]]) -> str:
    head = ("#", "media", "question", "model answer", "correct answer", "")
    rows = [
        (str(i), q.label, q.question, a, q.answer, "✓" if ok else "✗")
        for i, (q, a, ok) in enumerate(results, 1)
    ]
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(tuple("-" * w for w in widths)), *map(line, rows)])


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`owl3 demo`, `owl3 demo-train` and `owl3 eval synthetic`."""
    from owl3.demo.evaluate import add_eval_parser
    from owl3.options import add_model_args

    d = sub.add_parser(
        "demo",
        help="draw pictures and a video of the synthetic world and ask the model about them",
        description="Draw five pictures and an 8-frame video of owl3's synthetic world, ask the model "
        "(default: the built-in demo model, trained from scratch by owl3) single-image, 'In Image X', "
        "'which image' and video questions, and print its answers next to the correct ones.",
    )
    d.add_argument("--seed", type=int, default=0, help="which pictures and questions (default 0)")
    d.add_argument("--output", metavar="DIR", default=None, help="keep the pictures and video here")
    add_model_args(d)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser(
        "demo-train",
        help="train the built-in demo model from scratch (57 min on 2 AVX-512 CPU cores; AVX2 about 2x)",
        description="Train the demo model from scratch into OUT/model: tokenizer, initial checkpoint, "
        "curriculum data and owl3's training code, phase by phase (owl3/demo/train.py).",
    )
    t.add_argument("out", help="output folder")
    t.add_argument("--scale", type=float, default=1.0, help="multiply every phase's steps (0.01: smoke test)")
    t.add_argument(
        "--threads", type=int, default=DEFAULT_THREADS,
        help=f"torch CPU threads (default {DEFAULT_THREADS}, as the shipped weights were trained; another "
        "count writes other weights)",
    )  # fmt: skip
    t.add_argument("--workers", type=int, default=1, help="data loader processes (default 1)")
    t.add_argument(
        "--length-split", type=int, default=DEFAULT_LENGTH_SPLIT, metavar="K",
        help=f"compute each batch as K pieces of similar length: less padding, the same steps "
        f"(default {DEFAULT_LENGTH_SPLIT})",
    )  # fmt: skip
    t.add_argument(
        "--seed", type=int, default=0,
        help="the initial weights and every phase's training rows (default 0, the shipped weights' seed)",
    )  # fmt: skip
    t.set_defaults(func=cmd_demo_train)
    add_eval_parser(sub)


def cmd_demo(args: argparse.Namespace) -> int:
    from owl3.options import load_pipeline

    t0 = time.perf_counter()
    folder = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="owl3-demo-"))
    questions = make_demo(folder, args.seed)
    pipe = load_pipeline(args)
    t1 = time.perf_counter()
    results = run_demo(pipe, questions)
    t2 = time.perf_counter()
    n_ok = sum(ok for *_, ok in results)
    print(f"model: {pipe.path}")
    print(f"media: {folder}/image1.png ... image{N_IMAGES}.png, {folder}/video.mp4 ({N_FRAMES} frames)")
    print()
    print(format_results(results))
    print()
    print(
        f"{n_ok}/{len(results)} correct; answered {len(results)} questions in {t2 - t1:.1f} s "
        f"(drawing and loading {t1 - t0:.1f} s, total {t2 - t0:.1f} s)"
    )
    return 0


def cmd_demo_train(args: argparse.Namespace) -> int:
    from owl3.demo.train import train_demo

    if args.scale <= 0 or args.threads < 1 or args.workers < 0 or args.length_split < 1:
        raise Owl3Error("--scale must be > 0, --threads and --length-split at least 1, --workers at least 0")
    train_demo(
        args.out,
        scale=args.scale,
        threads=args.threads,
        workers=args.workers,
        length_split=args.length_split,
        seed=args.seed,
        say=lambda s: print(s, file=sys.stderr),
    )
    return 0
