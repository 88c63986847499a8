"""What one epoch's row of ``metrics.jsonl`` holds besides the loss: validation metrics
flattened to columns, and PICO's p / ω statistics (what the plots and heat maps read)."""

from __future__ import annotations

from typing import Any

from picoalign.model import PicoAligner


def pico_stats(model: PicoAligner) -> dict[str, Any]:
    """p's mean / range and the prototype weights ω; empty for a baseline."""
    if model.config.method != "pico":
        return {}
    pico = model.pico
    n = int(pico.bank_len)
    omega = pico.omega[:n]
    return {
        "p_mean": float(pico.p.mean()),
        "p_min": float(pico.p.min()),
        "p_max": float(pico.p.max()),
        "omega_max": float(omega.max()) if n else 0.0,
        "omega_spread": float(omega.max() - omega.min()) if n else 0.0,
        "p": [round(float(x), 5) for x in pico.p],
        "omega": [round(float(x), 5) for x in omega],
    }


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """``{"i2t": {"r1": ..}, "rsum": ..}`` as ``{"i2t_r1": .., "rsum": ..}`` (numbers only)."""
    flat: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            flat.update({f"{k}_{kk}": vv for kk, vv in v.items()})
        elif isinstance(v, (int, float)):
            flat[k] = v
    return flat
