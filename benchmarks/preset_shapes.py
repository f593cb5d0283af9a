"""Print the proportions of owl3's presets next to the 7B-240728's and the 7B-241101's (docs/performance.md).

    .venv/bin/python benchmarks/preset_shapes.py

Parameters are counted on the meta device (nothing is allocated). "LLM/vision" is the parameter ratio of
the language model (embeddings included) to the vision tower; "layers run" counts the decoder layers and
the vision layers up to the selected hidden state.
"""

from __future__ import annotations

import json

import torch

from owl3.config import preset
from owl3.model import Owl3Model


def shape(name: str) -> dict:
    cfg = preset(name)
    with torch.device("meta"):
        m = Owl3Model(cfg)
    vision = sum(p.numel() for p in m.vision_model.parameters())
    llm = sum(p.numel() for p in m.language_model.parameters())
    emb = m.language_model.model.embed_tokens.weight.numel()
    if not cfg.text.tie_word_embeddings:
        emb += m.language_model.lm_head.weight.numel()
    t, v = cfg.text, cfg.vision
    return {
        "preset": name,
        "llm_params_m": round(llm / 1e6, 1),
        "vision_params_m": round(vision / 1e6, 2),
        "llm_over_vision": round(llm / vision, 1),
        "embedding_share": round(emb / llm, 3),
        "layers_run": f"{t.n_layers}:{v.n_layers_used}",
        "hyper_layers": list(t.hyper_layers),
        "heads_per_kv_head": t.n_heads // t.n_kv_heads,
        "tokens_per_image": v.n_tokens,
        "image_size": v.image_size,
    }


def main() -> None:
    rows = [shape(n) for n in ("7b", "7b-241101", "small", "small-241101", "tiny")]
    keys = list(rows[0])
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(str(r[k]) for k in keys))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
