"""The paper's ablation at demo scale: `python -m owl3.demo ablation START OUT --steps N`.

Four variants get the same data (the demo recipe's binding mix, `OUT/data/binding.jsonl`), the same start
(the checkpoint START, e.g. the demo recipe's perception phase) and the same number of optimizer steps:

- hyper:      Hyper Attention as shipped (MI-RoPE on the visual keys, adaptive gate);
- no-mirope:  the visual keys are not rotated (no MI-RoPE): a text token cannot tell images apart by position;
- no-gate:    the cross-attention output is added to the self-attention output (no adaptive gate);
- concat:     the LLaVA-Interleave baseline: every image's 36 visual tokens are put into the LLM's sequence
              in place of its <|image|> token and go through every layer; the hyper branch is not used.

The variants are forward-time switches (`variant(name)` patches owl3.model functions for the duration of a
`with`), so they share every weight and owl3's training loop; the concat variant has its own training step
(`ConcatStep`). Each variant is then scored with the same greedy exact-match decoding (`greedy_answer`, a
full forward per token; no KV cache, so all four decode alike) on `owl3 eval synthetic`'s questions.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

VARIANTS = ("hyper", "no-mirope", "no-gate", "concat")


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    """Switch Hyper Attention to variant `name` inside the block (hyper and concat change nothing here)."""
    from owl3.model import hyper, text

    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")
    saved = (hyper.project_kv, text.gate)
    if name == "no-mirope":

        def project_kv(features, positions, norm, v_kv_proj, rope, n_kv_heads, head_dim):
            b, m, _ = features.shape
            kv = v_kv_proj(norm(features)).view(b, m, n_kv_heads, 2, head_dim).permute(3, 0, 2, 1, 4)
            return kv[0], kv[1]  # no rotation

        hyper.project_kv = project_kv
    elif name == "no-gate":

        def add(a_self, a_cross, seen, gate_proj, all_seen=False):
            return torch.where(seen[:, None, :, None], a_self + a_cross, a_self)

        text.gate = add
    try:
        yield
    finally:
        hyper.project_kv, text.gate = saved


# ----------------------------------------------------------------------------------- concat baseline
def concat_embeddings(
    model, input_ids: Tensor, labels: Tensor | None, feats: Tensor | None, n_media: list[int],
    media_starts: list[list[int]],
) -> tuple[Tensor, Tensor | None, Tensor]:  # fmt: skip
    """Right-padded (B, T', D) embeddings with each <|image|> replaced by its visual tokens; labels (IGNORE on
    visual tokens) and lengths to match."""
    from owl3.training.encode import IGNORE

    emb = model.embed(input_ids)  # (B, T, D)
    rows, labs, start = [], [], 0
    for b in range(input_ids.shape[0]):
        pieces, lp, prev = [], [], 0
        for k, s in enumerate(media_starts[b]):
            pieces += [emb[b, prev:s], feats[start + k]]
            if labels is not None:
                lp += [labels[b, prev:s], labels.new_full((feats.shape[1],), IGNORE)]
            prev = s + 1
        pieces.append(emb[b, prev:])
        if labels is not None:
            lp.append(labels[b, prev:])
            labs.append(torch.cat(lp))
        rows.append(torch.cat(pieces))
        start += n_media[b]
    lengths = torch.tensor([r.shape[0] for r in rows])
    x = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    y = (
        torch.nn.utils.rnn.pad_sequence(labs, batch_first=True, padding_value=IGNORE)
        if labels is not None
        else None
    )
    return x, y, lengths


class ConcatStep(torch.nn.Module):
    """TrainStep's contract (summed answer loss) for the concatenation baseline."""

    def __init__(self, model, **_: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, labels, pixel_values, n_media, media_starts) -> Tensor:
        from owl3.training.encode import IGNORE

        m = self.model
        feats = m.vision2text_model(m.vision_model(pixel_values)) if pixel_values is not None else None
        x, y, _ = concat_embeddings(m, input_ids, labels, feats, n_media, media_starts)
        positions = torch.arange(x.shape[1]).expand(x.shape[0], -1)
        h = m.language_model.model(x, positions, None, None, None)
        target = y[:, 1:]
        keep = target != IGNORE
        logits = m.language_model.lm_head(h[:, :-1][keep]).float()
        return F.cross_entropy(logits, target[keep], reduction="sum")


@contextlib.contextmanager
def concat_training() -> Iterator[None]:
    from owl3.training import loop

    saved = loop.TrainStep
    loop.TrainStep = ConcatStep
    try:
        yield
    finally:
        loop.TrainStep = saved


