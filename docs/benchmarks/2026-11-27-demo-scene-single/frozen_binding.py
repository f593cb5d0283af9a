"""bound's binding phase (same rows, same settings) with the vision tower frozen: quality and time."""
from owl3.training import TrainConfig, train
cfg = TrainConfig(model="/tmp/e2/S/phase-3-single", data=("/tmp/e2/S/data/binding/binding.jsonl",), output="/tmp/f1/FB",
    stage="sft", max_steps=1000, batch_size=32, lr=1e-3, min_lr=5e-5, warmup=0.05, weight_decay=0.0,
    vision_lr_scale=0.1, attention_loss_weight=1.0, seq_len=8192, crop_prob=0.0, train_vision=False, threads=1,
    num_workers=1, seed=4, save_every=250, save_total_limit=1, log_every=25, progress=False)
train(cfg)
