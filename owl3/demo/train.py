"""Train the built-in demo model from scratch: `owl3 demo-train OUT`.

One command: it trains the world tokenizer and writes a random-weight checkpoint of the `demo-cells`
preset (`OUT/init`), then runs the ten phases of `PHASES`, each from the previous phase's model
(`OUT/phase-1-tower`, ...): a tower phase pretrains the vision tower alone on the world's scene annotations
(`owl3/demo/tower.py`); a question phase writes its training set (`OUT/data/PHASE/`) and runs owl3's own
training code (`owl3.training.train`, stage `sft`, the vision tower trained too at 0.1x the lr); the two
one-off steps set the recency heads and open the gates. The last phase's model is copied to `OUT/model`: a
checkpoint in the official layout, the one shipped in `owl3/assets/demo` (56.6 min on a 2-core Zen 5 with
AVX-512; this command's output at seed 0 is the shipped model bit for bit).

Every phase trains on fresh rows (one epoch; phase k draws its rows and scene pool with seed + 1000 (k-1)),
uncropped images, the loss on answer tokens only (the training code's rule), AdamW (no weight decay) with
warmup and a cosine decay, batches of 32 short samples computed as `DEFAULT_LENGTH_SPLIT` pieces of similar
length (`TrainConfig.length_split`: the same step with less padding), `DEFAULT_THREADS` torch threads (the
thread count changes the float sums, so weights are reproduced only with the count they were trained with)
and one data-loader process. `--scale` multiplies every phase's step count (0.01 for a smoke test).

The recipe is the one docs/demo.md calls `cells-copy-lists`; the others tried on the way to it, with their
probes and ablations, are in commit 526f300 and their findings in docs/demo.md.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from owl3.demo import DEFAULT_LENGTH_SPLIT, DEFAULT_THREADS
from owl3.demo.data import Mix, write_dataset


@dataclass(frozen=True)
class Phase:
    """Train on a training set drawn from `mix`, through owl3's training code."""

    name: str
    mix: Mix
    steps: int
    lr: float
    min_lr: float
    vision_lr_scale: float = 0.1  # low, or the tower's output scale runs away under Adam (docs/demo.md)
    attention_loss_weight: float = 0.0  # on the mix's attention targets (Mix.attend, Mix.bind, ...)
    lr_scales: tuple[tuple[str, float], ...] = ()  # TrainConfig.lr_scales (HYPER: the hyper layers)


@dataclass(frozen=True)
class TowerPhase:
    """Pretrain the vision tower alone on the world's scene annotations (`owl3/demo/tower.py`), the
    small-scale analogue of starting from a pretrained SigLIP."""

    name: str
    steps: int
    lr: float = 3e-3
    batch_size: int = 64


@dataclass(frozen=True)
class RecencyInit:
    """Set the first hyper layer's recency heads (`owl3.demo.model.init_recency`) on the model so far: the
    tokens after each image then take in that image from the first step."""

    name: str
    strength: float = 3.0


@dataclass(frozen=True)
class GateInit:
    """Open the hyper layers' gates (`owl3.demo.model.open_gates`, + `bias` on every gate bias)."""

    name: str
    bias: float = 3.0


# the o_proj of the hyper layers of the model being trained: `train_demo` puts their 0-based indices where
# HYPER stands (r"layers\.(0|3)\.self_attn\.o_proj" for the demo presets), so a phase fits any preset
HYPER = "<hyper>"
HYPER_O_PROJ = rf"layers\.({HYPER})\.self_attn\.o_proj"

# Question kinds of one-image and "In Image X" rows, a kind listed k times drawn k times as often (the
# order matters: the rows are drawn by index). Position (9 answers, the slowest attribute to be read from
# the features) 3x.
WEIGHTED_KINDS = ("colour", "shape", "count_shape", "count_colour", "count_all", "position", "position",
                  "position", "size", "exists", "word", "word_colour")  # fmt: skip
