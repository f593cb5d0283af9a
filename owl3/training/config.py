"""The training recipe: one frozen dataclass, from keyword arguments, CLI flags or a YAML/JSON file.

`TrainConfig` holds every knob of a run. Fields left as None take the stage's defaults from the paper
(docs/mplug-owl3.md §6: learning rates, sequence length) when `resolved()` is called. A recipe file uses
the same field names (dashes or underscores). Nothing here touches torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from owl3.errors import Owl3Error

# the gate bias of a newly built model's hyper layers (`owl3 build`): sigmoid(-6) = 0.0025, so a new model
# starts as its LLM alone and learns to open the gates (owl3/training/build.py)
GATE_BIAS = -6.0

STAGES = ("pretrain", "multi-image", "sft", "lora")
STRATEGIES = ("auto", "none", "ddp", "fsdp")
ON_BAD = ("skip", "error")

# paper §6: stage 1 LR 1e-3 -> 1e-5, seq 768; stages 2-3 LR 2e-5 -> 1e-7, seq 4096, gradient checkpointing.
# LoRA is not in the paper; 2e-4 is the usual LoRA learning rate.
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": {"lr": 1e-3, "min_lr": 1e-5, "seq_len": 768},
    "multi-image": {"lr": 2e-5, "min_lr": 1e-7, "seq_len": 4096},
    "sft": {"lr": 2e-5, "min_lr": 1e-7, "seq_len": 4096},
    "lora": {"lr": 2e-4, "min_lr": 2e-6, "seq_len": 4096},
}


@dataclass(frozen=True)
class TrainConfig:
    """One training run. `model` is a checkpoint folder in the official layout; `output` a folder."""

    model: str
    data: tuple[str, ...]
    output: str
    stage: str = "sft"
    # length of the run: max_steps optimizer steps, or epochs over the data (1 epoch if neither is given)
    max_steps: int | None = None
    epochs: int | None = None
    # batch: per-device micro-batch x grad_accum x processes = global batch
    batch_size: int = 1
    grad_accum: int = 1
    # split each micro-batch into this many pieces of rows of similar length, each padded to its own
    # longest row; their gradients add up to the micro-batch's, so the step is the same with less padding
    # to compute (`owl3 demo-train`: 2; 1.25x a step there, docs/training.md). Ignored under FSDP, whose
    # every forward is collective (every rank must run as many).
    length_split: int = 1
    # optimizer: AdamW; linear warmup over `warmup` (a fraction of the steps), then cosine lr -> min_lr
    lr: float | None = None
    min_lr: float | None = None
    warmup: float = 0.03
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    # lr multiplier of the vision tower and projector: their output is RMS-normed in the hyper layers, so
    # their scale is free to grow under Adam until the gradients reaching them vanish (from-scratch models)
    vision_lr_scale: float = 1.0
    # more lr multipliers: parameter-name regex -> factor (every match multiplies), e.g.
    # {"self_attn.o_proj": 10} (the demo model: hyper layers' o_proj at 10x carries place, docs/demo.md)
    lr_scales: dict[str, float] = field(default_factory=dict)
    max_grad_norm: float = 1.0
    # attention loss on samples with "attend" targets (training/data.py `Attend`): each target adds this
    # weight x -log(share of the hyper layer's cross-attention on its box); 1 = as much as one answer token
    attention_loss_weight: float = 0.0
    attention_layer: int = -1  # which hyper layer's attention (index among the hyper layers)
    # text targets ("next_tokens"): which decoder layer's self-attention (0-based; None: the layer right
    # before the hyper layer `attention_layer`)
    text_attention_layer: int | None = None
    # data
    seq_len: int | None = None  # longer samples are bad data (skipped or refused), never truncated
    frames: int = 8  # frames sampled per video (paper: 8 in training)
    crop_prob: float = 0.5  # probability that a lone image is cropped into grid + global view
    media_root: str | None = None  # relative media paths resolve here (default: the data file's folder)
    on_bad: str = "skip"  # "skip" (report and skip) or "error" (stop) on a bad sample
    shuffle: bool = True
    num_workers: int = 0  # DataLoader worker processes that load and encode samples
    # compute
    gradient_checkpointing: bool = False
    train_vision: bool = (
        False  # train the vision tower too (a model trained from scratch; the paper freezes it)
    )
    bf16: bool = False  # bf16 mixed precision (fp32 master weights and optimizer state)
    device: str = "auto"  # auto = cuda:LOCAL_RANK if available, else cpu
    strategy: str = "auto"  # auto: none for 1 process, DDP below 1B parameters, FSDP2 above
    seed: int = 0
    threads: int | None = None  # torch CPU threads (torch.set_num_threads); 1 is fastest for tiny models
    # LoRA (stage "lora")
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_merge: bool = True  # write the merged model to `output` (the adapter is saved as well)
    # checkpoints, logging
    resume: bool = False  # continue from the newest checkpoint in output/checkpoints
    save_every: int | None = None  # steps between checkpoints (None: only at the end)
    save_total_limit: int = 2  # checkpoints kept (oldest deleted first)
    save_dtype: str | None = None  # dtype of the final model (default: bfloat16 with bf16, else float32)
    log_every: int = 10  # console line every N steps (metrics.jsonl gets every step)
    progress: bool = True
    plot: bool = True
    stop_after: int | None = None  # save a checkpoint and stop after this step (time-boxed jobs; tests)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes, copied to the saved recipe

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        clean: dict[str, Any] = {}
        for key, value in d.items():
            name = key.replace("-", "_")
            if name not in known:
                raise Owl3Error(f"unknown training option {key!r}; valid options: {', '.join(sorted(known))}")
            clean[name] = value
        for name in ("model", "data", "output"):
            if clean.get(name) in (None, "", [], ()):
                raise Owl3Error(f"the training recipe needs {name!r} (--{name})")
        data = clean["data"]
        clean["data"] = (str(data),) if isinstance(data, (str, Path)) else tuple(str(p) for p in data)
        clean["model"], clean["output"] = str(clean["model"]), str(clean["output"])
        if "adam_betas" in clean:
            clean["adam_betas"] = tuple(float(b) for b in clean["adam_betas"])
        return cls(**clean)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """A YAML (or JSON) recipe; `overrides` (e.g. CLI flags) win over the file."""
        return cls.from_dict({**load_recipe(path), **overrides})

    def resolved(self) -> TrainConfig:
        """A copy with the stage defaults filled in and every value checked."""
        if self.stage not in STAGES:
            raise Owl3Error(f"unknown stage {self.stage!r}; use one of {', '.join(STAGES)}")
        defaults = STAGE_DEFAULTS[self.stage]
        data = self.data
        data = (str(data),) if isinstance(data, (str, Path)) else tuple(str(p) for p in data)
        if not data:
            raise Owl3Error("no training data: pass --data FILE (LLaVA JSON or ms-swift JSONL)")
        cfg = replace(
            self,
            data=data,
            model=str(self.model),
            output=str(self.output),
            lr=self.lr if self.lr is not None else defaults["lr"],
            min_lr=self.min_lr if self.min_lr is not None else defaults["min_lr"],
            seq_len=self.seq_len if self.seq_len is not None else defaults["seq_len"],
        )
        cfg._check()
        return cfg

    def _check(self) -> None:
        def positive(name: str, value: Any, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise Owl3Error(f"{name} must be a positive integer, got {value!r}")

        if self.max_steps is not None and self.epochs is not None:
            raise Owl3Error("give --max-steps or --epochs, not both")
        positive("max_steps", self.max_steps, True)
        positive("epochs", self.epochs, True)
        for name in ("batch_size", "grad_accum", "length_split", "seq_len", "frames", "lora_r", "log_every"):
            positive(name, getattr(self, name))
        positive("save_every", self.save_every, True)
        positive("save_total_limit", self.save_total_limit)
        positive("stop_after", self.stop_after, True)
        positive("threads", self.threads, True)
        if not (self.lr and self.lr > 0) or self.min_lr is None or self.min_lr < 0:
            raise Owl3Error(f"lr must be > 0 and min_lr >= 0 (got lr={self.lr}, min_lr={self.min_lr})")
        if not 0 <= self.warmup < 1:
            raise Owl3Error(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if not 0 <= self.crop_prob <= 1:
            raise Owl3Error(f"crop_prob is a probability in [0, 1], got {self.crop_prob}")
        if not 0 <= self.lora_dropout < 1:
            raise Owl3Error(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.on_bad not in ON_BAD:
            raise Owl3Error(f"on_bad must be one of {', '.join(ON_BAD)}, got {self.on_bad!r}")
        if self.strategy not in STRATEGIES:
            raise Owl3Error(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.num_workers < 0:
            raise Owl3Error(f"num_workers must be >= 0, got {self.num_workers}")
        if self.attention_loss_weight < 0:
            raise Owl3Error(f"attention_loss_weight must be >= 0, got {self.attention_loss_weight}")
        if self.text_attention_layer is not None and self.text_attention_layer < 0:
            raise Owl3Error(
                f"text_attention_layer must be a decoder layer index >= 0, got {self.text_attention_layer}"
            )
        for pattern, factor in self.lr_scales.items():
            try:
                re.compile(pattern)
            except re.error as e:
                raise Owl3Error(f"lr_scales: {pattern!r} is not a regular expression ({e})") from None
            if not isinstance(factor, (int, float)) or factor < 0:
                raise Owl3Error(f"lr_scales[{pattern!r}] must be a number >= 0, got {factor!r}")
        if self.save_dtype not in (None, "float32", "bfloat16", "float16"):
            raise Owl3Error(f"save_dtype must be float32, bfloat16 or float16, got {self.save_dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"] = list(self.data)
        d["adam_betas"] = list(self.adam_betas)
        return d


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON recipe file into a dict of options; relative paths stay as written."""
    file = Path(path)
    if not file.is_file():
        raise Owl3Error(f"recipe file {str(file)!r} not found")
    text = file.read_text()
    if file.suffix == ".json":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise Owl3Error(f"{file} is not valid JSON ({e})") from None
    else:
        try:
            import yaml
        except ImportError:
            raise Owl3Error("reading a YAML recipe needs PyYAML: pip install 'owl3[train]'") from None
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise Owl3Error(f"{file} is not valid YAML ({e})") from None
    if not isinstance(d, dict):
        raise Owl3Error(f"{file} must hold a mapping of option: value, got {type(d).__name__}")
    return d


def save_recipe(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved recipe next to the outputs (YAML when PyYAML is there, else JSON)."""
    try:
        import yaml

        Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    except ImportError:
        Path(path).with_suffix(".json").write_text(json.dumps(cfg.to_dict(), indent=2))
