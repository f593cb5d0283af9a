"""The mPLUG-Owl3 processor: chat messages + images/videos → token ids, pixels, image positions.

It reproduces the official processor token for token: placeholders are expanded (a cropped image
becomes its grid text, a video one `<|image|>` per frame), the ChatML template is laid out in the
official segments, and every segment is tokenized on its own, split around each `<|image|>` (no BOS).
The media templates are those of the checkpoint family (`variant`, see `chat.cut_prompt` and
`chat.video_prompt`): 241101 tokenizers carry the four special tokens of its templates, and the family
is told from them when not given; a family whose tokenizer disagrees is refused.

Deliberate differences from the official code:
- each image gets its own crop grid. With cropping on and several images, the official processor
  returns the grid list [(r1, c1), (1, 1), (r2, c2), (1, 1), ...] (the global views are in it too) but
  reads it with the image index, so the second image onward is described with a wrong grid (image 2
  gets the (1, 1) of image 1's global view) and the text no longer matches the pixel views;
- the caller's messages are never mutated (the official code rewrote `message['content']` in place);
- images and videos may be mixed, in placeholder order; counts are checked with a clear `Owl3Error`.

It is not a video decoder (see `video.py`) and knows nothing of the model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers
import torch
from PIL import Image

from owl3.config import VARIANT_241101_TOKENS, VARIANTS
from owl3.errors import Owl3Error
from owl3.processing.chat import (
    END_OF_TEXT,
    IM_END,
    chat_segments,
    check_messages,
    cut_prompt,
    render,
    video_prompt,
)
from owl3.processing.decode import load_image
from owl3.processing.image import ImageInput, global_view, image_views

NO_IMAGE_OFFSET = -1000000  # the official media_offset value for a sample without images


@dataclass
class Encoding:
    """One processed sample."""

    input_ids: torch.Tensor  # (L,) int64
    # (N, 3, S, S) float32, one view per <|image|> token in token order
    # (crops + global views + video frames); None without images
    pixel_values: torch.Tensor | None
    media_starts: list[int]  # s_k: index in input_ids of the k-th <|image|> token; len N
    prompt: str  # the expanded prompt text, with <|image|> placeholders
    # what each view shows: ("image", i, view j of image i: crops first, the global view last) or
    # ("video", v, frame f of video v), in view order; None when not known (encodings made by hand)
    view_owners: list[tuple[str, int, int]] | None = None


def official_media_offset(enc: Encoding) -> torch.Tensor:
    """`media_offset` in the official form: (L, 2) int64, column 0 = 0, column 1 = #{k: s_k < p};
    without images column 1 is -1000000 everywhere."""
    n = enc.input_ids.shape[0]
    out = torch.zeros(n, 2, dtype=torch.int64)  # (L, 2)
    if not enc.media_starts:
        out[:, 1] = NO_IMAGE_OFFSET
        return out
    starts = torch.tensor(enc.media_starts, dtype=torch.int64).view(1, -1)  # (1, N)
    out[:, 1] = (torch.arange(n).view(-1, 1) > starts).sum(dim=1)  # (L,)
    return out


class Processor:
    """Turns chat messages with `<|image|>` / `<|video|>` placeholders into an `Encoding`."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        image_size: int,
        *,
        image_token: str = "<|image|>",
        video_token: str = "<|video|>",
        variant: str | None = None,
        official_pixels: bool = False,
    ) -> None:
        if not isinstance(image_size, int) or image_size <= 0:
            raise Owl3Error(f"image_size must be a positive int, got {image_size!r}")
        self.tokenizer = tokenizer
        self.variant = tokenizer_variant(tokenizer, variant)
        self.image_size = image_size
        self.image_token = image_token
        self.video_token = video_token
        # True: images become RGB by a plain convert("RGB") as in the official code (no EXIF orientation,
        # 16-bit/float clipped, alpha dropped); False: as a viewer shows them (decode.py)
        self.official_pixels = official_pixels
        self.image_token_id = self._token_id(image_token)
        self.pad_token_id = self._token_id(END_OF_TEXT)
        self.stop_token_ids = [self._token_id(IM_END), self._token_id(END_OF_TEXT)]
        self._image_split = re.compile(f"({re.escape(image_token)})")
        self._media_split = re.compile(f"({re.escape(image_token)}|{re.escape(video_token)})")

    official_media_offset = staticmethod(official_media_offset)

    @classmethod
    def from_dir(
        cls,
        path: str | os.PathLike,
        image_size: int,
        variant: str | None = None,
        *,
        official_pixels: bool = False,
    ) -> Processor:
        """Load `tokenizer.json` from a checkpoint folder; `variant` is the model's family (checked against
        the tokenizer), None to tell it from the tokenizer."""
        file = Path(path) / "tokenizer.json"
        if not file.is_file():
            raise Owl3Error(f"no tokenizer.json in {str(path)!r}; pass an mPLUG-Owl3 checkpoint folder")
        try:
            tok = tokenizers.Tokenizer.from_file(str(file))
        except Exception as e:  # the tokenizers library raises plain Exceptions on bad files
            raise Owl3Error(
                f"cannot read {str(file)!r} ({e}); the file is not a valid tokenizer.json"
            ) from None
        return cls(tok, image_size, variant=variant, official_pixels=official_pixels)

    def _token_id(self, token: str) -> int:
        tid = self.tokenizer.token_to_id(token)
        if tid is None:
            raise Owl3Error(f"the tokenizer has no token {token!r}; is it an mPLUG-Owl3 tokenizer?")
        return tid

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """The chat template only (placeholders left as they are)."""
        return render(messages)

    def __call__(
        self,
        messages: Sequence[dict[str, str]],
        images: Sequence[ImageInput] = (),
        videos: Sequence[Sequence[ImageInput]] = (),
        *,
        cut: bool = True,
    ) -> Encoding:
        """Process one sample. `images[i]` fills the i-th `<|image|>`, `videos[j]` (a list of frames) the
        j-th `<|video|>`; cropping (`cut`) applies to images only and is off whenever a video is given."""
        msgs = check_messages(messages)  # fresh copies: the caller's list is never touched
        images = _as_list(images, "images", "image")
        videos = [
            _as_list(v, f"videos[{j}]", "frame") for j, v in enumerate(_as_list(videos, "videos", "video"))
        ]
        self._check_counts(msgs, len(images), len(videos))
        cut = cut and not videos

        views: list[torch.Tensor] = []  # each (n, 3, S, S), in placeholder order
        owners: list[tuple[str, int, int]] = []
        views_of: dict[str, list[int]] = {"image": [], "video": []}  # views of each image / video so far
        next_image, next_video = iter(enumerate(images)), iter(enumerate(videos))
        official = self.official_pixels
        for m in msgs:
            parts: list[str] = []
            for piece in self._media_split.split(m["content"]):
                if piece == self.image_token:
                    i, item = next(next_image)
                    img = load_image(item, official=official, what=f"images[{i}]")
                    pixels, grid = image_views(img, self.image_size, cut)
                    owners += [("image", len(views_of["image"]), j) for j in range(pixels.shape[0])]
                    views_of["image"].append(pixels.shape[0])
                    views.append(pixels)
                    parts.append(
                        cut_prompt(*grid, self.image_token, self.variant) if grid else self.image_token
                    )
                elif piece == self.video_token:
                    j, frames = next(next_video)
                    owners += [("video", len(views_of["video"]), f) for f in range(len(frames))]
                    views_of["video"].append(len(frames))
                    for k, f in enumerate(frames):
                        img = load_image(f, official=official, what=f"videos[{j}][{k}]")
                        views.append(global_view(img, self.image_size).unsqueeze(0))
                    parts.append(video_prompt(len(frames), self.image_token, self.variant))
                else:
                    parts.append(piece)
            m["content"] = "".join(parts)

        segments = chat_segments(msgs)
        input_ids, starts = self._tokenize(segments)
        pixel_values = torch.cat(views, dim=0) if views else None  # (N, 3, S, S)
        n_views = 0 if pixel_values is None else pixel_values.shape[0]
        if n_views != len(starts):
            raise Owl3Error(
                f"the prompt holds {len(starts)} {self.image_token} tokens but {n_views} image views were "
                f"made; do not write {self.image_token} or {self.video_token} inside the text itself"
            )
        return Encoding(input_ids, pixel_values, starts, "".join(segments), owners)

    def _check_counts(self, msgs: list[dict[str, str]], n_images: int, n_videos: int) -> None:
        n_img_ph = sum(m["content"].count(self.image_token) for m in msgs)
        n_vid_ph = sum(m["content"].count(self.video_token) for m in msgs)
        problems = []
        if n_img_ph != n_images:
            problems.append(f"{n_img_ph} {self.image_token} placeholder(s) but {n_images} image(s)")
        if n_vid_ph != n_videos:
            problems.append(f"{n_vid_ph} {self.video_token} placeholder(s) but {n_videos} video(s)")
        if problems:
            raise Owl3Error(
                "the messages hold " + " and ".join(problems) + "; put exactly one placeholder in the text "
                "for each image / video, in the order they are passed"
            )

    def _tokenize(self, segments: list[str]) -> tuple[torch.Tensor, list[int]]:
        """Tokenize each segment on its own, each piece between image tokens on its own (no BOS)."""
        ids: list[int] = []
        starts: list[int] = []
        for segment in segments:
            for piece in self._image_split.split(segment):
                if piece == self.image_token:
                    starts.append(len(ids))
                    ids.append(self.image_token_id)
                elif piece:
                    ids += self.tokenizer.encode(piece, add_special_tokens=False).ids
        return torch.tensor(ids, dtype=torch.int64), starts  # (L,)


