"""Which parameters each training stage trains, LoRA adapters (PEFT), and merging them back.

Stages (paper, docs/mplug-owl3.md §6); the vision tower is frozen in all of them
(`train_vision` unfreezes it for a model trained from scratch, e.g. the demo model):
- pretrain:            projector (vision2text_model) + every hyper layer's v_kv_proj and gate
- multi-image, sft:    projector + the whole language model (hyper modules included)
- lora:                LoRA adapters on the LLM's linear layers (q/k/v/o, gate/up/down of every decoder
                       layer) + projector + v_kv_proj + gate trained fully; embeddings, norms, lm_head and
                       the base weights stay frozen.
The hyper gate is also called `gate_proj` (`self_attn.gate_proj.0`); it is told apart from the MLP's
`mlp.gate_proj` by its parent, everywhere in this file.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from owl3.errors import Owl3Error

# the new modules of mPLUG-Owl3 (not in the base LLM)
NEW_MODULE_PATTERN = re.compile(
    r"^(vision2text_model\.|language_model\.model\.layers\.\d+\.self_attn\.(v_kv_proj|gate_proj)\.)"
)
# the LLM's linear layers that get LoRA adapters (PEFT matches the whole module name)
LORA_TARGETS = (
    r"language_model\.model\.layers\.\d+\."
    r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
)
ADAPTER = "default"


def is_new_module(name: str) -> bool:
    return NEW_MODULE_PATTERN.match(name) is not None


def is_trainable(name: str, stage: str, train_vision: bool = False) -> bool:
    """The stage policy for one parameter name (of an Owl3Model, LoRA-injected or not); `train_vision`
    unfreezes the vision tower (for a model trained from scratch; not with LoRA)."""
    if name.startswith("vision_model."):
        return train_vision and stage != "lora"
    if stage == "pretrain":
        return is_new_module(name)
    if stage in ("multi-image", "sft"):
        return name.startswith(("vision2text_model.", "language_model."))
    if stage == "lora":
        return ".lora_A." in name or ".lora_B." in name or is_new_module(name)
    raise Owl3Error(f"unknown stage {stage!r}")


def apply_stage(model: nn.Module, stage: str, train_vision: bool = False) -> list[str]:
    """Set requires_grad per the stage; returns the trainable parameter names."""
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(is_trainable(name, stage, train_vision))
        if p.requires_grad:
            names.append(name)
    if not names:
        raise Owl3Error(f"stage {stage!r} leaves nothing to train in this model")
    return names


# ---------------------------------------------------------------------- LoRA
def lora_config(r: int, alpha: int, dropout: float) -> Any:
    try:
        from peft import LoraConfig
    except ImportError:
        raise Owl3Error("stage 'lora' needs PEFT: pip install 'owl3[train]'") from None
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS, bias="none")


def add_lora(model: nn.Module, r: int = 16, alpha: int = 32, dropout: float = 0.05) -> Any:
    """Inject LoRA adapters into `model` in place (PEFT); returns the LoraConfig.

    PEFT replaces each target nn.Linear by a `lora.Linear` holding the frozen `base_layer` and the
    `lora_A` / `lora_B` factors; the model keeps its own class and forward.
    """
    from peft import inject_adapter_in_model

    cfg = lora_config(r, alpha, dropout)
    inject_adapter_in_model(cfg, model, adapter_name=ADAPTER)
    return cfg


def lora_scalings(model: nn.Module) -> dict[str, float]:
    """Module name -> LoRA scaling (alpha / r) of each adapted layer."""
    out = {}
    for name, module in model.named_modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and ADAPTER in scaling and hasattr(module, "base_layer"):
            out[name] = float(scaling[ADAPTER])
    return out


def merge_lora_state(state: dict[str, Tensor], scalings: dict[str, float]) -> dict[str, Tensor]:
    """A LoRA-injected state dict -> the plain Owl3Model state dict with W + scaling * B @ A.

    Works on full (gathered) state dicts, so it serves FSDP as well as one process; merging is done in
    float32 and cast back to the base weight's dtype.
    """
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        if ".lora_A." in name or ".lora_B." in name:
            continue
        if ".base_layer." not in name:
            out[name] = t
            continue
        module, _, leaf = name.partition(".base_layer.")
        if leaf == "weight":
            a = state[f"{module}.lora_A.{ADAPTER}.weight"].float()  # (r, in)
            b = state[f"{module}.lora_B.{ADAPTER}.weight"].float()  # (out, r)
            t = (t.float() + scalings[module] * (b @ a)).to(t.dtype)
        out[f"{module}.{leaf}"] = t
    return out


def adapter_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The LoRA factors in PEFT's file naming (`base_model.model.<module>.lora_A.weight`)."""
    out = {}
    for name, t in state.items():
        if f".lora_A.{ADAPTER}." in name or f".lora_B.{ADAPTER}." in name:
            out["base_model.model." + name.replace(f".{ADAPTER}.", ".")] = t
    return out


def new_module_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The fully trained new modules (projector, v_kv_proj, gate) of a LoRA run."""
    return {n: t for n, t in state.items() if is_new_module(n)}


def load_adapter_state(model: nn.Module, lora: dict[str, Tensor], new: dict[str, Tensor]) -> None:
    """Put saved adapter factors and new-module weights back into a LoRA-injected model (strict)."""
    state = {}
    for name, t in lora.items():
        module_name = name.removeprefix("base_model.model.")
        for part in (".lora_A.", ".lora_B."):
            module_name = module_name.replace(part, f"{part}{ADAPTER}.")
        state[module_name] = t
    state.update(new)
    own = dict(model.named_parameters())
    missing = [n for n in own if is_trainable(n, "lora") and n not in state]
    unknown = [n for n in state if n not in own]
    if missing or unknown:
        raise Owl3Error(
            f"the saved adapter does not fit this model: missing {missing[:4]}, unexpected {unknown[:4]}; "
            "resume with the same --model and LoRA settings"
        )
    with torch.no_grad():
        for n, t in state.items():
            own[n].copy_(t)
