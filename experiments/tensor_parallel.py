"""Tensor parallelism on the code as it is: the built-in demo model split by heads over two processes
(torch.distributed.tensor.parallel, gloo on the CPU), answering the questions one process answers
(docs/next.md).

    .venv/bin/torchrun --nproc-per-node 2 experiments/tensor_parallel.py [--limit 50] [--seed 0]

Each process first answers the questions with the whole model (the reference), then the language model's
attention and MLP projections are sharded by heads (q/k/v, the hyper layers' v_kv_proj, gate/up:
column-wise; o_proj, down_proj: row-wise) with each attention module's head counts, and the KV pool's,
set to the process's share, and the questions are answered again. Rank 0 prints how many answers are the
same and the largest prefill-logit difference on one 8-image question, then a last line of JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import owl3
from owl3.demo.synthetic import SyntheticTask


def shard_by_heads(pipe, mesh) -> None:
    model, tp = pipe.model, mesh.size()
    text = model.cfg.text
    if text.n_kv_heads % tp:
        raise SystemExit(f"{text.n_kv_heads} key/value heads do not split over {tp} processes")
    for layer in model.language_model.model.layers:
        attn = layer.self_attn
        plan = {"q_proj": ColwiseParallel(), "k_proj": ColwiseParallel(), "v_proj": ColwiseParallel(),
                "o_proj": RowwiseParallel()}  # fmt: skip
        if attn.is_hyper:
            plan["v_kv_proj"] = ColwiseParallel()  # head by head, each head's K then V: whole heads per shard
        parallelize_module(attn, mesh, plan)
        attn.n_heads //= tp
        attn.n_kv_heads //= tp
        mlp = {"gate_proj": ColwiseParallel(), "up_proj": ColwiseParallel(), "down_proj": RowwiseParallel()}
        parallelize_module(layer.mlp, mesh, mlp)
    local = dataclasses.replace(text, n_heads=text.n_heads // tp, n_kv_heads=text.n_kv_heads // tp)
    model.cfg = dataclasses.replace(model.cfg, text=local)  # the KV pool's shape
    pipe.engine = type(pipe.engine)(model, pipe.processor.stop_token_ids, pipe.processor.pad_token_id)


def answers(pipe, items) -> list[str]:
    convs = [{"messages": it.prompt, "images": i, "videos": v, "cut": False, "max_new_tokens": 16}
             for it, (i, v) in items]  # fmt: skip
    return [done.text for _, done in sorted(pipe.chat_many(convs), key=lambda p: p[0])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=50, help="questions a row (default 50)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))

    pipe = owl3.load()
    task = SyntheticTask(seed=args.seed, images=[1, 8], limit=args.limit, frames=8, which_images=0)
    items = [(it, it.media()) for it in task.items(pipe.config.image_size)]
    probe = next(x for x in items if x[0].group == "8")
    ref, ref_logits = answers(pipe, items), pipe.logits(probe[0].prompt, images=probe[1][0], cut=False)
    shard_by_heads(pipe, mesh)
    got, got_logits = answers(pipe, items), pipe.logits(probe[0].prompt, images=probe[1][0], cut=False)

    if rank == 0:
        same = sum(a == b for a, b in zip(ref, got, strict=True))
        right = [sum(task.score(t, it) for t, (it, _) in zip(ts, items, strict=True)) for ts in (ref, got)]
        diff = float((ref_logits.float() - got_logits.float()).abs().max())
        print(f"processes: {dist.get_world_size()}, questions: {len(items)}")
        print(f"same answer as one process: {same} / {len(items)}; right: {right[0]} alone, {right[1]} split")
        print(f"largest prefill-logit difference (one 8-image question): {diff:.2e}")
        print(json.dumps({"processes": dist.get_world_size(), "questions": len(items), "same": same,
                          "right": right, "max_logit_diff": diff, "torch": torch.__version__}))  # fmt: skip
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
