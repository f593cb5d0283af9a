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
        out.append({"role": role, "content": content})
    return out


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
