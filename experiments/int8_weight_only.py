"""Does owl3 run under a third-party quantizer as it is? torchao's int8 weight-only quantization of the
language model's Linear layers, applied after loading, on the built-in demo model (docs/next.md).

    pip install --no-deps torchao==0.18.0     # not an owl3 dependency; torchao's own wheel, CPU is enough
    .venv/bin/python experiments/int8_weight_only.py [--limit 100] [--seed 0]

The same `owl3 eval synthetic` questions (1 and 8 images, video) answered greedily by the float32 model and
by its int8 copy, one after the other in one run: accuracy of each, how many answers are the same text, the
language model's Linear weight bytes, and the time of each pass. Prints a table and a last line of JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import owl3
from owl3.demo.synthetic import SyntheticTask


def linear_bytes(module: torch.nn.Module) -> int:
    """Bytes of the Linear layers' weights as stored (an int8 tensor subclass: its int8 data and scales)."""
    total = 0
    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            w = m.weight
            parts = (
                [getattr(w, name) for name in w.__tensor_flatten__()[0]]
                if hasattr(w, "__tensor_flatten__")
                else [w]
            )
            total += sum(p.numel() * p.element_size() for p in parts)
    return total


def answer_all(pipe, items) -> tuple[list[str], float]:
    t0 = time.perf_counter()
    convs = [
        {"messages": it.prompt, "images": imgs, "videos": vids, "cut": False, "max_new_tokens": 16}
        for it, (imgs, vids) in items
    ]
    texts = [done.text for _, done in sorted(pipe.chat_many(convs), key=lambda p: p[0])]
    return texts, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=100, help="questions a row (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    pipe = owl3.load()
    task = SyntheticTask(seed=args.seed, images=[1, 8], limit=args.limit, frames=8, which_images=0)
    items = [(it, it.media()) for it in task.items(pipe.config.image_size)]
    ref, t_ref = answer_all(pipe, items)
    bytes_ref = linear_bytes(pipe.model.language_model)
    quantize_(pipe.model.language_model, Int8WeightOnlyConfig())
    q, t_q = answer_all(pipe, items)
    bytes_q = linear_bytes(pipe.model.language_model)

    rows = {}
    for (it, _), a, b in zip(items, ref, q, strict=True):
        r = rows.setdefault(it.group, {"n": 0, "float32": 0, "int8": 0, "same": 0})
        r["n"] += 1
        r["float32"] += task.score(a, it)
        r["int8"] += task.score(b, it)
        r["same"] += a == b
    print(f"{'row':<10}{'n':>5}{'float32':>10}{'int8':>8}{'same answer':>13}")
    for group, r in rows.items():
        n = r["n"]
        print(
            f"{task.group_label(group):<10}{n:>5}{100 * r['float32'] / n:>9.1f}%{100 * r['int8'] / n:>7.1f}%"
            f"{100 * r['same'] / n:>12.1f}%"
        )
    print(f"LM Linear weights: {bytes_ref / 2**20:.2f} MiB float32 -> {bytes_q / 2**20:.2f} MiB int8")
    print(f"time: float32 {t_ref:.1f} s, int8 {t_q:.1f} s ({t_q / t_ref:.2f}x)")
    print(
        json.dumps(
            {
                "seed": args.seed,
                "limit": args.limit,
                "rows": rows,
                "linear_bytes": [bytes_ref, bytes_q],
                "seconds": [round(t_ref, 2), round(t_q, 2)],
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
