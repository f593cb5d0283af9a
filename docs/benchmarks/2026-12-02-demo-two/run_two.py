"""The `cells-two` recipe resumed after the shipped model: its first nine phases are `cells-more-video`'s,
whose run (the fifteenth session, on a 2-core AVX-512 Xeon) wrote the shipped weights, so only the tenth
phase (`two`) is trained here, by `owl3.demo.train.train_demo` as `owl3 demo-train OUT --recipe cells-two`
does (seed 0, two torch threads, one loader process).

    python run_two.py OUT [PREVIOUS]

OUT gets that run's record (demo_train.json, so the whole recipe's time adds its phases' times), its
model (PREVIOUS, default owl3/assets/demo, which held it until G shipped; since then `git show
7aecdfc:owl3/assets/demo/FILE` gives its files) as phase 9 and placeholders of phases 1-8 (train_demo skips
a phase whose directory has a model.safetensors; only phase 9's is read)."""
import shutil
import sys
from pathlib import Path

from owl3.demo import DEFAULT_THREADS
from owl3.demo.train import CELLS_MORE_VIDEO_PHASES, CELLS_TWO_PHASES, train_demo

root = Path(__file__).resolve().parents[3]
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
shipped = Path(sys.argv[2]) if len(sys.argv) > 2 else root / "owl3" / "assets" / "demo"
record = root / "docs/benchmarks/2026-12-02-demo-threads/recipe-cells-more-video-from-scratch-demo_train.json"
shutil.copy(record, out / "demo_train.json")
for k, ph in enumerate(CELLS_MORE_VIDEO_PHASES, 1):
    target = out / f"phase-{k}-{ph.name}"
    target.mkdir(exist_ok=True)
    if k == len(CELLS_MORE_VIDEO_PHASES):
        shutil.copytree(shipped, target, dirs_exist_ok=True)
    elif not (target / "model.safetensors").exists():
        (target / "model.safetensors").symlink_to(shipped / "model.safetensors")  # a placeholder: skipped
(out / "init").mkdir(exist_ok=True)
if not (out / "init" / "model.safetensors").exists():
    (out / "init" / "model.safetensors").symlink_to(shipped / "model.safetensors")
train_demo(out, phases=CELLS_TWO_PHASES, preset="demo-cells", threads=DEFAULT_THREADS, workers=1, seed=0,
           progress=False)  # fmt: skip
