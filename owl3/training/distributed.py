"""The distributed seam: PyTorch's own engine (torchrun + DDP or FSDP2), nothing else.

`setup()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and joins the
process group: NCCL on GPUs, gloo on CPU. One process without torchrun needs no process group at all.
`wrap()` puts the training module under DDP (small models: each rank holds everything, gradients are
all-reduced) or FSDP2 (`fully_shard` per decoder layer and per vision layer, then the root: parameters,
gradients and optimizer state are sharded; bf16 compute with fp32 reduction when asked). The same code
runs across machines with torchrun's usual `--nnodes/--node-rank/--rdzv-*` flags. `launch()` is what
`owl3 train --nproc K` does: re-run the command under `torch.distributed.run`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from owl3.errors import Owl3Error

FSDP_AUTO_PARAMS = 1_000_000_000  # strategy "auto" shards models from this size up


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this module joined the process group (and leaves it in teardown)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup(device: str = "auto") -> DistEnv:
    """Join torchrun's process group if there is one; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        dev = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise Owl3Error(f"device {device!r} asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = world > 1 and not dist.is_initialized()
    if owns:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=dev if dev.type == "cuda" else None)
    return DistEnv(rank, world, local_rank, dev, owns)


def teardown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def pick_strategy(strategy: str, env: DistEnv, n_params: int) -> str:
    if not env.distributed:
        return "none"
    if strategy in ("auto", "none"):
        return "fsdp" if n_params >= FSDP_AUTO_PARAMS else "ddp"
    return strategy


def wrap(module: nn.Module, env: DistEnv, strategy: str, bf16: bool) -> nn.Module:
    """DDP or FSDP2 around `module` (already on env.device); `none` returns it unchanged."""
    if strategy == "none":
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(env.device.type, (env.world,))
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
        kw = {"mesh": mesh} | ({"mp_policy": mp} if mp else {})
        for name, sub in module.named_modules():
            if name.endswith(("language_model.model.layers", "vision_model.encoder.layers")):
                for layer in sub:
                    fully_shard(layer, **kw)
        fully_shard(module, **kw)
        return module
    raise Owl3Error(f"unknown strategy {strategy!r}; use auto, ddp or fsdp")


@contextmanager
def accumulating(model: nn.Module, strategy: str, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter on all but the last micro-batch of a step."""
    if strategy == "ddp" and not sync:
        with model.no_sync():
            yield
    elif strategy == "fsdp":
        model.set_requires_gradient_sync(sync)
        yield
    else:
        with nullcontext():
            yield


def all_sum(values: Sequence[float], env: DistEnv) -> list[float]:
    """Sum a few numbers over all ranks (float64 on the wire)."""
    if not env.distributed:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def launch(nproc: int, argv: Sequence[str]) -> int:
    """`torchrun --nproc-per-node nproc -m owl3.train *argv` in a child process; its exit code."""
    if nproc < 1:
        raise Owl3Error(f"--nproc must be >= 1, got {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--standalone"]
    return subprocess.call([*cmd, "-m", "owl3.train", *argv])
