"""The ChatML prompt template of mPLUG-Owl3 and the text that stands for a cropped image.

The template is returned as a list of *segments* in the order and cut of the official processor,
because the official code tokenizes each segment on its own (and, inside a segment, each piece
between `<|image|>` tokens on its own); BPE never merges across a segment boundary, so the split
points are part of the format. `render` is just the concatenation.

Segments (the official ones):
- `<|im_start|>system\\n<|im_end|>` first, if the first message is not a system message;
- system: `<|im_start|>system\\n{content}<|im_end|>` (one segment);
- user: `\\n<|im_start|>user\\n{content}<|im_end|>` (one segment: the role header is NOT separate);
- assistant: `\\n<|im_start|>assistant\\n` (its own segment), then `{content}<|im_end|>`,
  then `<|endoftext|>` for a finished turn;
- a prompt ends with `\\n<|im_start|>assistant\\n`: a final assistant message with empty content is the
  generation turn; after any other last message that header is appended.

Media templates differ by checkpoint family (`cut_prompt`, `video_prompt`): 240728 describes a cropped
image in words ("Cut to 2 rows 3 columns with a global view", `subimg(i,j)`, `global_view`) and a video
as bare `<|image|>` tokens; 241101 wraps them in its own special tokens (`<|start_cut|>2*3` ...
`<|end_cut|>`, `<|start_video_frame|>` ... `<|end_video_frame|>`).

The official code silently dropped the content of a final *non-empty* assistant message; here such a
message is a finished turn and the generation header follows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from owl3.errors import Owl3Error

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
ROLES = ("system", "user", "assistant")
GENERATION_HEADER = f"\n{IM_START}assistant\n"
START_CUT, END_CUT = "<|start_cut|>", "<|end_cut|>"
START_VIDEO, END_VIDEO = "<|start_video_frame|>", "<|end_video_frame|>"


def check_messages(messages: Any) -> list[dict[str, str]]:
    """Validate chat messages and return fresh copies `{"role", "content"}` (the input is never touched)."""
    if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, Sequence):
        raise Owl3Error(
            f'messages must be a list of {{"role": ..., "content": ...}} dicts, got {type(messages).__name__}'
        )
    if len(messages) == 0:
        raise Owl3Error("messages is empty; pass at least one user message")
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise Owl3Error(f'messages[{i}] must be a dict with "role" and "content" keys, got {m!r}')
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise Owl3Error(f"messages[{i}] has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise Owl3Error(
                f"messages[{i}].content must be a string (media go in as <|image|>/<|video|> "
                f"placeholders), got {type(content).__name__}"
            )
        check_text(content, f"messages[{i}].content")
        out.append({"role": role, "content": content})
    return out


def check_text(text: str, where: str) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate, e.g. from a bad JSON escape or a file read
    with errors="surrogateescape"): the tokenizer cannot encode it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise Owl3Error(
            f"{where} holds {text[e.start]!r} at character {e.start}, a lone surrogate that is not valid "
            "Unicode; fix the text (e.g. decode it with errors='replace')"
        ) from None


PART_TYPES = ("text", "image_url", "video_url", "image", "video")


def split_parts(
    messages: Any, image_token: str = "<|image|>", video_token: str = "<|video|>"
) -> tuple[list[dict[str, Any]], list[Any], list[Any]]:
    """Messages whose content may be a list of OpenAI-style parts -> (messages with string content, the
    parts' images, the parts' videos), in the order given.

    Parts: `{"type": "text", "text": ...}`, `{"type": "image_url", "image_url": {"url": ...}}` (or the
    URL as a string), `{"type": "video_url", "video_url": {"url": ...}}`, `{"type": "image", "image": x}`
    and `{"type": "video", "video": x}` (x: a path, a PIL image, an array, bytes; a video's x may be a list
    of frames). The parts of one message are joined with newlines, as the server (and vLLM) joins them,
    each media part becoming a placeholder where it stands. String content is kept as it is; None is "".
    The caller's messages are never touched; the media are not opened here.
    """
    if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, Sequence):
        return messages, [], []  # check_messages reports it
    out: list[dict[str, Any]] = []
    images: list[Any] = []
    videos: list[Any] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            out.append(m)  # check_messages reports it
            continue
        if "content" in m and m["content"] is None:  # OpenAI's assistant turn without text
            out.append({**m, "content": ""})
            continue
        if not isinstance(m.get("content"), (list, tuple)):
            out.append(dict(m))
            continue
        pieces: list[str] = []
        for j, part in enumerate(m["content"]):
            where = f"messages[{i}].content[{j}]"
            if isinstance(part, str):
                part = {"type": "text", "text": part}
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in PART_TYPES:
                raise Owl3Error(
                    f"{where} is {part!r:.80}; a content part is a dict whose type is one of "
                    f"{', '.join(PART_TYPES)}"
                )
            if kind not in part:
                raise Owl3Error(f"{where} has type {kind!r} but no {kind!r} key, e.g. {_example(kind)}")
            value = part[kind]
            if kind == "text":
                if not isinstance(value, str):
                    raise Owl3Error(f"{where}.text must be a string, got {type(value).__name__}")
                if image_token in value or video_token in value:
                    raise Owl3Error(
                        f"{where} holds the text {image_token} or {video_token}; with content parts, "
                        "give media as image / video parts instead"
                    )
                pieces.append(value)
                continue
            if kind in ("image_url", "video_url"):
                value = value.get("url") if isinstance(value, dict) else value
                if not isinstance(value, str):
                    raise Owl3Error(f"{where} needs a URL string, e.g. {_example(kind)}")
            is_image = kind.startswith("image")
            (images if is_image else videos).append(value)
            pieces.append(image_token if is_image else video_token)
        out.append({**m, "content": "\n".join(pieces)})
    return out, images, videos


def _example(kind: str) -> str:
    return {
        "text": '{"type": "text", "text": "What is this?"}',
        "image_url": '{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}',
        "video_url": '{"type": "video_url", "video_url": {"url": "file:///videos/clip.mp4"}}',
        "image": '{"type": "image", "image": "photo.jpg"}',
        "video": '{"type": "video", "video": "clip.mp4"}',
    }[kind]


def chat_segments(messages: Sequence[dict[str, str]]) -> list[str]:
    """The prompt as the official list of separately tokenized segments (see the module docstring)."""
    msgs = check_messages(messages)
    generating = msgs[-1]["role"] == "assistant" and msgs[-1]["content"] == ""
    body = msgs[:-1] if generating else msgs
    segments: list[str] = []
    if msgs[0]["role"] != "system":
        segments.append(f"{IM_START}system\n{IM_END}")
    for m in body:
        role, content = m["role"], m["content"]
        if role == "system":
            segments.append(f"{IM_START}system\n{content}{IM_END}")
        elif role == "user":
            segments.append(f"\n{IM_START}user\n{content}{IM_END}")
        else:
            segments += [f"\n{IM_START}assistant\n", f"{content}{IM_END}", END_OF_TEXT]
    segments.append(GENERATION_HEADER)
    return segments


def render(messages: Sequence[dict[str, str]]) -> str:
    """The full prompt text, ending with the generation header `\\n<|im_start|>assistant\\n`."""
    return "".join(chat_segments(messages))


def cut_prompt(rows: int, cols: int, image_token: str = "<|image|>", variant: str = "240728") -> str:
    """The text that replaces one cropped image's placeholder. It holds rows·cols + 1 image tokens, in the
    order of the views from `image.crop_views`.

    240728 (the official "v2_global" template): `Cut to {rows} rows {cols} columns with a global view\\n`,
    then the rows joined by newlines, each row `subimg(i,j)<|image|>` items joined by spaces, then
    `\\nglobal_view<|image|>`.
    241101 ("v3_global"): `<|start_cut|>{rows}*{cols}\\n`, then the rows joined by newlines, each row
    `<|image|>` items joined by spaces, then `\\n<|image|><|end_cut|>`.
    """
    if variant == "241101":
        lines = [" ".join(image_token for _ in range(cols)) for _ in range(rows)]
        return f"{START_CUT}{rows}*{cols}\n" + "\n".join(lines) + f"\n{image_token}{END_CUT}"
    lines = [" ".join(f"subimg({i},{j}){image_token}" for j in range(cols)) for i in range(rows)]
    head = f"Cut to {rows} rows {cols} columns with a global view\n"
    return head + "\n".join(lines) + f"\nglobal_view{image_token}"


def video_prompt(n_frames: int, image_token: str = "<|image|>", variant: str = "240728") -> str:
    """The text that replaces a video's placeholder: one image token per frame (240728), wrapped in
    `<|start_video_frame|>` ... `<|end_video_frame|>` (241101)."""
    frames = image_token * n_frames
    return f"{START_VIDEO}{frames}{END_VIDEO}" if variant == "241101" else frames


def with_placeholders(
    messages: str | Sequence[dict[str, Any]], n_images: int, n_videos: int, image_token: str, video_token: str
) -> list[dict[str, str]]:
    """A prompt string or messages -> a copy of the messages (never the caller's), with the media's
    placeholders at the start of the last user turn if no message holds one (the official examples' way)."""
    if isinstance(messages, str):
        check_text(messages, "the prompt")
        msgs = [{"role": "user", "content": messages}]
    else:
        try:
            msgs = [dict(m) for m in messages]
        except (TypeError, ValueError) as e:
            raise Owl3Error(
                "messages must be a string or a list of {'role': ..., 'content': ...} dicts"
            ) from e
    if not msgs:
        raise Owl3Error("messages is empty; give at least one user message")
    text = "".join(str(m.get("content", "")) for m in msgs)
    if (n_images or n_videos) and image_token not in text and video_token not in text:
        users = [i for i, m in enumerate(msgs) if m.get("role") == "user"]
        if not users:
            raise Owl3Error("images or videos were given, but there is no user message to attach them to")
        last = users[-1]
        msgs[last]["content"] = image_token * n_images + video_token * n_videos + "\n" + msgs[last]["content"]
    return msgs
