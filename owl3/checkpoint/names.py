"""The one table between checkpoint tensor names and owl3 module names.

owl3 keeps the official (HF) leaf names, so the 240728 family maps name for name; only tensors that the
official model never uses are dropped. Add new rules here (e.g. another checkpoint family), nowhere else.
"""

from __future__ import annotations

# present in released checkpoints, unused by mPLUG-Owl3 (features come from hidden_states[-2])
IGNORED_PREFIXES: tuple[str, ...] = ("vision_model.head.", "vision_model.post_layernorm.")

# (checkpoint prefix, owl3 prefix); identity today
RENAMES: tuple[tuple[str, str], ...] = ()


def to_owl3(name: str) -> str | None:
    """Checkpoint name -> module name, or None for a tensor that is deliberately ignored."""
    if name.startswith(IGNORED_PREFIXES):
        return None
    for src, dst in RENAMES:
        if name.startswith(src):
            return dst + name[len(src) :]
    return name


def to_checkpoint(name: str) -> str:
    """Module name -> checkpoint name (inverse of `to_owl3`)."""
    for src, dst in RENAMES:
        if name.startswith(dst):
            return src + name[len(dst) :]
    return name
