"""Seconds per optimizer step of the demo recipe's last phase, with and without `length_split`, and the
padding each split leaves (padded tokens / real tokens of the same batches).

    .venv/bin/python benchmarks/train_step.py OUT [--steps 30] [--splits 1,4] [--rounds 2]

Writes the last phase of the demo recipe (`two` of owl3.demo.train.PHASES: its mix, batch 32, targets
and lr) as a dataset of steps x 32 rows into OUT/data, then trains the built-in demo model on it for
`--steps` steps once per split and round, the splits alternating within each round (this machine is
noisy: compare the ratios of one run). Each run's first 4 steps are left out of its mean (warm-up).
Prints a table and a last line of JSON. A checkout without `TrainConfig.length_split` runs its split 1
only (before/after).
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import fields
from pathlib import Path

from owl3.api import DEFAULT_MODEL
from owl3.bench.common import machine
from owl3.checkpoint.load import read_config
from owl3.demo.data import write_dataset
from owl3.demo.train import PHASES, resolve_lr_scales
from owl3.processing import Processor
from owl3.training import SampleEncoder, TrainConfig, collate, read_data, train
from owl3.training.encode import split_by_length
from owl3.training.metrics import read_metrics
from owl3.training.sampler import StepSampler

WARM = 4


def padding(data: Path, steps: int, splits: list[int], seed: int = 1) -> dict[int, float]:
    """Padded / real tokens over the batches that training with `seed` draws, per split (the batches
    collated and split as the training loop does)."""
    records, _ = read_data([str(data)])
    processor = Processor.from_dir(DEFAULT_MODEL, read_config(DEFAULT_MODEL).image_size)
    enc = SampleEncoder(processor, seq_len=8192, frames=8, crop_prob=0.0, seed=seed)  # as training encodes
    padded, real = dict.fromkeys(splits, 0), 0
    for keys in StepSampler(len(records), 32, 1, 0, 1, seed, True, 0, steps):
        batch = collate([enc(records[i], e, i) for e, i in keys], processor.pad_token_id)
        real += batch.n_tokens
        for k in splits:
            padded[k] += sum(piece.input_ids.numel() for piece in split_by_length(batch, k))
    return {k: round(padded[k] / real, 3) for k in splits}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--splits", default="1,4")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    out = Path(args.out)
    phase = PHASES[-1]
    data = write_dataset(out / "data", args.steps * 32, mix=phase.mix, seed=9000, name="two")
    has_split = "length_split" in {f.name for f in fields(TrainConfig)}
    splits = [int(s) for s in args.splits.split(",")] if has_split else [1]
    times: dict[int, list[float]] = {k: [] for k in splits}
    for r in range(args.rounds):
        for k in splits:
            run = out / f"run-{r}-split{k}"
            cfg = TrainConfig(
                model=str(DEFAULT_MODEL), data=(str(data),), output=str(run), stage="sft",
                max_steps=args.steps, batch_size=32, lr=phase.lr, min_lr=phase.min_lr, warmup=0.05,
                vision_lr_scale=phase.vision_lr_scale,
                lr_scales=resolve_lr_scales(phase.lr_scales, read_config(DEFAULT_MODEL).text.hyper_layers),
                attention_loss_weight=phase.attention_loss_weight, seq_len=8192, crop_prob=0.0,
                train_vision=True, threads=args.threads, num_workers=1, seed=1, save_every=None,
                progress=False, plot=False, log_every=1000, **({"length_split": k} if has_split else {}),
            )  # fmt: skip
            train(cfg)
            times[k] += [row["step_s"] for row in read_metrics(run / "metrics.jsonl")[WARM:]]
    pad = padding(data, args.steps, splits)
    base = statistics.mean(times[splits[0]])
    rows = []
    for k in splits:
        mean = statistics.mean(times[k])
        median = statistics.median(times[k])
        rows.append(
            {"length_split": k, "steps": len(times[k]), "s_per_step": round(mean, 3),
             "median_s": round(median, 3), "speedup": round(base / mean, 2), "padding": pad[k]}
        )  # fmt: skip
    print("length_split | steps timed | s/step (mean) | median | speedup vs the first | padded / real tokens")
    for row in rows:
        cols = ("length_split", "steps", "s_per_step", "median_s", "speedup", "padding")
        print(" | ".join(str(row[c]) for c in cols))
    print(json.dumps({"bench": "train_step", "machine": machine(), "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
