"""The one table between checkpoint tensor names and owl3 module names.

owl3 keeps the official (HF) leaf names, so both families map name for name (241101's projector is an
nn.Sequential whose Linear layers sit at indices 0 and 2, as in its checkpoints: `vision2text_model.0.*`,
`vision2text_model.2.*`); only tensors that the official model never uses are dropped. Add new rules here
(e.g. another checkpoint family), nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable

# the projector's weight names tell the families apart (docs/mplug-owl3.md §2)
PROJECTOR_WEIGHTS: dict[str, tuple[str, ...]] = {
    "240728": ("vision2text_model.weight", "vision2text_model.bias"),
    "241101": ("vision2text_model.0.weight", "vision2text_model.2.weight"),
}

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


def weights_variant(names: Iterable[str]) -> str | None:
    """The checkpoint family its projector's weight names show, or None when they show neither."""
    have = set(names)
    for variant, wanted in PROJECTOR_WEIGHTS.items():
        if wanted[0] in have:
            return variant
    return None
