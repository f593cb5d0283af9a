"""The training loop: `train(TrainConfig(...)) -> TrainResult`.

One optimizer step = `grad_accum` micro-batches of `batch_size` samples on each of `world` processes.
The step's samples are fixed by (seed, step) alone, so a resumed or re-sharded run sees the same data in
the same order. The loss is the mean over the step's answer tokens across all micro-batches and ranks
(each micro-batch's summed loss is divided by the global token count, all-reduced before the first
backward), so 1 process x 2 accumulation steps and 2 processes x 1 give the same gradients.

AdamW over the stage's trainable parameters (fp32 master weights; --bf16 runs the math in bf16 through
autocast, or FSDP2's mixed-precision policy), linear warmup then cosine decay to min_lr, gradient
clipping. SIGINT/SIGTERM finish the current step, save a checkpoint and stop; `--resume` continues.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from owl3.checkpoint import load_model, parse_dtype
from owl3.errors import Owl3Error
from owl3.processing import Processor
from owl3.training import distributed as D
from owl3.training import stages
from owl3.training.config import TrainConfig, save_recipe
from owl3.training.data import read_data
from owl3.training.encode import Batch, SampleEncoder, collate, split_by_length
from owl3.training.metrics import MetricsLog, format_line, plot_loss
from owl3.training.sampler import RecordDataset, StepSampler
from owl3.training.state import (
    checkpoint_dir,
    commit_model,
    latest_checkpoint,
    load_pickle,
    prune_checkpoints,
    read_adapter,
    rng_state,
    set_rng_state,
    write_adapter,
    write_model,
)
from owl3.training.step import TrainStep

StepCallback = Callable[[dict[str, Any], nn.Module], None]


@dataclass
class TrainResult:
    output: Path
    step: int  # optimizer steps done (including those before a resume)
    losses: list[float] = field(default_factory=list)  # per step of this call
    metrics: Path | None = None
    plot: Path | None = None
    interrupted: bool = False  # stopped early (signal or stop_after) with a checkpoint written


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, then cosine."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------- the trainer
class Trainer:
    def __init__(self, cfg: TrainConfig, env: D.DistEnv, on_step: StepCallback | None = None) -> None:
        self.cfg, self.env, self.on_step = cfg, env, on_step
        self.out = Path(cfg.output)
        self.say = partial(_say, env)
        self.stop_requested = False
        self.reported: set[str] = set()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg, env = self.cfg, self.env
        if env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_recipe(cfg, self.out / "train_config.yaml")
        resume_from = latest_checkpoint(self.out) if cfg.resume else None
        if cfg.resume and resume_from is None:
            self.say(f"--resume: no checkpoint in {self.out / 'checkpoints'}; starting from the beginning")
        self.resume_from = resume_from
        self.load_data()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.build_model()
        self.build_optimizer()
        self.start_step = 0
        if resume_from is not None:
            self.load_state(resume_from)
        torch.manual_seed(cfg.seed + 7919 * (env.rank + 1) + self.start_step)  # dropout differs per rank

    def load_data(self) -> None:
        cfg, env = self.cfg, self.env
        records, problems = read_data(cfg.data, cfg.media_root)
        for p in problems:
            self.report(str(p), load_time=True)
        if problems and cfg.on_bad == "error":
            raise Owl3Error(
                f"{len(problems)} bad sample(s), the first: {problems[0]} (--on-bad skip skips them)"
            )
        self.records = records
        gb = cfg.batch_size * cfg.grad_accum * env.world
        if len(records) < gb:
            raise Owl3Error(
                f"{len(records)} usable sample(s) but a global batch of {gb} "
                "(batch size x grad accum x processes); lower --batch-size/--grad-accum or add data"
            )
        self.global_batch = gb
        self.steps_per_epoch = len(records) // gb
        self.total_steps = cfg.max_steps or (cfg.epochs or 1) * self.steps_per_epoch

    def build_model(self) -> None:
        cfg, env, resume_from = self.cfg, self.env, self.resume_from
        torch.manual_seed(cfg.seed)  # the same init on every rank (LoRA factors are random)
        lora = cfg.stage == "lora"
        weights = resume_from if resume_from is not None and not lora else cfg.model
        model = load_model(weights, dtype="float32", device="cpu")
        self.model_cfg = model.cfg
        self.processor = Processor.from_dir(cfg.model, self.model_cfg.image_size, self.model_cfg.variant)
        self.lora_cfg = stages.add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) if lora else None
        if lora and resume_from is not None:
            stages.load_adapter_state(model, *read_adapter(resume_from / "adapter"))
        self.trainable = stages.apply_stage(model, cfg.stage, cfg.train_vision)
        self.scalings = stages.lora_scalings(model) if lora else {}
        model.language_model.model.gradient_checkpointing = cfg.gradient_checkpointing
        self.model = model.to(env.device).train()
        n_layers = len(model.language_model.model.layers)
        for r in self.records:  # a text target's own layer must be one of this model's, known before step 1
            bad = [a.layer for a in r.attend if a.layer is not None and a.layer >= n_layers]
            if bad:
                has = f"decoder layers 0..{n_layers - 1}"
                raise Owl3Error(f"{r.where}: attend layer {bad[0]}, but the model has {has}")
            bad = [h for a in r.attend for h in a.heads if h >= model.cfg.text.n_heads]
            if bad:
                has = f"attention heads 0..{model.cfg.text.n_heads - 1}"
                raise Owl3Error(f"{r.where}: attend head {bad[0]}, but the model has {has}")
        n_params = sum(p.numel() for p in model.parameters())
        self.strategy = D.pick_strategy(cfg.strategy, env, n_params)
        self.step_module = TrainStep(
            self.model,
            always_visual=env.distributed,
            train_vision=cfg.train_vision,
            attention_weight=cfg.attention_loss_weight,
            attention_layer=cfg.attention_layer,
            text_layer=cfg.text_attention_layer,
        )
        self.wrapped = D.wrap(self.step_module, env, self.strategy, cfg.bf16)
        if cfg.length_split > 1 and self.strategy == "fsdp":
            self.say(f"length_split {cfg.length_split} ignored under FSDP (every forward is collective)")
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.say(
            f"stage {cfg.stage}: training {n_train:,} of {n_params:,} parameters "
            f"({len(self.trainable)} tensors); {env.world} process(es), strategy {self.strategy}, "
            f"device {env.device}{', bf16' if cfg.bf16 else ''}"
        )

    def build_optimizer(self) -> None:
        """AdamW and the lr schedule, after wrapping (FSDP2 replaces the parameters by sharded ones)."""
        cfg = self.cfg
        named = [(n, p) for n, p in self.wrapped.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        # one group per (lr factor, decayed): the vision tower + projector may get their own lr
        # (vision_lr_scale), and any parameter more through lr_scales; biases and norms are not decayed
        groups: dict[tuple[float, bool], list] = {}
        for n, p in named:
            factor = cfg.vision_lr_scale if "vision" in n else 1.0
            for pattern, x in cfg.lr_scales.items():
                if re.search(pattern, n):
                    factor *= x
            groups.setdefault((factor, p.ndim >= 2), []).append(p)
        if cfg.lr_scales and self.env.is_main:
            unmatched = [pat for pat in cfg.lr_scales if not any(re.search(pat, n) for n, _ in named)]
            for pat in unmatched:
                self.say(f"warning: lr_scales pattern {pat!r} matches no trained parameter")
        groups = [
            {"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": cfg.lr * factor}
            for (factor, decay), ps in groups.items()
        ]
        self.params = params
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adam_betas)
        warmup = round(cfg.warmup * self.total_steps)
        factor = partial(lr_factor, total=self.total_steps, warmup=warmup, min_ratio=cfg.min_lr / cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def load_state(self, ckpt: Path) -> None:
        st = json.loads((ckpt / "trainer_state.json").read_text())
        if st["global_batch"] != self.global_batch or st["stage"] != self.cfg.stage:
            raise Owl3Error(
                f"checkpoint {ckpt} was written by stage {st['stage']!r} with a global batch of "
                f"{st['global_batch']}; resume with the same stage and batch size x grad accum x processes"
            )
        if st.get("records") not in (None, len(self.records)):
            self.say(
                f"warning: the checkpoint saw {st['records']} usable samples, now there are "
                f"{len(self.records)}; the data order after the resume differs from the original run"
            )
        optim = load_pickle(ckpt / "optimizer.pt")
        if self.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            opts = StateDictOptions(full_state_dict=True)
            set_optimizer_state_dict(self.wrapped, self.optimizer, optim_state_dict=optim, options=opts)
        else:
            self.optimizer.load_state_dict(optim)
        self.scheduler.load_state_dict(load_pickle(ckpt / "scheduler.pt"))
        self.start_step = int(st["step"])
        self.say(f"resumed from {ckpt} at step {self.start_step}")

    # ------------------------------------------------------------------ loop
    def run(self) -> TrainResult:
        cfg, env = self.cfg, self.env
        self.setup()
        encoder = SampleEncoder(
            self.processor, seq_len=cfg.seq_len, frames=cfg.frames, crop_prob=cfg.crop_prob, seed=cfg.seed,
            grid=self.model_cfg.vision.image_size // self.model_cfg.vision.patch_size,
        )  # fmt: skip
        sampler = StepSampler(
            len(self.records), cfg.batch_size, cfg.grad_accum, env.rank, env.world, cfg.seed, cfg.shuffle,
            self.start_step, self.total_steps,
        )  # fmt: skip
        loader = DataLoader(
            RecordDataset(self.records, encoder),
            batch_sampler=sampler,
            collate_fn=partial(collate, pad_id=self.processor.pad_token_id),
            num_workers=cfg.num_workers,
            pin_memory=env.device.type == "cuda",
        )
        metrics = MetricsLog(self.out / "metrics.jsonl", env.is_main, self.start_step)
        result = TrainResult(self.out, self.start_step, metrics=metrics.path)
        bar = tqdm(
            total=self.total_steps,
            initial=self.start_step,
            disable=not (env.is_main and cfg.progress),
            file=sys.stderr,
            desc=f"train {cfg.stage}",
            unit="step",
            dynamic_ncols=True,
        )
        batches = iter(loader)  # draws a seed from the torch RNG: restore the saved RNG after it
        rng_file = self.resume_from / f"rng-rank{env.rank}.pt" if self.resume_from is not None else None
        if rng_file is not None and rng_file.is_file():
            set_rng_state(load_pickle(rng_file))
        with _signals(self):
            for step in range(self.start_step, self.total_steps):
                t0 = time.perf_counter()
                micro = [next(batches) for _ in range(cfg.grad_accum)]
                record = self.train_step(micro, step)
                record["step_s"] = round(time.perf_counter() - t0, 4)
                record["tokens_per_s"] = record["tokens"] / max(record["step_s"], 1e-9)
                result.losses.append(record["loss"])
                result.step = step + 1
                metrics.log(record)
                if self.on_step is not None:
                    self.on_step(record, self.model)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                if env.is_main and (result.step % cfg.log_every == 0 or result.step == self.total_steps):
                    bar.write(format_line(record, self.total_steps), file=sys.stderr)
                stop = D.all_sum([float(self.stop_requested)], env)[0] > 0
                stop = stop or (cfg.stop_after is not None and result.step >= cfg.stop_after)
                if stop and result.step < self.total_steps:
                    self.save_checkpoint(result.step)
                    result.interrupted = True
                    self.say(f"stopped after step {result.step}; continue with --resume")
                    break
                if cfg.save_every and result.step % cfg.save_every == 0 and result.step < self.total_steps:
                    self.save_checkpoint(result.step)
        bar.close()
        if not result.interrupted:
            if cfg.save_every:
                self.save_checkpoint(result.step)
            self.save_final()
        if env.is_main and cfg.plot:
            result.plot = plot_loss(metrics.path, self.out / "loss.png", f"owl3 train --stage {cfg.stage}")
        D.barrier(env)
        return result

    def train_step(self, micro: list[Batch], step: int) -> dict[str, Any]:
        cfg, env = self.cfg, self.env
        for b in micro:
            for s in b.skipped:
                self.report(str(s))
                if cfg.on_bad == "error":
                    raise Owl3Error(f"bad sample {s} (--on-bad skip skips such samples)")
        local = [
            sum(b.n_targets for b in micro),
            sum(b.n_tokens for b in micro),
            sum(len(b.skipped) for b in micro),
        ]
        targets, tokens, skipped = D.all_sum(local, env)
        scale = env.world / max(targets, 1.0)  # DDP/FSDP average gradients over ranks; undo that
        autocast = (
            torch.autocast(env.device.type, dtype=torch.bfloat16)
            if cfg.bf16 and self.strategy != "fsdp"
            else nullcontext()
        )
        if cfg.length_split > 1 and self.strategy != "fsdp":  # FSDP: every rank must run as many forwards
            micro = [piece for b in micro for piece in split_by_length(b, cfg.length_split)]
        loss_sum, att_sum, att_count = 0.0, 0.0, 0
        for i, b in enumerate(micro):
            dev = env.device
            with D.accumulating(self.wrapped, self.strategy, sync=i == len(micro) - 1), autocast:
                loss = self.wrapped(
                    b.input_ids.to(dev),
                    b.labels.to(dev),
                    None if b.pixel_values is None else b.pixel_values.to(dev),
                    b.n_media,
                    b.media_starts,
                    b.attend,
                    b.attend_text,
                    b.attend_layer,
                )
                (loss * scale).backward()
            loss_sum += float(loss.detach())
            att_sum += self.step_module.attention_sum
            att_count += self.step_module.attention_count
        norm = torch.nn.utils.clip_grad_norm_(
            self.params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
        )
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        lr = cfg.lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)  # the base lr of this step
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, att_sum, att_count = D.all_sum([loss_sum, att_sum, float(att_count)], env)
        if att_count:  # "loss" stays the answer loss; the attention loss is logged per target
            loss_sum -= cfg.attention_loss_weight * att_sum
        total_loss = loss_sum / max(targets, 1.0)
        record = {
            "step": step + 1,
            "epoch": step // self.steps_per_epoch,
            "loss": total_loss,
            "lr": lr,
            "grad_norm": float(norm),
            "tokens": int(tokens),
            "target_tokens": int(targets),
            "skipped": int(skipped),
        }
        if att_count:
            record["attention_loss"] = att_sum / att_count
        return record

    def report(self, text: str, load_time: bool = False) -> None:
        """Bad data: one line on stderr and in OUT/bad_samples.txt, once per sample per process."""
        if text in self.reported or (load_time and not self.env.is_main):
            return
        self.reported.add(text)
        tag = f"[rank {self.env.rank}] " if self.env.distributed else ""
        action = "refused" if self.cfg.on_bad == "error" else "skipped"
        tqdm.write(f"owl3 train: {tag}bad sample {action}: {text}", file=sys.stderr)
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / "bad_samples.txt").open("a") as f:
            f.write(text + "\n")

    # ------------------------------------------------------------------ saving
    def full_state(self) -> dict[str, torch.Tensor]:
        """The whole model's state (rank 0; {} elsewhere under FSDP). Collective under FSDP."""
        if self.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state = get_model_state_dict(self.wrapped, options=opts)
            return {k.removeprefix("model."): v for k, v in state.items()}
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def model_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Owl3Model names, LoRA merged in."""
        return stages.merge_lora_state(state, self.scalings) if self.lora_cfg is not None else state

    def save_checkpoint(self, step: int) -> Path:
        env = self.env
        state = self.full_state()
        if self.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            optim = get_optimizer_state_dict(self.wrapped, self.optimizer, options=opts)
        else:
            optim = self.optimizer.state_dict()
        final = checkpoint_dir(self.out, step)
        tmp = final.with_name(final.name + ".tmp")
        if env.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            write_model(tmp, self.model_cfg, self.model_state(state), self.cfg.model)
            if self.lora_cfg is not None:
                write_adapter(
                    tmp / "adapter",
                    self.lora_cfg,
                    stages.adapter_state(state),
                    stages.new_module_state(state),
                )
            torch.save(optim, tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            info = {
                "step": step,
                "stage": self.cfg.stage,
                "global_batch": self.global_batch,
                "world": env.world,
                "total_steps": self.total_steps,
                "records": len(self.records),
                "config": self.cfg.to_dict(),
            }
            (tmp / "trainer_state.json").write_text(json.dumps(info, indent=2))
        D.barrier(env)
        torch.save(rng_state(), tmp / f"rng-rank{env.rank}.pt")
        D.barrier(env)
        if env.is_main:
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            prune_checkpoints(self.out, self.cfg.save_total_limit)
        D.barrier(env)
        return final

    def save_final(self) -> None:
        cfg, env = self.cfg, self.env
        state = self.full_state()
        if env.is_main:
            dtype = parse_dtype(cfg.save_dtype or ("bfloat16" if cfg.bf16 else "float32"))
            if self.lora_cfg is not None:
                adapter_dir = self.out / "adapter"
                if adapter_dir.exists():
                    shutil.rmtree(adapter_dir)
                write_adapter(
                    adapter_dir, self.lora_cfg, stages.adapter_state(state), stages.new_module_state(state)
                )
            if self.lora_cfg is None or cfg.lora_merge:
                tmp = self.out / ".final.tmp"
                if tmp.exists():
                    shutil.rmtree(tmp)
                write_model(tmp, self.model_cfg, self.model_state(state), cfg.model, dtype)
                commit_model(tmp, self.out)
            self.say(f"saved the trained model to {self.out}")
        D.barrier(env)


def _say(env: D.DistEnv, text: str) -> None:
    if env.is_main:
        tqdm.write(f"owl3 train: {text}", file=sys.stderr)


class _signals:
    """SIGINT/SIGTERM ask the loop to stop after the current step (main thread only)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.old: dict[int, Any] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.old[sig] = signal.signal(sig, self.handle)

    def handle(self, signum: int, frame: Any) -> None:
        if self.trainer.stop_requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.trainer.stop_requested = True
        _say(self.trainer.env, "stop requested: finishing this step and saving a checkpoint")

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old)


def train(cfg: TrainConfig | None = None, on_step: StepCallback | None = None, **options: Any) -> TrainResult:
    """Train per `cfg` (or keyword options: `train(model=..., data=[...], output=..., stage="sft")`).

    Under torchrun each process calls this; one process needs no setup. `on_step(record, model)` is called
    on every process after each optimizer step with the metrics record and the model being trained (in
    train mode; under FSDP its parameters are sharded). Returns what this process did.
    """
    if cfg is None:
        cfg = TrainConfig.from_dict(options)
    elif options:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **options})
    cfg = cfg.resolved()
    env = D.setup(cfg.device)
    threads = torch.get_num_threads()
    try:
        return Trainer(cfg, env, on_step).run()
    finally:
        torch.set_num_threads(threads)  # `threads` is for this run only
        D.teardown(env)
