"""One question phase of the demo model through owl3's own training code, for the probes of docs/demo.md.

    python benchmarks/demo_probe/phase.py MODEL DATA OUT STEPS LR MIN_LR TRAIN_VISION VISION_LR_SCALE \
        [WORKERS]

DATA: one or more comma-separated training files (e.g. OUT/data/single/single.jsonl of `owl3 demo-train`);
TRAIN_VISION: 1 trains the tower (at VISION_LR_SCALE x LR), 0 freezes it. Batch 32, one thread, no crops.
"""

import sys

from owl3.training import TrainConfig, train

model, data, out, steps, lr, min_lr, tv, vls = sys.argv[1:9]
workers = int(sys.argv[9]) if len(sys.argv) > 9 else 0
cfg = TrainConfig(
    model=model, data=tuple(data.split(",")), output=out, stage="sft", max_steps=int(steps), batch_size=32,
    lr=float(lr), min_lr=float(min_lr), warmup=0.05, weight_decay=0.0, vision_lr_scale=float(vls),
    seq_len=8192, crop_prob=0.0, train_vision=tv == "1", threads=1, seed=1, num_workers=workers,
    save_every=max(50, int(steps) // 4), save_total_limit=1, log_every=25, progress=False,
)  # fmt: skip
train(cfg)
