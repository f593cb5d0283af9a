import sys, time
from owl3.training import TrainConfig, train
model, data, threads, workers, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
cfg = TrainConfig(model=model, data=(data,), output=sys.argv[6], stage="sft", max_steps=steps,
    batch_size=32, lr=1e-3, min_lr=1e-4, warmup=0.05, weight_decay=0.0, vision_lr_scale=0.1, attention_loss_weight=1.0,
    seq_len=8192, crop_prob=0.0, train_vision=True, threads=threads, num_workers=workers, seed=5,
    save_every=10**6, save_total_limit=1, log_every=1000, progress=False)
t = time.perf_counter()
r = train(cfg)
print(f"threads {threads} workers {workers}: {(time.perf_counter()-t)/steps:.3f} s/step  last loss {r.losses[-1]:.6f}")
