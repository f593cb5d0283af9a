"""The rows of hand_loop.py (one object, colour) written as JSONL and trained by owl3.training.train.

python benchmarks/demo_probe/via_trainer.py INIT LR VISION_LR_SCALE STEPS OUT
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SIZE, Encoder, evaluate, make_rows  # noqa: E402

from owl3.demo.world import render  # noqa: E402
from owl3.training import TrainConfig, train  # noqa: E402
from owl3.training.step import TrainStep  # noqa: E402

init, lr, scale, steps, out = (
    sys.argv[1],
    float(sys.argv[2]),
    float(sys.argv[3]),
    int(sys.argv[4]),
    Path(sys.argv[5]),
)
torch.set_num_threads(1)
data = out / "data"
(data / "images").mkdir(parents=True, exist_ok=True)
rows = []
for it in range(1, steps + 1):
    for j, (scene, qa) in enumerate(make_rows(32, 1000 + it)):
        p = f"images/{it:04d}-{j:02d}.png"
        render(scene, SIZE).save(data / p)
        turns = [
            {"role": "user", "content": f"<image>\n{qa.question}"},
            {"role": "assistant", "content": qa.answer},
        ]
        rows.append({"messages": turns, "images": [p]})
(data / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
cfg = TrainConfig(
    model=init,
    data=(str(data / "rows.jsonl"),),
    output=str(out / "model"),
    stage="sft",
    max_steps=steps,
    batch_size=32,
    lr=lr,
    min_lr=lr / 10,
    warmup=0.05,
    weight_decay=0.0,
    vision_lr_scale=scale,
    seq_len=8192,
    crop_prob=0.0,
    train_vision=True,
    threads=1,
    seed=1,
    save_every=1000,
    log_every=50,
    progress=False,
)
enc, test = Encoder(init), make_rows(128, 12345)


def on_step(rec, model):
    if rec["step"] % 50 == 0:
        print(
            rec["step"],
            round(rec["loss"], 4),
            evaluate(TrainStep(model, train_vision=True), enc, test),
            flush=True,
        )
        model.train()


print("done", train(cfg, on_step=on_step).losses[-1])
