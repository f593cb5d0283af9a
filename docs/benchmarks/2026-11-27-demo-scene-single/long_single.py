"""Single phase of N steps from the bound recipe's phase-2 model, keeping every checkpoint."""
import sys
from owl3.demo.data import write_dataset
from owl3.demo.train import SINGLE
from owl3.training import TrainConfig, train
steps, out = int(sys.argv[1]), sys.argv[2]
data = write_dataset(f"{out}-data", steps * 32, mix=SINGLE, seed=2000, pool=20_000, name="single")
cfg = TrainConfig(model="/tmp/e2/S/phase-2-recency", data=(str(data),), output=out, stage="sft", max_steps=steps,
    batch_size=32, lr=1e-3, min_lr=1e-4, warmup=0.05, weight_decay=0.0, vision_lr_scale=0.1, seq_len=8192,
    crop_prob=0.0, train_vision=True, threads=1, seed=3, num_workers=1, save_every=steps // 4,
    save_total_limit=8, log_every=100, progress=False)
train(cfg)