# ----------------------------------------------------------------------------------- scoring
@torch.no_grad()
def greedy_answer(pipe, name: str, prompt: str, images, max_new_tokens: int = 24) -> str:
    """Greedy decoding with a full forward per token (no KV cache), the same for every variant."""
    from owl3.model import VisualContext

    m, proc = pipe.model, pipe.processor
    enc = pipe.encode(prompt, images, [], cut=False)
    ids = enc.input_ids.view(1, -1)
    feats = m.vision2text_model(m.vision_model(enc.pixel_values)) if enc.pixel_values is not None else None
    eos = pipe.config.eos_token_id
    out: list[int] = []
    for _ in range(max_new_tokens):
        if name == "concat":
            x, _, _ = concat_embeddings(m, ids, None, feats, [len(enc.media_starts)], [enc.media_starts])
            visual = None
        else:
            x = m.embed(ids)
            visual = VisualContext.build([feats], [enc.media_starts]) if feats is not None else None
            if visual is not None:
                visual.recompute = True
        positions = torch.arange(x.shape[1]).view(1, -1)
        h = m.language_model.model(x, positions, None, None, visual)
        nxt = int(m.language_model.lm_head(h[:, -1]).argmax(-1))
        if nxt == eos:
            break
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return proc.tokenizer.decode(out).strip()


def score(model_dir: str | Path, name: str, images=(1, 5, 8), limit: int = 40, seed: int = 0) -> dict:
    import owl3
    from owl3.evaluation.synthetic import SyntheticTask
    from owl3.evaluation.task import normalize

    pipe = owl3.load(model_dir)
    task = SyntheticTask(seed=seed, images=list(images), limit=limit, frames=0, which_images=0)
    tally: dict[str, list[int]] = {}
    with variant(name):
        for item in task.items(pipe.config.image_size):
            imgs, _ = item.media()
            pred = greedy_answer(pipe, name, item.prompt, imgs)
            t = tally.setdefault(item.group, [0, 0])
            t[0] += 1
            t[1] += int(normalize(pred) == normalize(item.answer))
    return {g: round(c / n, 4) for g, (n, c) in tally.items()}


def run_ablation(
    start: str | Path, out_dir: str | Path, steps: int, *, variants=VARIANTS, batch_size: int = 32,
    limit: int = 40, images=(1, 5, 8), seed: int = 0, say=print,
) -> dict:  # fmt: skip
    from dataclasses import replace

    from owl3.demo.data import MIXES, write_dataset
    from owl3.training import TrainConfig, train

    out = Path(out_dir)
    data = out / "data" / "binding.jsonl"
    if not data.is_file():
        mix = replace(MIXES["binding"], window=0.3)
        write_dataset(out / "data", steps * batch_size, mix=mix, seed=seed + 100, name="binding")
    saved = out / "results.json"
    results = json.loads(saved.read_text()) if saved.is_file() else {}
    for name in variants:
        if name in results:
            continue
        target = out / name
        t0 = time.perf_counter()
        cfg = TrainConfig(
            model=str(start), data=(str(data),), output=str(target), stage="sft", max_steps=steps,
            batch_size=batch_size, lr=1e-3, min_lr=5e-5, warmup=0.05, seq_len=8192, crop_prob=0.0,
            train_vision=True, vision_lr_scale=0.1, threads=1, seed=seed, log_every=25, progress=False,
            plot=False,
            extra={"ablation": name},
        )  # fmt: skip
        with variant(name), concat_training() if name == "concat" else contextlib.nullcontext():
            res = train(cfg)
        t1 = time.perf_counter()
        acc = score(target, name, images, limit, seed)
        results[name] = {"train_s": round(t1 - t0, 1), "final_loss": res.losses[-1], "accuracy": acc,
                         "eval_s": round(time.perf_counter() - t1, 1)}  # fmt: skip
        say(f"{name}: {results[name]}")
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_ablation(results, out / "ablation.png", steps)
    return results


def plot_ablation(results: dict, path: str | Path, steps: int) -> Path:
    """Accuracy against the number of images, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, res in results.items():
        groups = sorted(
            (int(g.split()[0]), acc) for g, acc in res["accuracy"].items() if g.split()[0].isdigit()
        )
        ax.plot([n for n, _ in groups], [100 * a for _, a in groups], marker="o", label=name)
    ax.set_xlabel("images in the prompt")
    ax.set_ylabel("exact-match accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"demo-scale ablation: same start, data and {steps} steps")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


__all__ = ["VARIANTS", "plot_ablation", "run_ablation", "score", "variant"]