# ... and the kinds a model trained up to `all` got wrong most: exists 4x, count_colour, shape and size 2x
WEAK_KINDS = (*WEIGHTED_KINDS, "exists", "exists", "exists", "count_colour", "shape", "size")
# ... and the counts, which it answered "There is one" whatever the count
COUNT_WEIGHTED_KINDS = (
    *WEAK_KINDS, *("count_colour",) * 4, *("count_shape",) * 3, *("count_all",) * 3, "exists", "exists",
)  # fmt: skip
# video question kinds, the ones answered worst drawn 2-3x
VIDEO_WEIGHTED_KINDS = (
    *("appear_after",) * 3, *("appear_last",) * 3, *("appear_count",) * 2, *("recolour_what",) * 2,
    "appear_first", "move_what", "move_direction", "recolour_after", "recolour_before",
)  # fmt: skip
# the binding options of every phase from `binding` on: each "In Image X" answer looks at image X's object
# (cross-attention) and at the tokens right after image X (self-attention, the route by which the question
# reaches image X's content), and the label targets on query head 3 (of the second key/value head, not the
# recency heads): the token after image X looks at its label's number, the answer's deciding words at the
# question's "Image X", so that both carry X (in a model without them the answer's residual does not hold
# X at any layer); with all four heads one-image counts suffered
BIND = {"bind": True, "copy_label": True, "copy_heads": (3,)}
# grounding, from `all` on: one-image answers read from one object (colour, shape, size, position, a "yes"
# of exists) and video answers naming one object look at that object's cell at each deciding word (weight
# 8, about one answer's tokens), the hyper layers' o_proj at 10x the lr (it carries the place it read)
GROUND = {"attention_loss_weight": 8.0, "lr_scales": ((HYPER_O_PROJ, 10.0),)}

PHASES: tuple[Phase | TowerPhase | RecencyInit | GateInit, ...] = (
    # 1. The tower alone on the world's scene annotations: a random tower does not learn shapes through the
    # language model (the real model starts from a pretrained SigLIP)
    TowerPhase("tower", steps=1600, lr=3e-3),
    # 2. The first hyper layer's recency heads: the tokens after each image look at that image from the
    # first step, a pattern a random layer is slow to find ("which image?" 13% -> 31%)
    RecencyInit("recency", strength=3.0),
    # 3. One-image questions of every kind. lr <= 1e-3 in every question phase: 3e-3 lets the vision path's
    # output scale run away and its gradients vanish
    Phase("single", Mix(single=1.0, multi=0.0, which=0.0, video=0.0), steps=600, lr=1e-3, min_lr=1e-4),
    # 4. Binding: "In Image X" among 2-8 images with hard distractors, "which image?", 8-frame videos; 30%
    # of the lists numbered from a random start, so labels up to 128 are trained; the binding targets
    Phase(
        "binding",
        Mix(single=0.2, multi=0.5, which=0.15, video=0.15, n_min=2, n_max=8, window=0.3, **BIND),
        steps=1000, lr=1e-3, min_lr=5e-5, attention_loss_weight=1.0,
    ),  # fmt: skip
    # 5. Open the hyper layers' gates (sigmoid(3) = 0.95): through a half-shut gate what the answer looked
    # at (an object's place) reaches the residual too weakly to be read
    GateInit("gates", bias=3.0),
    # 6. Everything mixed at a lower lr, grounded and bound
    Phase(
        "all",
        Mix(single=0.35, multi=0.35, which=0.1, video=0.2, n_min=2, n_max=8, window=0.3, kinds=WEIGHTED_KINDS,
            attend=True, **BIND),
        steps=900, lr=7e-4, min_lr=3e-5, **GROUND,
    ),  # fmt: skip
    # 7. The one-image kinds `all` gets wrong most: half the rows one picture, and answers that say "none"
    # (exists "No", a count of zero) look at the empty cells (`Mix.absent`)
    Phase(
        "weak",
        Mix(single=0.5, multi=0.3, which=0.05, video=0.15, n_min=2, n_max=8, window=0.3, kinds=WEAK_KINDS,
            attend=True, absent=True, **BIND),
        steps=1500, lr=5e-4, min_lr=5e-5, **GROUND,
    ),  # fmt: skip
    # 8. The video questions: 45% of the rows a video, the weak video kinds drawn more often, three
    # questions a row (the follow-ups ask about the same media, which pass the tower once for all three)
    Phase(
        "video",
        Mix(single=0.3, multi=0.2, which=0.05, video=0.45, n_min=2, n_max=8, window=0.3, kinds=WEAK_KINDS,
            video_kinds=VIDEO_WEIGHTED_KINDS, attend=True, absent=True, turns=3, **BIND),
        steps=1200, lr=5e-4, min_lr=5e-5, **GROUND,
    ),  # fmt: skip
    # 9. The counts: the model said "There is one" to every count and looked only at the empty cells at
    # the count words. The counted objects become the look at the words that say how many
    # (`Mix.count_objects`; for "how many objects appeared?" the last frame's objects, `Mix.count_look`),
    # lists of 2-32 images (log-uniform)
    Phase(
        "count",
        Mix(single=0.5, multi=0.2, which=0.05, video=0.25, n_min=2, n_max=32, log_uniform=True, window=0.3,
            kinds=COUNT_WEIGHTED_KINDS, video_kinds=VIDEO_WEIGHTED_KINDS, attend=True, absent=True, turns=3,
            count_look=True, count_objects=True, **BIND),
        steps=600, lr=5e-4, min_lr=5e-5, **GROUND,
    ),  # fmt: skip
    # 10. A count of two: one-image counts of a colour or shape drawn as none, one and two equally often
    # (not in the lists, where balanced counts cost the lists), the count looks spread over the picture
    # (`Mix.count_odds`); lists of 2-24 images (log-uniform: 20 images 56% -> 71-74%); 1,200 steps, since
    # the label targets cost one-image counts in a 600-step last phase
    Phase(
        "two",
        Mix(single=0.5, multi=0.2, which=0.05, video=0.25, n_min=2, n_max=24, log_uniform=True, window=0.3,
            kinds=COUNT_WEIGHTED_KINDS, video_kinds=VIDEO_WEIGHTED_KINDS, attend=True, absent=True, turns=3,
            count_look=True, count_objects=True, count_odds=4.0, count_balance=True,
            count_balance_lists=False, **BIND),
        steps=1200, lr=5e-4, min_lr=5e-5, **GROUND,
    ),  # fmt: skip
)


