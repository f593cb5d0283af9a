"""Training metrics: one JSON line per optimizer step, a console line every few steps, a loss-curve PNG.

metrics.jsonl fields: step, epoch, loss (mean over the step's answer tokens, all ranks), lr, grad_norm,
tokens (input tokens of the global batch), target_tokens, tokens_per_s, step_s, skipped, time.
On resume the lines after the resumed step are dropped, so the file always holds one curve.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, path: str | Path, enabled: bool = True, resume_step: int = 0) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step] if resume_step else []
        with self.path.open("w") as f:
            for r in kept:
                f.write(json.dumps(r) + "\n")

    def log(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def format_line(r: dict[str, Any], total: int) -> str:
    attention = f" | attention {r['attention_loss']:.3f}" if "attention_loss" in r else ""
    return (
        f"step {r['step']}/{total} | loss {r['loss']:.4f}{attention} | lr {r['lr']:.2e} | "
        f"grad {r['grad_norm']:.3f} | {r['tokens_per_s']:.0f} tok/s"
    )


def plot_loss(metrics: str | Path, png: str | Path, title: str = "") -> Path | None:
    """Loss (and learning rate, on a second axis) against the step; None without matplotlib or data."""
    rows = read_metrics(metrics)
    if not rows:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, [r["loss"] for r in rows], color="tab:blue", lw=1.4, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (answer tokens)", color="tab:blue")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [r["lr"] for r in rows], color="tab:orange", lw=1, ls="--", label="lr")
    lr_ax.set_ylabel("learning rate", color="tab:orange")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.set_title(f"{title or 'owl3 train'}: loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return Path(png)
