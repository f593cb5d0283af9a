"""Checkpoints of a run: the model in the official layout plus what a resume needs.

    OUT/checkpoints/step-0000100/
        config.json, model.safetensors (or shards + index), tokenizer files   <- loads with owl3.load
        adapter/ (stage lora): adapter_config.json, adapter_model.safetensors (PEFT), new_modules.safetensors
        optimizer.pt, scheduler.pt, trainer_state.json, rng-rank{R}.pt

A checkpoint is written into `step-N.tmp` and renamed into place when complete, so a crash never leaves a
half checkpoint; `latest_checkpoint` only sees complete ones. Checkpoint weights are always float32 (the
master weights), so a resume continues exactly; the final model may be saved in bf16. For LoRA the
official-layout weights are the merged ones, and the resume reads the adapter.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from owl3.checkpoint import save_model
from owl3.config import Owl3Config

CHECKPOINTS = "checkpoints"
STEP_DIR = re.compile(r"^step-(\d+)$")


class StateView:
    """What `save_model` needs of a model (`cfg`, `state_dict()`), for a state dict gathered elsewhere."""

    def __init__(self, cfg: Owl3Config, state: dict[str, Tensor]) -> None:
        self.cfg, self._state = cfg, state

    def state_dict(self) -> dict[str, Tensor]:
        return self._state


def checkpoint_dir(output: str | Path, step: int) -> Path:
    return Path(output) / CHECKPOINTS / f"step-{step:07d}"


def list_checkpoints(output: str | Path) -> list[tuple[int, Path]]:
    root = Path(output) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = STEP_DIR.match(d.name)
        if m and (d / "trainer_state.json").is_file():
            found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(output: str | Path) -> Path | None:
    found = list_checkpoints(output)
    return found[-1][1] if found else None


def prune_checkpoints(output: str | Path, keep: int) -> None:
    for _, d in list_checkpoints(output)[:-keep]:
        shutil.rmtree(d, ignore_errors=True)


def write_model(
    folder: Path,
    cfg: Owl3Config,
    state: dict[str, Tensor],
    base: str | Path,
    dtype: torch.dtype | None = None,
) -> None:
    """Official layout into a new `folder` (atomic), tokenizer and remote-code files copied from `base`."""
    save_model(StateView(cfg, state), folder, copy_from=base, dtype=dtype)
    add_remote_code(folder, Path(base))


def add_remote_code(folder: Path, base: Path) -> None:
    """Copy the official modeling files (*.py) and config `auto_map` of the base checkpoint, if it has them,
    so the trained folder also opens with the official code (`trust_remote_code=True`)."""
    for py in base.glob("*.py"):
        shutil.copy2(py, folder / py.name)
    base_cfg = base / "config.json"
    if base_cfg.is_file():
        auto_map = json.loads(base_cfg.read_text()).get("auto_map")
        if auto_map:
            cfg = json.loads((folder / "config.json").read_text())
            cfg["auto_map"] = auto_map
            (folder / "config.json").write_text(json.dumps(cfg, indent=2))


def write_adapter(folder: Path, lora_cfg: Any, lora: dict[str, Tensor], new: dict[str, Tensor]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lora_cfg.save_pretrained(str(folder))
    save_file({n: t.contiguous() for n, t in lora.items()}, folder / "adapter_model.safetensors")
    save_file({n: t.contiguous() for n, t in new.items()}, folder / "new_modules.safetensors")


def read_adapter(folder: Path) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    return load_file(folder / "adapter_model.safetensors"), load_file(folder / "new_modules.safetensors")


def commit_model(tmp: Path, output: Path) -> None:
    """Move a finished model folder's files into `output`, which may hold other things (checkpoints,
    metrics). config.json goes last: a folder with a config.json always holds a complete model."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "config.json").unlink(missing_ok=True)
    for old in output.glob("model*.safetensors*"):
        old.unlink()
    for f in sorted(tmp.iterdir(), key=lambda p: p.name == "config.json"):
        os.replace(f, output / f.name)
    tmp.rmdir()


# ---------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_pickle(path: Path) -> Any:
    # written by this module; holds Python RNG tuples and optimizer dicts, hence weights_only=False
    return torch.load(path, map_location="cpu", weights_only=False)
