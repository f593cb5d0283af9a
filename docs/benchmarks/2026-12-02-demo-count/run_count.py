"""A ninth phase for counting after the shipped weights (the `cells-video` recipe's model, which
`owl3 demo-train` writes bit for bit on this CPU): the shipped model stands in for phase 8, and phase 9
trains from it on fresh rows (seed 8000), as `owl3 demo-train` would if the recipe had that phase.

    python run_count.py OUT VARIANT [STEPS]

VARIANT names the phase's mix (below): the `video` phase's, with half the rows one picture, a quarter
videos, and the count kinds and exists drawn more often. One torch thread, one loader process."""
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from owl3.demo.train import CELLS_VIDEO_PHASES, COUNT_WEIGHTED_KINDS, train_demo

out, variant = Path(sys.argv[1]), sys.argv[2]
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 600
shipped = Path(__file__).resolve().parents[3] / "owl3" / "assets" / "demo"
phases = CELLS_VIDEO_PHASES
last = f"phase-{len(phases)}-{phases[-1].name}"
if not (out / last / "model.safetensors").is_file():
    shutil.copytree(shipped, out / last, dirs_exist_ok=True)
    for k, ph in enumerate(phases[:-1], 1):  # marks: phases 1-7 are done (only phase 8's model is read)
        (out / f"phase-{k}-{ph.name}").mkdir(parents=True, exist_ok=True)
        (out / f"phase-{k}-{ph.name}" / "model.safetensors").touch()
video = phases[-1]
# the `video` phase's mix with half the rows one picture, a quarter videos, and the three count kinds and
# exists drawn more (COUNT_WEIGHTED_KINDS, the kinds of the recipe's `count` phase)
counts = replace(video.mix, single=0.5, multi=0.2, which=0.05, video=0.25, kinds=COUNT_WEIGHTED_KINDS)
mixes = {
    "counts": counts,  # K0
    "balance": replace(counts, count_balance=True),  # K1: counts of 0, 1, 2 drawn as often
    "balance-look": replace(counts, count_balance=True, count_objects=True),  # K2: + the count look
    "look": replace(counts, count_objects=True),  # K3: K0 with the count look
    "video": replace(counts, single=0.4, multi=0.2, which=0.05, video=0.35),  # K4: K0, more video
    # K5, K6: K3 and K0 with the list rows' image counts log-uniform in 2-32 (the `long` mix's), not 2-8
    "look-long": replace(counts, count_objects=True, n_max=32, log_uniform=True),
    "long": replace(counts, n_max=32, log_uniform=True),
    # K7 (the recipe's `count` phase): K5 with `Mix.count_look` (how many objects appeared: the last frame's
    # objects at the count word)
    "look-long-video": replace(counts, count_objects=True, n_max=32, log_uniform=True, count_look=True),
}
phase = replace(video, name="count", mix=mixes[variant], steps=steps)
train_demo(out, phases=(*phases, phase), preset="demo-cells", threads=1, workers=1, progress=False)