def resolve_lr_scales(scales: tuple[tuple[str, float], ...], hyper_layers: tuple[int, ...]) -> dict:
    """A phase's `lr_scales` for a model whose hyper layers are `hyper_layers` (1-based): HYPER becomes
    their 0-based indices."""
    which = "|".join(str(i - 1) for i in hyper_layers)
    return {pattern.replace(HYPER, which): factor for pattern, factor in scales}


def train_demo(
    out_dir: str | Path,
    *,
    scale: float = 1.0,
    batch_size: int = 32,
    threads: int = DEFAULT_THREADS,
    workers: int = 1,
    length_split: int = DEFAULT_LENGTH_SPLIT,
    seed: int = 0,
    pool: int = 20_000,
    phases: tuple[Phase | TowerPhase | RecencyInit | GateInit, ...] = PHASES,
    preset: str = "demo-cells",
    progress: bool = True,
    say=print,
) -> Path:
    """Run the recipe into `out_dir`; returns `out_dir/model`. Re-running skips finished phases.

    `out_dir/demo_train.json` records each phase's time, last loss and the machine that trained it (CPU,
    vector instructions, torch): the same recipe writes the same weights only on the same kernels.
    `phases` and `preset` other than the defaults are for tests (a phase or two on a tiny preset)."""
    from owl3.bench.common import machine
    from owl3.checkpoint.load import read_config
    from owl3.demo.model import init_checkpoint
    from owl3.training import TrainConfig, train

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log: dict = {
        "scale": scale, "batch_size": batch_size, "threads": threads, "workers": workers,
        "length_split": length_split, "seed": seed, "phases": [],
    }  # fmt: skip
    log_path = out / "demo_train.json"
    # a resumed run keeps the records of the phases an earlier run finished
    before = {p["phase"]: p for p in json.loads(log_path.read_text())["phases"]} if log_path.is_file() else {}
    init = out / "init"
    if not (init / "model.safetensors").is_file():
        init_checkpoint(init, seed=seed, name=preset)
    say(f"init: {init} ({time.perf_counter() - t0:.0f} s)")
    model = init
    for k, ph in enumerate(phases, 1):
        target = out / f"phase-{k}-{ph.name}"
        if (target / "model.safetensors").is_file():
            say(f"phase {k} ({ph.name}): done before, {target}")
            if ph.name in before:
                log["phases"].append({**before[ph.name], "done_before": True})
            model = target
            continue
        t1 = time.perf_counter()
        if isinstance(ph, (RecencyInit, GateInit)):
            from owl3.checkpoint import load_model, save_model
            from owl3.demo.model import init_recency, open_gates

            m = load_model(model)
            if isinstance(ph, RecencyInit):
                init_recency(m, strength=ph.strength)
                setting, done = {"strength": ph.strength}, "recency heads of hyper layer 1 set"
            else:
                open_gates(m, ph.bias)
                setting, done = {"bias": ph.bias}, "hyper layers' gates opened"
            save_model(m, target, copy_from=model)  # tokenizer and generation config come along
            log["phases"].append({"phase": ph.name, "steps": 0, "train_s": 0.0, **setting})
            say(f"phase {k} ({ph.name}): {done} ({setting})")
            model = target
            continue
        steps = max(1, round(ph.steps * scale))
        rows = steps * batch_size
        if isinstance(ph, TowerPhase):
            from owl3.demo.tower import pretrain_tower

            say(f"phase {k} ({ph.name}): pretraining the vision tower, {steps} steps")
            res = pretrain_tower(
                model, target, steps=steps, batch_size=ph.batch_size, lr=ph.lr, seed=seed + k,
                threads=threads, eval_every=max(1, min(100, steps)),
                say=say if progress else (lambda s: None),
            )  # fmt: skip
            log["phases"].append(
                {"phase": ph.name, "steps": steps, "train_s": res.seconds,
                 "final_loss": res.final.get("loss"), "tower_accuracy": res.final, "machine": machine()}
            )  # fmt: skip
            say(f"phase {k} ({ph.name}): {res.seconds:.0f} s, held-out accuracy {res.final}")
            model = target
            continue
        data = write_dataset(
            out / "data" / ph.name, rows, mix=ph.mix, seed=seed + 1000 * (k - 1), pool=pool, name=ph.name
        )
        t2 = time.perf_counter()
        say(f"phase {k} ({ph.name}): {rows} rows written in {t2 - t1:.0f} s; training {steps} steps")
        cfg = TrainConfig(
            model=str(model),
            data=(str(data),),
            output=str(target),
            stage="sft",
            max_steps=steps,
            batch_size=batch_size,
            lr=ph.lr,
            min_lr=ph.min_lr,
            warmup=0.05,
            weight_decay=0.0,
            vision_lr_scale=ph.vision_lr_scale,
            lr_scales=resolve_lr_scales(ph.lr_scales, read_config(model).text.hyper_layers),
            attention_loss_weight=ph.attention_loss_weight,
            seq_len=8192,
            crop_prob=0.0,  # uncropped images: the world's pictures are drawn at the tower's size
            train_vision=True,
            threads=threads,
            length_split=length_split,
            num_workers=workers,  # pictures and videos decoded on the other core while this one trains
            seed=seed + k,
            save_every=max(50, steps // 4),
            save_total_limit=1,
            log_every=25,
            progress=progress,
            extra={"demo_phase": ph.name},
        )
        result = train(cfg)
        t3 = time.perf_counter()
        log["phases"].append(
            {"phase": ph.name, "steps": steps, "rows": rows, "data_s": round(t2 - t1, 1),
             "train_s": round(t3 - t2, 1), "final_loss": result.losses[-1] if result.losses else None,
             "machine": machine()}
        )  # fmt: skip
        say(f"phase {k} ({ph.name}): {t3 - t2:.0f} s, last loss {log['phases'][-1]['final_loss']:.4f}")
        model = target
    final = out / "model"
    if final.exists():
        shutil.rmtree(final)
    final.mkdir()
    for f in sorted(model.iterdir()):
        if f.is_file() and f.name not in ("metrics.jsonl", "loss.png", "train_config.yaml"):
            shutil.copy2(f, final / f.name)
    log["run_s"] = round(time.perf_counter() - t0, 1)  # this invocation
    # the whole recipe: the phases of this run plus those an earlier run finished
    earlier = sum(p.get("data_s", 0) + p["train_s"] for p in log["phases"] if p.get("done_before"))
    log["total_s"] = round(log["run_s"] + earlier, 1)
    log_path.write_text(json.dumps(log, indent=2) + "\n")
    run, total = log["run_s"] / 60, log["total_s"] / 60
    say(f"trained the demo model into {final} in {run:.1f} min (whole recipe {total:.1f} min)")
    return final



__all__ = [
    "COUNT_WEIGHTED_KINDS", "PHASES", "VIDEO_WEIGHTED_KINDS", "WEAK_KINDS", "WEIGHTED_KINDS", "GateInit",
    "Phase", "RecencyInit", "TowerPhase", "resolve_lr_scales", "train_demo",
]  # fmt: skip
