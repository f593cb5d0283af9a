"""Where does the answer look when the thing asked about is not there?

    python benchmarks/demo_probe/absence_share.py MODEL [ROWS]

One-image exists / count questions (`write_dataset` rows of stream `train:777`, absence targets on: the empty
cells of the picture at the word that says "none"; grounding targets on a lone "yes": the object's cell).
For each question, the last hyper layer's cross-attention at the deciding position, mean over heads:
prints the geometric mean share on the target patches (exp of minus the mean -log share), separately for
answers that say none (target: the empty cells) and "yes" answers (target: the object), and how often the
model (teacher-forced up to that word) gives the deciding word ("No" / "no" / "Yes") probability > 1/2,
split by whether the look put more or less than half of its weight on the target.
"""

import math
import sys
import tempfile

import torch

from owl3.checkpoint import load_model
from owl3.demo.data import Mix, write_dataset
from owl3.processing import Processor
from owl3.training import SampleEncoder, collate, read_data
from owl3.training.step import TrainStep

model_dir = sys.argv[1]
rows = int(sys.argv[2]) if len(sys.argv) > 2 else 256
torch.set_num_threads(1)
mix = Mix(single=1, multi=0, which=0, video=0, kinds=("exists", "count_colour", "count_shape"), attend=True,
          absent=True)  # fmt: skip
with tempfile.TemporaryDirectory() as tmp:
    data = write_dataset(tmp, rows, mix=mix, seed=777, pool=2000)
    records, _ = read_data([data])
    model = load_model(model_dir).eval()
    processor = Processor.from_dir(model_dir, model.cfg.vision.image_size)
    enc = SampleEncoder(processor, seq_len=4096, frames=8, crop_prob=0.0, seed=0, grid=6)
    step = TrainStep(model, attention_weight=1.0)
    logs = {"none": [], "yes": []}
    for record in records:
        if not record.attend:
            continue
        kind = "none" if record.attend[0].boxes else "yes"
        s = enc(record)
        b = collate([s], processor.pad_token_id)
        (pos, _), *_ = b.attend[0]
        only = torch.full_like(b.labels, -100)
        only[0, pos + 1] = b.labels[0, pos + 1]  # the deciding word alone carries the loss
        with torch.no_grad():
            nll = step(b.input_ids, only, b.pixel_values, b.n_media, b.media_starts, b.attend[:1], None)
        ce = float(nll) - step.attention_sum  # the step's loss adds the attention term (weight 1)
        logs[kind].append((step.attention_sum / step.attention_count, math.exp(-ce)))
for kind, values in logs.items():
    share = math.exp(-sum(v for v, _ in values) / len(values)) if values else float("nan")
    print(f"{kind:>5}: {len(values)} questions, geometric mean share on the target {share:.3f}")
    for name, part in (("look > 1/2", [p for v, p in values if v < math.log(2)]),
                       ("look < 1/2", [p for v, p in values if v >= math.log(2)])):  # fmt: skip
        right = sum(p > 0.5 for p in part)
        print(f"       {name}: {len(part)} questions, the deciding word right in {right}")
