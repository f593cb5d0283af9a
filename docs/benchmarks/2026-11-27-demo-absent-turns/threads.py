"""Steps per second of the demo recipe's binding phase with 1 or 2 torch threads (one loader process, nothing
else running): from phase 3 of a `bound` run BASE, its own binding rows, 30 steps.

    python threads.py BASE 1 OUT1 30 ; python threads.py BASE 2 OUT2 30"""
import sys, json
from owl3.training import TrainConfig, train
base, thr, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cfg = TrainConfig(model=f"{base}/phase-3-single", data=(f"{base}/data/binding/binding.jsonl",), output=out,
    stage="sft", max_steps=int(sys.argv[4]), batch_size=32, lr=1e-3, min_lr=1e-4, warmup=0.05, weight_decay=0.0,
    vision_lr_scale=0.1, attention_loss_weight=1.0, seq_len=8192, crop_prob=0.0, train_vision=True, threads=thr,
    num_workers=1, seed=5, save_every=1000, save_total_limit=1, log_every=5, progress=False)
train(cfg)