def tokenizer_variant(tokenizer: tokenizers.Tokenizer, variant: str | None = None) -> str:
    """The checkpoint family of a tokenizer: "241101" if it has the four special tokens of the 241101
    templates, "240728" if it has none of them. With `variant` given (the model's family, from its
    config.json), a tokenizer that says otherwise is an `Owl3Error`."""
    have = [t for t in VARIANT_241101_TOKENS if tokenizer.token_to_id(t) is not None]
    if 0 < len(have) < len(VARIANT_241101_TOKENS):
        missing = [t for t in VARIANT_241101_TOKENS if t not in have]
        raise Owl3Error(
            f"the tokenizer has {', '.join(have)} but not {', '.join(missing)}: a 241101-family tokenizer "
            "has all four; use the tokenizer.json that came with the checkpoint"
        )
    found = "241101" if have else "240728"
    if variant is None:
        return found
    if variant not in VARIANTS:
        raise Owl3Error(f"unknown variant {variant!r}; choose 240728 or 241101")
    if variant != found:
        tokens = ", ".join(VARIANT_241101_TOKENS)
        has = "has" if have else "lacks"
        raise Owl3Error(
            f"config.json describes a {variant}-family model but its tokenizer {has} the 241101 special "
            f"tokens ({tokens}); the tokenizer.json belongs to a {found}-family checkpoint: put the "
            "checkpoint's own tokenizer files next to its config.json"
        )
    return found


def with_241101_tokens(tokenizer: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    """A copy of `tokenizer` with the four 241101 template tokens added as special tokens (for a random
    241101-shaped model run with a 240728-family tokenizer, as the benchmarks do)."""
    tok = tokenizers.Tokenizer.from_str(tokenizer.to_str())
    tok.add_special_tokens(
        [tokenizers.AddedToken(t, special=True, normalized=False) for t in VARIANT_241101_TOKENS]
    )
    return tok


def _as_list(items: Any, name: str, what: str) -> list[Any]:
    """`items` as a list, refusing a lone item passed where a list is expected."""
    if items is None:
        return []
    if isinstance(items, (str, bytes, os.PathLike, Image.Image)) or not isinstance(items, Sequence):
        raise Owl3Error(f"{name} must be a list of {what}s, got {type(items).__name__}; wrap it in a list")
    if what == "frame" and len(items) == 0:
        raise Owl3Error(f"{name} has no frames; a video needs at least one frame")
    return list(items)
