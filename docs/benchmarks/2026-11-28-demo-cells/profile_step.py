"""Seconds per training step of the demo recipe's binding rows, and of the vision tower's forward alone.

    python -m owl3.demo data /tmp/prof/bind --rows 640 --mix binding
    python profile_step.py MODEL /tmp/prof/bind/binding.jsonl [THREADS] [bf16]

MODEL: a demo checkpoint (its weights do not matter for the time). 10 batches of 32 rows encoded first, 2
warm-up steps, then the mean of 8 optimizer steps (`owl3.training`'s own step, tower trained at 0.1x the lr,
attention loss on) and of the tower's forward over the same 8 batches. A fourth argument `bf16` (added in the
thirteenth session) turns on `TrainConfig.bf16`: autocast to bfloat16 with fp32 master weights.
`trainer_and_batches` is the setup, also used by docs/benchmarks/2026-12-02-demo-video/bf16_ops.py."""
import sys
import time

import torch

from owl3.training import TrainConfig
from owl3.training import distributed as D
from owl3.training.encode import SampleEncoder, collate
from owl3.training.loop import Trainer
from owl3.training.sampler import RecordDataset


def trainer_and_batches(model: str, data: str, threads: int = 1, bf16: bool = False, n: int = 10):
    """A Trainer of `model` on the rows of `data` (`owl3.training`'s own, set up as the demo recipe's question
    phases train) and its first `n` batches of 32 rows, encoded."""
    cfg = TrainConfig(model=model, data=(data,), output="/tmp/profile-step", stage="sft", max_steps=20,
                      batch_size=32, lr=1e-3, min_lr=1e-4, vision_lr_scale=0.1, attention_loss_weight=1.0,
                      seq_len=8192, crop_prob=0.0, train_vision=True, threads=threads, num_workers=0, seed=5,
                      save_every=0, progress=False, bf16=bf16)  # fmt: skip
    tr = Trainer(cfg, D.setup("cpu"))
    tr.setup()
    grid = tr.model_cfg.vision.image_size // tr.model_cfg.vision.patch_size
    enc = SampleEncoder(tr.processor, seq_len=cfg.seq_len, frames=cfg.frames, crop_prob=0.0, seed=5,
                        grid=grid)
    ds = RecordDataset(tr.records, enc)
    batches = [collate([ds[(0, i)] for i in range(j * 32, (j + 1) * 32)], pad_id=tr.processor.pad_token_id)
               for j in range(n)]  # fmt: skip
    return tr, batches


if __name__ == "__main__":
    model, data = sys.argv[1], sys.argv[2]
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    bf16 = sys.argv[4:5] == ["bf16"]
    tr, batches = trainer_and_batches(model, data, threads, bf16)
    grid = tr.model_cfg.vision.image_size // tr.model_cfg.vision.patch_size
    for i in range(2):
        tr.train_step([batches[i]], i)
    t = time.perf_counter()
    for i in range(2, 10):
        tr.train_step([batches[i]], i)
    step = (time.perf_counter() - t) / 8
    with torch.no_grad():
        t = time.perf_counter()
        for b in batches[2:]:
            tr.model.vision_model(b.pixel_values)
        tower = (time.perf_counter() - t) / 8
    pictures = sum(b.pixel_values.shape[0] for b in batches[2:]) / 8
    how = f" ({threads} thread(s){', bf16 autocast' if bf16 else ''})" if len(sys.argv) > 3 else ""
    print(f"{model}: {grid * grid} visual tokens per picture, {pictures:.0f} pictures a batch{how}; "
          f"step {step:.3f} s, tower forward {tower:.3f} s")
