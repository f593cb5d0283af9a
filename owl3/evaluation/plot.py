"""A PNG of accuracy against the number of images, in the style of the paper's distractor figure.

matplotlib is imported here only (the Agg backend: no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_accuracy(summary: dict[str, Any], path: str | Path, title: str) -> Path:
    """Plot summary["results"] ({"images", "accuracy"[, "ci95"]} points) on a log x axis, with their 95%
    intervals as a band; the video and "which image" accuracies, if present, as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted((r["images"], 100 * r["accuracy"]) for r in summary.get("results", []))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    if pts:
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", color="#1f5fbf", label="In Image X, ... (distractors)")
        cis = sorted((r["images"], r["ci95"]) for r in summary["results"] if "ci95" in r)
        if len(cis) == len(pts):
            lo, hi = ([100 * c[1][i] for c in cis] for i in (0, 1))
            ax.fill_between(xs, lo, hi, color="#1f5fbf", alpha=0.15, linewidth=0, label="95% interval")
        for x, y in pts:
            ax.annotate(
                f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8
            )
        if max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
    for key, style, text in (
        ("video", ":", "video ({frames} frames)"),
        ("which", "--", "which image? ({images})"),
    ):
        if key in summary:
            info = summary[key]
            ax.axhline(100 * info["accuracy"], linestyle=style, color="gray", linewidth=1)
            ax.plot(
                [],
                [],
                linestyle=style,
                color="gray",
                label=f"{text.format(**info)}: {100 * info['accuracy']:.1f}",
            )
    ax.set_ylim(0, 105)
    ax.set_xlabel("number of images in the prompt")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
