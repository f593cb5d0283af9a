"""Phase 10 (`two`) of `cells-two` trained again after the previous shipped model, as
docs/benchmarks/2026-12-02-demo-two/run_two.py did for the shipped weights (G), but with this commit's
training code (the attention losses computed for all targets at once) and each batch computed as K pieces
of similar length (`TrainConfig.length_split`; `owl3 demo-train`'s default since this commit is 2).

    python run_split.py OUT PREVIOUS K

PREVIOUS: the previous shipped model (`git show 7aecdfc:owl3/assets/demo/FILE`), phase 9 of the recipe.
OUT gets the run's record (demo_train.json: phase 10's time on this machine) and its model."""
import shutil
import sys
from pathlib import Path

from owl3.demo import DEFAULT_THREADS
from owl3.demo.train import CELLS_MORE_VIDEO_PHASES, CELLS_TWO_PHASES, train_demo

root = Path(__file__).resolve().parents[3]
out, shipped, k = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
record = root / "docs/benchmarks/2026-12-02-demo-threads/recipe-cells-more-video-from-scratch-demo_train.json"
shutil.copy(record, out / "demo_train.json")
for i, ph in enumerate(CELLS_MORE_VIDEO_PHASES, 1):
    target = out / f"phase-{i}-{ph.name}"
    target.mkdir(exist_ok=True)
    if i == len(CELLS_MORE_VIDEO_PHASES):
        shutil.copytree(shipped, target, dirs_exist_ok=True)
    elif not (target / "model.safetensors").exists():
        (target / "model.safetensors").symlink_to(shipped / "model.safetensors")  # a placeholder: skipped
(out / "init").mkdir(exist_ok=True)
if not (out / "init" / "model.safetensors").exists():
    (out / "init" / "model.safetensors").symlink_to(shipped / "model.safetensors")
train_demo(out, phases=CELLS_TWO_PHASES, preset="demo-cells", threads=DEFAULT_THREADS, workers=1, seed=0,
           length_split=k, progress=False)  # fmt: skip
