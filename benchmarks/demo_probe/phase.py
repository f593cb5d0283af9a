import sys
from owl3.training import TrainConfig, train
model, data, out, steps, lr, min_lr, tv, vls = sys.argv[1:9]
cfg = TrainConfig(model=model, data=tuple(data.split(",")), output=out, stage="sft", max_steps=int(steps), batch_size=32,
    lr=float(lr), min_lr=float(min_lr), warmup=0.05, weight_decay=0.0, vision_lr_scale=float(vls), seq_len=8192,
    crop_prob=0.0, train_vision=tv == "1", threads=1, seed=1, save_every=max(50, int(steps)//4), save_total_limit=1,
    log_every=25, progress=False)
train(cfg)
