"""Answers with evidence: retrieve knowledge items, put them in the prompt, answer, cite them.

The prompt follows the mPLUG-Owl3 release's retrieval demo: the K retrieved items first, one line each,
`Knowledge i: <|image|> {text}` (no placeholder for a text-only item), then the query image if there is
one, then the question. The answer comes back as a `Completion` whose `citations` list each item's id,
retrieval score and attention share (the part of the answer's hyper-attention that fell on the item's
image; owl3/inference/attribution.py), and whose `shares` hold every image's share (the query image's
last, when there is one). This module takes the pipeline as an argument and never imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from owl3.errors import Owl3Error
from owl3.kb.embed import embed_images, weights_hash
from owl3.kb.store import Hit, KnowledgeBase, open_kb

DEFAULT_TOP_K = 4


@dataclass(frozen=True)
class Citation:
    """A retrieved item the answer was given: its place in the prompt (`Knowledge n`), id, retrieval score
    and text, and its image's attention share (None for a text-only item)."""

    n: int
    id: str
    score: float
    text: str
    share: float | None

    def to_dict(self) -> dict[str, Any]:
        share = None if self.share is None else round(self.share, 6)
        return {"n": self.n, "id": self.id, "score": round(self.score, 6), "text": self.text, "share": share}


def question_of(messages: Any, image_token: str) -> str:
    """The text of the last user turn (the retrieval query), without media placeholders."""
    if isinstance(messages, str):
        text = messages
    else:
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if not users:
            raise Owl3Error("there is no user message to answer from the knowledge base")
        text = str(users[-1].get("content", ""))
    return text.replace(image_token, " ").strip()


def knowledge_prompt(hits: Sequence[Hit], question: str, image_token: str, query_image: bool) -> str:
    lines = []
    for n, h in enumerate(hits, 1):
        parts = [f"Knowledge {n}:"] + ([image_token] if h.has_image else []) + ([h.text] if h.text else [])
        lines.append(" ".join(parts))
    if query_image:
        lines.append(image_token)
    lines.append(question)
    return "\n".join(lines)


def retrieve(pipe: Any, kb: KnowledgeBase, question: str, image: Any, top_k: int) -> list[Hit]:
    """The `top_k` items for a question and an optional query image (checked: the same model)."""
    kb.check_model(weights_hash(pipe.model), str(pipe.path))
    vector = embed_images(pipe.model, [image])[0] if image is not None else None
    return kb.search(text=question or None, vector=vector, top_k=top_k)


def knowledge_request(
    pipe: Any, kb: KnowledgeBase, messages: Any, images: Sequence[Any], top_k: int
) -> tuple[list[dict[str, str]], list[Any], list[Hit]]:
    """Retrieve for the last user turn and rewrite it: (messages, images: the items' then the query
    image, the hits). `images`: at most one, the query image."""
    if len(images) > 1:
        raise Owl3Error(f"an answer from a knowledge base takes at most one query image, got {len(images)}")
    token = pipe.processor.image_token
    question = question_of(messages, token)
    if not question and not images:
        raise Owl3Error("the question is empty; ask something")
    hits = retrieve(pipe, kb, question, images[0] if images else None, top_k)
    content = knowledge_prompt(hits, question, token, bool(images))
    if isinstance(messages, str):
        msgs = [{"role": "user", "content": content}]
    else:
        msgs = [dict(m) for m in messages]
        last = max(i for i, m in enumerate(msgs) if m.get("role") == "user")
        if any(token in str(m.get("content", "")) for i, m in enumerate(msgs) if i != last):
            raise Owl3Error("with a knowledge base, only the last user turn may hold an image")
        msgs[last]["content"] = content
    item_images = [kb.image(h.id) for h in hits if h.has_image]
    return msgs, [*item_images, *images], hits


def cite(hits: Sequence[Hit], shares: Sequence[Any]) -> list[Citation]:
    """The citations of an answer: each hit with its image's share (`shares` in prompt order)."""
    it = iter(s.share for s in shares)
    return [
        Citation(n, h.id, h.score, h.text, next(it, None) if h.has_image else None)
        for n, h in enumerate(hits, 1)
    ]


def answer_with_kb(
    pipe: Any,
    kb: KnowledgeBase | str | Path,
    messages: Any,
    images: Sequence[Any] = (),
    videos: Sequence[Any] = (),
    *,
    top_k: int | None = None,
    attribution: bool | str = True,  # the shares are always computed; "gradient" picks that measure
    **kw: Any,
) -> Any:
    """`pipe.generate(...)` with retrieved evidence (see the module docstring). `images`: at most one, the
    query image; videos are not taken. The shares are always computed: they are the citations' point
    (the attention share unless `attribution="gradient"`)."""
    kb = open_kb(kb)
    if videos:
        raise Owl3Error("an answer from a knowledge base takes a query image, not videos")
    if images is not None and not isinstance(images, (str, Path)) and not hasattr(images, "size"):
        images = list(images)
    else:
        images = [] if images is None else [images]
    msgs, all_images, hits = knowledge_request(
        pipe, kb, messages, images, DEFAULT_TOP_K if top_k is None else top_k
    )
    if kw.get("cut") is None:  # no crops unless asked for, even when one picture is left
        kw["cut"] = False
    out = pipe.generate(msgs, all_images, attribution=attribution or True, **kw)
    out.citations = cite(hits, out.shares)
    return out
