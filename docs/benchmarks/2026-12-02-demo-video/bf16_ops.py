"""Where a demo training step spends its time, float32 against bf16 autocast: the torch profiler over 4 steps
(after 2 warm-up steps) of the twelfth session's profile_step.py setup, the 6 ops with the most self CPU time.

    python bf16_ops.py MODEL /tmp/prof/bind/binding.jsonl"""
import sys

from torch.profiler import ProfilerActivity, profile

from owl3.training import TrainConfig
from owl3.training import distributed as D
from owl3.training.encode import SampleEncoder, collate
from owl3.training.loop import Trainer
from owl3.training.sampler import RecordDataset

model, data = sys.argv[1], sys.argv[2]
for bf16 in (False, True):
    cfg = TrainConfig(model=model, data=(data,), output="/tmp/profile-ops", stage="sft", max_steps=20,
                      batch_size=32, lr=1e-3, min_lr=1e-4, vision_lr_scale=0.1, attention_loss_weight=1.0,
                      seq_len=8192, crop_prob=0.0, train_vision=True, threads=1, num_workers=0, seed=5,
                      save_every=0, progress=False, bf16=bf16)  # fmt: skip
    tr = Trainer(cfg, D.setup("cpu"))
    tr.setup()
    grid = tr.model_cfg.vision.image_size // tr.model_cfg.vision.patch_size
    enc = SampleEncoder(tr.processor, seq_len=cfg.seq_len, frames=cfg.frames, crop_prob=0.0, seed=5,
                        grid=grid)
    ds = RecordDataset(tr.records, enc)
    batches = [collate([ds[(0, i)] for i in range(j * 32, (j + 1) * 32)], pad_id=tr.processor.pad_token_id)
               for j in range(6)]  # fmt: skip
    for i in range(2):
        tr.train_step([batches[i]], i)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(2, 6):
            tr.train_step([batches[i]], i)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    print(f"{'bf16 autocast' if bf16 else 'float32'}: {total / 4e6:.3f} s of self CPU time a step (profiled)")
    for e in ops[:6]:
        print(f"  {e.key[:60]:60} {e.self_cpu_time_total / 4e3:8.1f} ms a step  {e.count // 4:5d} calls")
