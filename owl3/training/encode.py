"""A `Record` -> model inputs with labels; samples -> a padded batch.

Encoding goes through the inference `Processor` (same template, same chunked tokenization, same crops),
then marks the tokens to learn: each assistant answer `{content}<|im_end|>` and the `<|endoftext|>` that
closes the turn in the official template. Everything else (system, user turns with their image tokens,
the `\\n<|im_start|>assistant\\n` headers) is label -100. The generation header that the template appends
after the last turn is dropped. Labels are not shifted here: token t is predicted from tokens < t.

Cropping: a lone image (no other image, no video) is cropped with probability `crop_prob`, decided by a
generator seeded with (seed, epoch, index), so the choice is the same on every rank and after a resume.
Several images and videos are never cropped (paper), nor an image with attention targets (their boxes are
on the whole picture). A sample longer than `seq_len` is bad data: it is reported and skipped (or
refused), never truncated, because truncation could cut an image's tokens apart from its features.

Attention targets (`Record.attend`; read when the encoder is given `grid`, the patches per image side):
each becomes the position that predicts the token after `after` in its answer (`turn`), and either the
indices of the row's visual tokens whose patch centres lie in the box (image k's are k * grid^2 ... in
token order, one view per image; `Sample.attend`), or the positions of the `next_tokens` text tokens after
the image's `<|image|>` token (`Sample.attend_text`), or with `text` the last token of that phrase's last
occurrence before the query (its last character ending a token, so "Image 1" is not found in "Image 12").
A text target with its own `layer` or `heads` goes to `Sample.attend_layer` as (layer or None for the
training's text layer, position, tokens, heads). A target with `odds` names every patch of its picture
and adds their target shares: (position, patches, shares).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from owl3.errors import Owl3Error
from owl3.processing import Processor
from owl3.processing.chat import END_OF_TEXT, GENERATION_HEADER, IM_END
from owl3.processing.video import frame_indices, read_video
from owl3.training.data import IMAGE, VIDEO, Attend, Record, frame_files

IGNORE = -100


# an attention target: (position of the query, indices of the visual tokens it should attend to), and for a
# target with odds (training/data.py `Attend.odds`) a third item, the share each of those should get
VisualTarget = tuple[int, list[int]] | tuple[int, list[int], list[float]]


@dataclass
class Sample:
    input_ids: Tensor  # (L,) int64
    labels: Tensor  # (L,) int64, IGNORE where no loss
    pixel_values: Tensor | None  # (N, 3, S, S), one view per <|image|> token, in token order
    media_starts: list[int]  # index of each <|image|> token
    where: str
    # attention targets (`VisualTarget`)
    attend: list[VisualTarget] = field(default_factory=list)
    # text targets: (position of the query, positions of the text tokens it should attend to)
    attend_text: list[tuple[int, list[int]]] = field(default_factory=list)
    # text targets of a named decoder layer or heads (`Attend.layer`, `Attend.heads`): (layer or None,
    # query position, text token positions, heads: () for all)
    attend_layer: list[tuple[int | None, int, list[int], tuple[int, ...]]] = field(default_factory=list)


@dataclass
class Skipped:
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


class SampleEncoder:
    """Record -> Sample (or Skipped with the reason). Picklable, so DataLoader workers can run it."""

    def __init__(
        self,
        processor: Processor,
        *,
        seq_len: int,
        frames: int,
        crop_prob: float,
        seed: int,
        grid: int | None = None,
    ) -> None:
        self.processor = processor
        self.seq_len, self.frames, self.crop_prob, self.seed = seq_len, frames, crop_prob, seed
        self.grid = grid  # patches per image side; None: attention targets are not read
        self.header = self._encode(GENERATION_HEADER)
        self.eot = processor.pad_token_id  # <|endoftext|>
        if processor.tokenizer.token_to_id(END_OF_TEXT) != self.eot:
            raise Owl3Error(
                "the tokenizer's <|endoftext|> is not its pad token; is it an mPLUG-Owl3 tokenizer?"
            )

    def _encode(self, text: str) -> list[int]:
        return self.processor.tokenizer.encode(text, add_special_tokens=False).ids

    def crop(self, record: Record, epoch: int, index: int) -> bool:
        if len(record.images) != 1 or record.videos or record.attend or self.crop_prob <= 0:
            return False
        return bool(np.random.default_rng([self.seed, epoch, index]).random() < self.crop_prob)

    def __call__(self, record: Record, epoch: int = 0, index: int = 0) -> Sample | Skipped:
        try:
            videos = [self.video_frames(v) for v in record.videos]
            enc = self.processor(
                list(record.messages), list(record.images), videos, cut=self.crop(record, epoch, index)
            )
        except Owl3Error as e:
            return Skipped(record.where, str(e))
        n = int(enc.input_ids.shape[0]) - len(self.header)
        if n > self.seq_len:
            return Skipped(record.where, f"over-long: {n} tokens > seq_len {self.seq_len}")
        ids = enc.input_ids.tolist()
        labels = self.labels(ids, record)
        ids, labels = ids[:n], labels[:n]  # drop the trailing generation header
        attend, attend_text, attend_layer = [], [], []
        if record.attend and self.grid is not None:
            try:
                first = self.first_views(record, [len(v) for v in videos])
                pieces = self.pieces(ids) if any(a.text for a in record.attend) else []
                for a in record.attend:
                    if a.next_tokens or a.text:
                        pos, tokens = self.text_target(a, ids, labels, first, enc.media_starts, pieces)
                        if a.layer is None and not a.heads:
                            attend_text.append((pos, tokens))
                        else:
                            attend_layer.append((a.layer, pos, tokens, a.heads))
                    else:
                        attend.append(self.attention_target(a, ids, labels, first, enc.media_starts))
            except ValueError as e:
                return Skipped(record.where, str(e))
        return Sample(
            torch.tensor(ids, dtype=torch.long),
            torch.tensor(labels, dtype=torch.long),
            enc.pixel_values,
            enc.media_starts,
            record.where,
            attend,
            attend_text,
            attend_layer,
        )

    def first_views(self, record: Record, n_frames: list[int]) -> dict[tuple[str, int], tuple[int, int]]:
        """(medium, index) -> (its first view among the row's pictures in token order, its view count).
        Images with targets are never cropped: one view each; a video has one per sampled frame."""
        text = "".join(m["content"] for m in record.messages)
        out, view, counts = {}, 0, {"image": 0, "video": 0}
        for tag in re.findall(f"{re.escape(IMAGE)}|{re.escape(VIDEO)}", text):
            medium = "image" if tag == IMAGE else "video"
            k = counts[medium]
            n = 1 if medium == "image" else n_frames[k]
            out[(medium, k)] = (view, n)
            view, counts[medium] = view + n, k + 1
        return out

    def attention_target(
        self,
        a: Attend,
        ids: list[int],
        labels: list[int],
        first: dict[tuple[str, int], tuple[int, int]],
        media_starts: list[int],
    ) -> VisualTarget:
        """(query position, visual token indices) of one target: the position that predicts the token
        after `a.after` in its answer (with `a.query` "after_image": the token right after the image's
        `<|image|>`); the patches of the image (or video frame) whose centres lie in the box (in any of
        `a.boxes`). With `a.odds`: every patch of the picture, and the share each should get."""
        g = self.grid
        boxes = a.boxes or (a.box,)
        cells = [
            r * g + c
            for r in range(g)
            for c in range(g)
            if any(x0 <= (c + 0.5) / g < x1 and y0 <= (r + 0.5) / g < y1 for x0, y0, x1, y1 in boxes)
        ]
        if not cells:
            where = [list(b) for b in boxes] if a.boxes else list(a.box)
            raise ValueError(f"attend.box {where} holds no patch centre of the {g}x{g} grid")
        view, n = first[("image", a.image) if a.video is None else ("video", a.video)]
        if a.frame >= n:
            raise ValueError(f"attend.frame {a.frame} but the video gives {n} frames")
        first_patch = (view + a.frame) * g * g
        if a.query == "after_image":
            pos = media_starts[view] + 1
            if pos >= len(ids) or ids[pos] == self.processor.image_token_id:
                raise ValueError("attend.query after_image: no text token follows the image")
        else:
            pos = self.query(a, ids, labels)
        if not a.odds:
            return pos, [first_patch + p for p in cells]
        inside = set(cells)  # a set: a real model's picture has hundreds of patches
        odds = [a.odds if p in inside else 1.0 for p in range(g * g)]
        total = sum(odds)
        return pos, list(range(first_patch, first_patch + g * g)), [w / total for w in odds]

    def text_target(
        self,
        a: Attend,
        ids: list[int],
        labels: list[int],
        first: dict[tuple[str, int], tuple[int, int]],
        media_starts: list[int],
        pieces: list[str] = (),
    ) -> tuple[int, list[int]]:
        """(query position, text token positions) of one text target: the `a.next_tokens` tokens after the
        `<|image|>` token of the image (of a video: of its last frame), or the last token of phrase `a.text`
        before the query (the answer's, or with `a.query` "after_image" the token right after the image);
        `pieces`: each token's text (`SampleEncoder.pieces`), needed for the latter."""
        if a.text:
            if a.query == "after_image":
                pos = media_starts[first[("image", a.image)][0]] + 1
                if pos >= len(ids) or ids[pos] == self.processor.image_token_id:
                    raise ValueError("attend.query after_image: no text token follows the image")
            else:
                pos = self.query(a, ids, labels)
            return pos, [phrase_end(a.text, pieces[:pos])]
        view, n = first[("image", a.image) if a.video is None else ("video", a.video)]
        after = media_starts[view + n - 1] + 1
        pos = self.query(a, ids, labels)
        tokens = list(range(after, after + a.next_tokens))
        if tokens[-1] > pos or any(ids[t] == self.processor.image_token_id for t in tokens):
            raise ValueError(
                f"attend.next_tokens {a.next_tokens}: the {a.next_tokens} tokens after the picture must be "
                "text before the answer's query"
            )
        return pos, tokens

    def pieces(self, ids: list[int]) -> list[str]:
        """The text of each token (special tokens as written), in one call to the tokenizer."""
        return self.processor.tokenizer.decode_batch([[t] for t in ids], skip_special_tokens=False)

    def query(self, a: Attend, ids: list[int], labels: list[int]) -> int:
        """The position that predicts the token after `a.after` in answer `a.turn` (0: the first)."""
        # the first token of each answer: where a run of labelled tokens starts
        starts = [i for i, y in enumerate(labels) if y != IGNORE and (i == 0 or labels[i - 1] == IGNORE)]
        if a.turn >= len(starts):
            raise ValueError(f"attend.turn {a.turn} but the sample has {len(starts)} answer(s)")
        start = starts[a.turn]
        prefix = self._encode(a.after) if a.after else []
        if ids[start : start + len(prefix)] != prefix:
            raise ValueError(f"attend.after {a.after!r} does not end where a token of the answer ends")
        return start + len(prefix) - 1

    def labels(self, ids: list[int], record: Record) -> list[int]:
        """Labels for the token ids of `record`: the answers and their end tokens, IGNORE elsewhere."""
        labels = [IGNORE] * len(ids)
        if ids[-len(self.header) :] != self.header:
            raise AssertionError("encoded sample does not end with the generation header")
        cursor, h = 0, len(self.header)
        for m in record.messages:
            if m["role"] != "assistant":
                continue
            target = self._encode(m["content"] + IM_END) + [self.eot]
            # the next assistant header: user text cannot hold <|im_start|> (data.py refuses it)
            pos = _find(ids, self.header, cursor)
            if pos < 0 or ids[pos + h : pos + h + len(target)] != target:
                raise AssertionError(f"{record.where}: answer tokens not found where the template puts them")
            start = pos + h
            labels[start : start + len(target)] = target
            cursor = start + len(target)
        return labels

    def video_frames(self, video: str | tuple[str, ...]) -> list[Image.Image] | list[str]:
        """A video file, a frame folder or a list of frame files -> `frames` frames (segment middles)."""
        if isinstance(video, tuple):
            paths = list(video)
        elif os.path.isdir(video):
            paths = frame_files(video)
        else:
            return read_video(video, frames=self.frames)
        return [paths[i] for i in frame_indices(len(paths), frames=self.frames)]


def _find(seq: list[int], pattern: list[int], start: int) -> int:
    first, n = pattern[0], len(pattern)
    for i in range(start, len(seq) - n + 1):
        if seq[i] == first and seq[i : i + n] == pattern:
            return i
    return -1


def phrase_end(phrase: str, pieces: list[str]) -> int:
    """The index of the token that ends the last occurrence of `phrase` in the text of `pieces` (each
    token's text); a phrase ending inside a token or a word ("Image 1" in "Image 12", also where a
    tokenizer writes "12" as two tokens) does not count."""
    ends, total = {}, 0
    for i, piece in enumerate(pieces):
        total += len(piece)
        if piece:
            ends[total] = i  # the text up to `total` characters ends with token i
    text = "".join(pieces)
    at = text.rfind(phrase)
    while at >= 0:
        end = at + len(phrase)
        if end in ends and not (end < len(text) and text[end].isalnum() and text[end - 1].isalnum()):
            return ends[end]
        at = text.rfind(phrase, 0, at + len(phrase) - 1)
    raise ValueError(f"attend.text {phrase!r} does not end a token before the query")


# ---------------------------------------------------------------------- batching
@dataclass
class Batch:
    """Right-padded micro-batch. Right padding keeps each row's raw positions 0..len-1 and lets the plain
    causal mask serve (real tokens never look ahead at padding)."""

    input_ids: Tensor  # (B, T)
    labels: Tensor  # (B, T)
    pixel_values: Tensor | None  # (N, 3, S, S), all images of the batch in row order
    n_media: list[int]  # images per row
    media_starts: list[list[int]]
    lengths: Tensor  # (B,) real tokens per row
    skipped: list[Skipped] = field(default_factory=list)
    attend: list[list[VisualTarget]] = field(default_factory=list)  # per row, see Sample
    attend_text: list[list[tuple[int, list[int]]]] = field(default_factory=list)  # per row, see Sample
    attend_layer: list[list[tuple[int | None, int, list[int], tuple[int, ...]]]] = field(
        default_factory=list
    )  # per row, see Sample

    @property
    def n_targets(self) -> int:
        """Tokens that carry a loss (label of position t+1 predicted at t)."""
        return int((self.labels[:, 1:] != IGNORE).sum())

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def pin_memory(self) -> Batch:
        """Page-locked copies (the DataLoader calls this with pin_memory=True) for faster GPU transfers."""
        self.input_ids, self.labels = self.input_ids.pin_memory(), self.labels.pin_memory()
        if self.pixel_values is not None:
            self.pixel_values = self.pixel_values.pin_memory()
        return self


def split_by_length(batch: Batch, pieces: int) -> list[Batch]:
    """`batch` as up to `pieces` batches of rows of similar length (shortest first), each padded only to
    its own longest row. Rows never see each other, so their losses and gradients add up to the whole
    batch's (up to float rounding): the same step with less padding to compute (`TrainConfig.length_split`).
    The skipped samples stay with the first piece, reported once."""
    n = len(batch)
    if pieces <= 1 or n <= 1:
        return [batch]
    order = sorted(range(n), key=lambda i: int(batch.lengths[i]))
    media_at = [0]
    for k in batch.n_media:
        media_at.append(media_at[-1] + k)
    k, out = min(pieces, n), []
    for j in range(k):
        rows = order[j * n // k : (j + 1) * n // k]
        index = torch.tensor(rows)
        width = int(batch.lengths[index].max())
        pixels = None
        if batch.pixel_values is not None:
            taken = [batch.pixel_values[media_at[i] : media_at[i + 1]] for i in rows]
            pixels = torch.cat(taken) if sum(t.shape[0] for t in taken) else None
        out.append(
            Batch(
                batch.input_ids[index, :width],
                batch.labels[index, :width],
                pixels,
                [batch.n_media[i] for i in rows],
                [batch.media_starts[i] for i in rows],
                batch.lengths[index],
                batch.skipped if j == 0 else [],
                [batch.attend[i] for i in rows] if batch.attend else [],
                [batch.attend_text[i] for i in rows] if batch.attend_text else [],
                [batch.attend_layer[i] for i in rows] if batch.attend_layer else [],
            )
        )
    return out


def collate(items: list[Sample | Skipped], pad_id: int) -> Batch:
    samples = [s for s in items if isinstance(s, Sample)]
    skipped = [s for s in items if isinstance(s, Skipped)]
    if not samples:  # every sample was bad: one padding token with no loss keeps the collectives in step
        ids = torch.full((1, 1), pad_id, dtype=torch.long)
        no_loss = torch.full_like(ids, IGNORE)
        return Batch(ids, no_loss, None, [0], [[]], torch.zeros(1, dtype=torch.long), skipped)
    width = max(int(s.input_ids.shape[0]) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    for i, s in enumerate(samples):
        n = s.input_ids.shape[0]
        ids[i, :n], labels[i, :n] = s.input_ids, s.labels
    pixels = [s.pixel_values for s in samples if s.pixel_values is not None]
    return Batch(
        ids,
        labels,
        torch.cat(pixels) if pixels else None,
        [0 if s.pixel_values is None else s.pixel_values.shape[0] for s in samples],
        [s.media_starts for s in samples],
        torch.tensor([s.input_ids.shape[0] for s in samples]),
        skipped,
        [s.attend for s in samples],
        [s.attend_text for s in samples],
        [s.attend_layer for s in samples],
    )
