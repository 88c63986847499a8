"""Plots of training runs (matplotlib, headless): recall vs epoch, sorted p, p and ω over
training. Inputs are the per-epoch rows of ``metrics.jsonl`` so any run can be re-plotted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from picoalign.fileio import atomic_write


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training(histories: dict[str, list[dict[str, Any]]], out: str | Path) -> Path:
    """Five panels: validation rSum and the training loss per method (log scale: the
    triplet loss's warm-up epoch sums over all negatives, about a batch's worth larger);
    sorted final p; p quantiles over epochs; the prototype weights ω over epochs (a heat
    map: uniform rows mean no feedback signal)."""
    out = Path(out)
    fig, all_axes = plt.subplots(1, 5, figsize=(22, 4))
    loss_ax, axes = all_axes[1], [all_axes[0], *all_axes[2:]]
    for name, hist in histories.items():
        rows = [r for r in hist if r.get("loss") is not None]
        if rows:
            loss_ax.plot([r["epoch"] for r in rows], [r["loss"] for r in rows], marker="o",
                         label=name)  # fmt: skip
    loss_ax.set(title="training loss (per pair)", xlabel="epoch", ylabel="loss", yscale="log")
    if loss_ax.get_legend_handles_labels()[0]:
        loss_ax.legend()
    ax = axes[0]
    for name, hist in histories.items():
        key = next((k for k in hist[-1] if k.endswith("_rsum")), None) if hist else None
        if key:
            done = [r for r in hist if r.get(key) is not None]  # eval_every > 1: some epochs
            ax.plot([r["epoch"] for r in done], [r[key] for r in done], marker="o", label=name)
    ax.set(title="validation rSum", xlabel="epoch", ylabel="rSum")
    if ax.get_legend_handles_labels()[0]:  # no evaluated epoch: no legend (and no warning)
        ax.legend()
    pico = next((h for h in histories.values() if h and "p" in h[-1]), None)
    if pico:
        p_final = sorted(pico[-1]["p"], reverse=True)
        axes[1].plot(p_final)
        axes[1].set(title="sorted p (final)", xlabel="column rank", ylabel="p_d", ylim=(0, 1.02))
        for q, style in ((0.1, ":"), (0.5, "-"), (0.9, "--")):
            vals = [sorted(r["p"])[int(q * (len(r["p"]) - 1))] for r in pico]
            axes[2].plot([r["epoch"] for r in pico], vals, style, label=f"{int(q * 100)}% quantile")
        axes[2].set(title="p over training", xlabel="epoch", ylim=(0, 1.02))
        axes[2].legend()
        width = max(len(r["omega"]) for r in pico)
        axes[3].set(title="prototype weights ω (end of epoch)", xlabel="bank slot", ylabel="epoch")
        if width:  # ω is empty while PICO warms up (e.g. a 1-epoch run)
            grid = [r["omega"] + [float("nan")] * (width - len(r["omega"])) for r in pico]
            im = axes[3].imshow(
                grid,
                aspect="auto",
                cmap="viridis",
                origin="lower",
                extent=(-0.5, width - 0.5, pico[0]["epoch"] - 0.5, pico[-1]["epoch"] + 0.5),
            )
            fig.colorbar(im, ax=axes[3])
    else:
        for a in axes[1:]:
            a.set_visible(False)
    fig.tight_layout()
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    finally:
        plt.close(fig)
    return out
