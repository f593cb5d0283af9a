"""Merge a saved LoRA adapter (OUT/adapter from a `--stage lora` run) into its base model.

`owl3 train --stage lora` already writes the merged model to OUT unless `lora_merge` is off; this is for
adapters kept on their own. The adapter folder holds PEFT's adapter_config.json and
adapter_model.safetensors, plus new_modules.safetensors (projector, v_kv_proj, gate, trained fully).
"""

from __future__ import annotations

import json
from pathlib import Path

from owl3.checkpoint import load_model
from owl3.errors import Owl3Error
from owl3.training import stages
from owl3.training.state import read_adapter, write_model


def merge_adapter(model: str | Path, adapter: str | Path, output: str | Path) -> Path:
    """Base checkpoint folder + adapter folder -> merged checkpoint folder in the official layout."""
    adapter_dir = Path(adapter)
    cfg_file = adapter_dir / "adapter_config.json"
    if not cfg_file.is_file():
        raise Owl3Error(f"{adapter_dir} has no adapter_config.json; pass the adapter folder of a LoRA run")
    a = json.loads(cfg_file.read_text())
    base = load_model(model, dtype="float32", device="cpu")
    stages.add_lora(base, a["r"], a["lora_alpha"], 0.0)
    stages.load_adapter_state(base, *read_adapter(adapter_dir))
    state = {n: t.detach() for n, t in base.state_dict().items()}
    merged = stages.merge_lora_state(state, stages.lora_scalings(base))
    out = Path(output)
    write_model(out, base.cfg, merged, model)
    return out
