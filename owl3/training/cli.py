"""Argument wiring of `owl3 train` (also `python -m owl3.train`, what torchrun runs) and `owl3 build`.

Options left off the command line are absent (not defaulted) so that a `--config` recipe's values hold
and only the flags given override them; defaults live in `TrainConfig` alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from owl3.errors import Owl3Error
from owl3.training.config import GATE_BIAS

S = argparse.SUPPRESS


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", default=S, help="YAML (or JSON) recipe; flags override it")
    g = p.add_argument_group("what to train")
    g.add_argument("--model", metavar="DIR", default=S, help="checkpoint folder (official mPLUG-Owl3 layout)")
    g.add_argument(
        "--data",
        metavar="FILE",
        action="append",
        default=S,
        help="LLaVA JSON or ms-swift JSONL; repeat for several files",
    )
    g.add_argument("--output", metavar="DIR", default=S, help="where the model, checkpoints and metrics go")
    g.add_argument(
        "--stage",
        choices=("pretrain", "multi-image", "sft", "lora"),
        default=S,
        help="which parameters train (default sft; see docs/training.md)",
    )
    g.add_argument("--media-root", metavar="DIR", default=S, help="relative media paths start here")
    g = p.add_argument_group("schedule")
    length = g.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=int, metavar="N", default=S, help="optimizer steps")
    length.add_argument("--epochs", type=int, metavar="E", default=S, help="passes over the data (default 1)")
    g.add_argument("--batch-size", type=int, metavar="B", default=S, help="micro-batch per process (1)")
    g.add_argument("--grad-accum", type=int, metavar="G", default=S, help="micro-batches per step (1)")
    g.add_argument(
        "--length-split", type=int, metavar="K", default=S,
        help="compute each micro-batch as K pieces of rows of similar length: less padding, same step (1)",
    )  # fmt: skip
    g.add_argument("--lr", type=float, metavar="X", default=S, help="peak learning rate (stage default)")
    g.add_argument("--min-lr", type=float, metavar="X", default=S, help="final learning rate (stage default)")
    g.add_argument("--warmup", type=float, metavar="R", default=S, help="warmup fraction of the steps (0.03)")
    g.add_argument("--weight-decay", type=float, default=S, help="AdamW weight decay (0)")
    g.add_argument("--max-grad-norm", type=float, default=S, help="gradient clipping, 0 = off (1.0)")
    g.add_argument("--seed", type=int, default=S, help="data order, crops and init (0)")
    g.add_argument(
        "--lr-scale", dest="lr_scales", type=lr_scale, action="append", metavar="REGEX=X", default=S,
        help="lr multiplier of the parameters whose name matches REGEX (repeatable)",
    )  # fmt: skip
    g.add_argument(
        "--attention-loss-weight", type=float, metavar="W", default=S,
        help='weight of the attention loss on samples with "attend" targets (0 = off)',
    )  # fmt: skip
    g.add_argument(
        "--text-attention-layer", type=int, metavar="L", default=S,
        help='decoder layer (0-based) whose self-attention "next_tokens" targets supervise '
        "(default: the one before the last hyper layer)",
    )  # fmt: skip
    g = p.add_argument_group("data")
    g.add_argument(
        "--seq-len", type=int, metavar="L", default=S, help="longest sample in tokens (stage default)"
    )
    g.add_argument("--frames", type=int, metavar="N", default=S, help="frames per video (8)")
    g.add_argument(
        "--crop-prob", type=float, metavar="P", default=S, help="chance to crop a lone image (0.5)"
    )
    g.add_argument(
        "--on-bad", choices=("skip", "error"), default=S, help="bad sample: skip it or stop (skip)"
    )
    g.add_argument("--num-workers", type=int, default=S, help="data loading processes (0)")
    g = p.add_argument_group("compute")
    g.add_argument(
        "--gradient-checkpointing", action="store_true", default=S, help="recompute layers in backward"
    )
    g.add_argument("--bf16", action="store_true", default=S, help="bf16 mixed precision")
    g.add_argument(
        "--train-vision", action="store_true", default=S, help="train the vision tower too (from scratch)"
    )
    g.add_argument("--device", default=S, help="auto, cpu or cuda (auto)")
    g.add_argument(
        "--strategy", choices=("auto", "ddp", "fsdp"), default=S, help="multi-process engine (auto)"
    )
    g.add_argument(
        "--nproc", type=int, metavar="K", default=None, help="run K processes on this machine (torchrun)"
    )
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora-r", type=int, default=S, help="adapter rank (16)")
    g.add_argument("--lora-alpha", type=int, default=S, help="adapter scale numerator (32)")
    g.add_argument("--lora-dropout", type=float, default=S, help="(0.05)")
    g.add_argument(
        "--no-lora-merge",
        dest="lora_merge",
        action="store_false",
        default=S,
        help="keep the adapter only; do not write the merged model",
    )
    g = p.add_argument_group("checkpoints and logs")
    g.add_argument("--resume", action="store_true", default=S, help="continue from the newest checkpoint")
    g.add_argument("--save-every", type=int, metavar="N", default=S, help="checkpoint every N steps")
    g.add_argument("--save-total-limit", type=int, metavar="K", default=S, help="checkpoints kept (2)")
    g.add_argument(
        "--save-dtype",
        choices=("float32", "bfloat16", "float16"),
        default=S,
        help="dtype of the final model (bfloat16 with --bf16, else float32)",
    )
    g.add_argument("--log-every", type=int, metavar="N", default=S, help="console line every N steps (10)")
    g.add_argument("--stop-after", type=int, metavar="N", default=S, help="checkpoint and stop after step N")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=S, help="no progress bar")


def lr_scale(text: str) -> tuple[str, float]:
    pattern, eq, factor = text.rpartition("=")
    try:
        if not eq or not pattern:
            raise ValueError
        return pattern, float(factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected REGEX=FACTOR (e.g. o_proj=10), got {text!r}") from None


def options(args: argparse.Namespace) -> dict:
    from owl3.training.config import TrainConfig, load_recipe

    known = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in known}
    if "lr_scales" in given:
        given["lr_scales"] = dict(given["lr_scales"])
    recipe = load_recipe(args.config) if getattr(args, "config", None) else {}
    return {**{k.replace("-", "_"): v for k, v in recipe.items()}, **given}


def cmd_train(args: argparse.Namespace) -> int:
    from owl3.training import TrainConfig, train
    from owl3.training.distributed import launch

    opts = options(args)
    cfg = TrainConfig.from_dict(opts).resolved()  # refuse bad options before starting processes
    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        out = Path(cfg.output)
        out.mkdir(parents=True, exist_ok=True)
        recipe = out / ".launch_recipe.json"
        recipe.write_text(json.dumps(cfg.to_dict()))
        return launch(args.nproc, ["--config", str(recipe)])
    result = train(cfg)
    return 130 if result.interrupted and not cfg.stop_after else 0


def add_train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a model (stages pretrain, multi-image, sft, lora)",
        description="Train mPLUG-Owl3 on LLaVA JSON / ms-swift JSONL data. Options may come from a YAML "
        "recipe (--config); flags override it. Multi-GPU: --nproc K, or torchrun ... -m owl3.train.",
    )
    add_train_args(p)
    p.set_defaults(func=cmd_train)
    return p


def cmd_build(args: argparse.Namespace) -> int:
    from owl3.training.build import build_model

    out = build_model(
        args.llm,
        args.vision,
        args.output,
        hyper_layers=args.hyper_layers,
        gate_bias=args.gate_bias,
        dtype=args.dtype,
        seed=args.seed,
        variant=args.variant,
        vision_batch_size=args.vision_batch_size,
    )
    print(f"built {out}", file=sys.stderr)
    return 0


def add_build_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "build",
        help="make a new Hyper-Attention model from a Qwen2/Llama LLM and a SigLIP tower",
        description="Combine an LLM (Qwen2 or Llama family) and a SigLIP vision tower, both in the Hugging "
        "Face layout, into a new mPLUG-Owl3 checkpoint that owl3 can load and train.",
    )
    p.add_argument("--llm", required=True, metavar="DIR", help="LLM checkpoint folder (HF layout)")
    p.add_argument("--vision", required=True, metavar="DIR", help="SigLIP checkpoint folder (HF layout)")
    p.add_argument("--hyper-layers", default="1,9,17,25", help="1-based hyper layers (1,9,17,25)")
    p.add_argument("--output", required=True, metavar="DIR", help="new checkpoint folder")
    p.add_argument("--gate-bias", type=float, default=GATE_BIAS, help=f"initial gate bias ({GATE_BIAS})")
    p.add_argument("--dtype", default=None, help="weights dtype (default: the LLM's)")
    p.add_argument("--seed", type=int, default=0, help="projector init seed (0)")
    p.add_argument(
        "--variant",
        choices=("240728", "241101"),
        default="240728",
        help="checkpoint family: 240728 (Linear projector, gated cross-attention; default) or 241101 "
        "(Linear-GELU-Linear projector, fused hyper attention, its cut/video template tokens)",
    )
    p.add_argument(
        "--vision-batch-size",
        type=int,
        default=None,
        metavar="N",
        help="241101 only: images per vision-tower forward, written to config.json (default: no limit)",
    )
    p.set_defaults(func=cmd_build)
    return p


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`owl3 train` and `owl3 build`."""
    add_train_parser(sub)
    add_build_parser(sub)


def train_main(argv: Sequence[str] | None = None) -> int:
    """`python -m owl3.train ...`: the train command alone (this is what torchrun starts)."""
    parser = argparse.ArgumentParser(prog="owl3.train", description="owl3 train (see owl3 train --help)")
    add_train_args(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_train(args)
    except Owl3Error as e:
        print(f"owl3: error: {e}", file=sys.stderr)
        return 2
