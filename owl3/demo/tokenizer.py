"""A small byte-level BPE tokenizer trained on the synthetic world's text, in the official file layout.

Byte-level, so any text encodes (answers about the world come out as a few tokens each, anything else
falls back to bytes). The special tokens `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<|image|>` come
after the BPE vocabulary, as in Qwen2's tokenizer. The GPT-2 pre-tokenizer keeps a number in one piece and
the corpus holds every image label `Image 1` .. `Image {max_label}`, so each label number is ONE token
(` 37`), the same token in `Image 37: <|image|>` and in `In Image 37, ...`: the multi-image binding then
needs no digit arithmetic. Written files: tokenizer.json, tokenizer_config.json, special_tokens_map.json.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from owl3.demo.questions import (
    ALL_VIDEO_KINDS,
    SINGLE_KINDS,
    WHICH_KINDS,
    multi_question,
    single_question,
    video_question,
    which_question,
)
from owl3.processing.chat import chat_segments, cut_prompt

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image|>")
MAX_LABEL = 400  # image labels up to this are single tokens (the paper's distractor curve goes to 400)


def world_corpus(n: int = 6000, seed: int = 0, max_label: int = MAX_LABEL) -> Iterator[str]:
    """Text of the world: prompts and answers in the chat template, and every image label."""
    rng = random.Random(f"tokenizer:{seed}")
    for i in range(n):
        r = i % 4
        if r == 0:
            q = single_question(rng, SINGLE_KINDS[i // 4 % len(SINGLE_KINDS)])
        elif r == 1:
            q = multi_question(rng, rng.randint(2, 6))
        elif r == 2:
            q = which_question(rng, rng.randint(2, 6), WHICH_KINDS[i // 4 % len(WHICH_KINDS)])
        else:
            q = video_question(rng, ALL_VIDEO_KINDS[i // 4 % len(ALL_VIDEO_KINDS)])
        messages = [{"role": "user", "content": q.prompt}, {"role": "assistant", "content": q.answer}]
        yield from chat_segments(messages)
    for k in range(1, max_label + 1):
        for _ in range(3):
            yield f"Image {k}: In Image {k}, Image {k} has"
    yield cut_prompt(2, 2) + cut_prompt(1, 4) + cut_prompt(4, 1) + cut_prompt(2, 3) + cut_prompt(3, 2)


def train_tokenizer(vocab_size: int = 2048, seed: int = 0, max_label: int = MAX_LABEL) -> Tokenizer:
    """Train the BPE; stops early when the corpus has no more pairs to merge (the usual case)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [
        piece
        for text in world_corpus(seed=seed, max_label=max_label)
        for piece in text.split("<|image|>")  # never learn merges across a placeholder
        if piece
    ]
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))  # ids after the BPE vocabulary, like Qwen2
    for k in (1, max_label):
        if len(tok.encode(f" {k}", add_special_tokens=False).ids) != 1:
            raise RuntimeError(f"image label {k} is not one token; raise vocab_size")
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: str | Path) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (official layout)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    decoder = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    config = {
        "added_tokens_decoder": decoder,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return out


def build_tokenizer(out_dir: str | Path, **kw) -> Tokenizer:
    """Train and save; returns the tokenizer."""
    tok = train_tokenizer(**kw)
    save_tokenizer(tok, out_dir)
    return tok
