"""The one line a command prints per training epoch (train and demo alike)."""

from __future__ import annotations

from typing import Any


def epoch_line(row: dict[str, Any], label: str = "") -> str:
    """``[LABEL ]epoch N  loss L  lr R  val_rsum V  p mean P  (Ss)`` from a metrics row."""
    keys = [k for k in row if k.endswith("rsum")]
    extra = f"  {keys[0]} {row[keys[0]]:.1f}" if keys else ""
    p = f"  p mean {row['p_mean']:.3f}" if "p_mean" in row else ""
    omega = f" ω max {row['omega_max']:.2f}" if "omega_max" in row and label else ""
    head = f"  {label:8s} " if label else ""
    return (
        f"{head}epoch {row['epoch']:3d}  loss {row['loss']:.4f}  lr {row['lr']:.2e}{extra}{p}"
        f"{omega}  ({row['seconds']:.1f}s)"
    )
