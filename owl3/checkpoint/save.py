"""Write a model in the official mPLUG-Owl3 layout: config.json + safetensors (sharded with an index).

Files are written to a temporary folder next to the target and renamed into place, so an interrupted
save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from owl3.checkpoint.names import to_checkpoint
from owl3.model import Owl3Model

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


def save_model(
    model: Owl3Model,
    path: str | Path,
    *,
    max_shard_bytes: int = 4 * 2**30,
    copy_from: str | Path | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Save `model` to folder `path`; `copy_from` names a folder whose tokenizer files are copied too."""
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = {}
    for name, t in model.state_dict().items():
        if model.cfg.text.tie_word_embeddings and name == "language_model.lm_head.weight":
            continue
        t = t.detach().to("cpu", dtype or t.dtype).contiguous()
        state[to_checkpoint(name)] = t
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], tmp / "model.safetensors", metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, tmp / fname, metadata={"format": "pt"})
            weight_map.update({n: fname for n in shard})
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    cfg = model.cfg.to_hf()
    if dtype is not None:
        cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    if copy_from is not None:
        for fname in TOKENIZER_FILES:
            src = Path(copy_from) / fname
            if src.is_file():
                shutil.copy2(src, tmp / fname)
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
    return out
