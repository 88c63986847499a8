"""One training loop for every method (``global`` | ``baseline`` | ``pico``) on cached features.

Why one loop: the methods differ only in the scoring rule (``PicoAligner.training_scores``)
and in PICO's post-step update (``PicoAligner.after_step``); copying the loop per variant is
how research code drifts apart. Data order is a pure function of (seed, epoch), so a resumed
run sees exactly the batches an uninterrupted one would.

Run folder layout::

    OUT/config.yaml        the full TrainConfig (reproduce with --config OUT/config.yaml)
    OUT/metrics.jsonl/.csv one row per epoch: loss, lr, validation R@K, p and ω statistics
    OUT/last/              model.safetensors + config.json + state.pt (optimiser, epoch)
    OUT/best/              the model with the best validation rSum
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from picoalign.checkpoint import atomic_torch_save, atomic_write_text, safe_torch_load
from picoalign.config import TrainConfig, dump_config
from picoalign.devices import autocast, resolve_device
from picoalign.features import FeatureSet
from picoalign.losses import create_loss
from picoalign.model import PicoAligner
from picoalign.pipeline import dataset_features, evaluate_model


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


@dataclass
class TrainResult:
    model: PicoAligner
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None


def batch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[Tensor]:
    """Shuffled caption indices for one epoch, a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return [
        perm[i : i + batch_size]
        for i in range(0, n, batch_size)
        if len(perm[i : i + batch_size]) >= 2
    ]


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    return cfg.lr * cfg.lr_gamma ** sum(epoch >= s for s in cfg.lr_steps)


def _batch(fs: FeatureSet, idx: Tensor, device: torch.device) -> tuple[Tensor, ...]:
    img_rows = fs.caption_image[idx]
    return (
        fs.images.tokens[img_rows].to(device, torch.float32),
        fs.images.mask[img_rows].to(device),
        fs.texts.tokens[idx].to(device, torch.float32),
        fs.texts.mask[idx].to(device),
        img_rows.to(device),
    )


def _p_stats(model: PicoAligner) -> dict[str, Any]:
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


def train(
    cfg: TrainConfig,
    features: FeatureSet | None = None,
    *,
    resume: bool = False,
    write: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``cfg.model.method`` on ``cfg.data`` (or on given ``features``); see module doc."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    fs = (
        features
        if features is not None
        else dataset_features(
            cfg.data,
            cfg.model.image_encoder,
            cfg.model.text_encoder,
            seed=cfg.seed,
            skip_bad=cfg.skip_bad,
            cache_dir=cfg.cache_dir,
            progress=cfg.progress,
        )
    )
    train_fs = fs.split("train")
    eval_fs = fs.split(cfg.eval_split) if cfg.eval_split != "train" else train_fs
    if train_fs.n_captions < 2:
        raise ValueError(f"--data {cfg.data}: the train split has fewer than 2 captions")
    cfg.model.image_dim, cfg.model.text_dim = fs.images.dim, fs.texts.dim
    steps_per_epoch = len(batch_order(train_fs.n_captions, cfg.batch_size, cfg.seed, 0))
    cfg.model.pico.warmup_steps = cfg.pico_warmup_epochs * steps_per_epoch

    model = PicoAligner(cfg.model).to(device)
    loss_fn = create_loss(cfg.loss, **({"margin": cfg.margin} if cfg.loss == "triplet" else {}))
    loss_fn.to(device)
    params = [p for p in (*model.parameters(), *loss_fn.parameters()) if p.requires_grad]
    backbone = {id(p) for n, p in model.named_parameters() if n.startswith("text_backbone.")}
    groups = [{"params": [p for p in params if id(p) not in backbone], "lr_mult": 1.0}]
    if backbone:  # fine-tuned backbones learn slower (METHOD.md §7: ×0.1)
        groups.append(
            {"params": [p for p in params if id(p) in backbone], "lr_mult": cfg.backbone_lr_mult}
        )
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    out = Path(cfg.out) if write else None
    result = TrainResult(model=model, out=out)
    start_epoch, best_rsum = 0, -math.inf
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if resume and (out / "last" / "state.pt").is_file():
            state = safe_torch_load(out / "last" / "state.pt")
            model.load_state_dict(PicoAligner.load(out / "last").state_dict())
            opt.load_state_dict(state["optimizer"])
            if state.get("loss"):
                loss_fn.load_state_dict(state["loss"])
            start_epoch, best_rsum = int(state["epoch"]) + 1, float(state["best_rsum"])
            result.history = json.loads(state["history"])
            result.best = json.loads(state["best"])
            if not (out / "best" / "config.json").is_file():
                # best/ was deleted: its weights are gone, so the best of the remaining epochs
                # takes its place (else best/ would get the last model while result.best and
                # the printed summary still named the lost epoch).
                best_rsum, result.best = -math.inf, {}
        elif resume:
            raise FileNotFoundError(f"--resume: no checkpoint in {out / 'last'}")
        atomic_write_text(dump_config(cfg), out / "config.yaml")

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        lr = learning_rate(cfg, epoch)
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        loss_fn.hardest = epoch >= cfg.triplet_warmup_epochs
        batches = batch_order(train_fs.n_captions, cfg.batch_size, cfg.seed, epoch)
        model.train()
        total, count = 0.0, 0
        bar = tqdm(
            batches,
            desc=f"{cfg.model.method} epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            disable=not cfg.progress,
            leave=False,
        )
        for step, idx in enumerate(bar):
            img_t, img_m, txt_t, txt_m, ids = _batch(train_fs, idx, device)
            if cfg.model.finetune_text:
                txt_t, txt_m = model.text_tokens([train_fs.captions[i] for i in idx.tolist()])
            with autocast(device, cfg.amp):
                img = model.embed_images(img_t, img_m)
                txt = model.embed_texts(txt_t, txt_m)
            img, txt = img.float(), txt.float()
            scores = model.training_scores(img, img_m, txt, txt_m, ids)
            loss = loss_fn(scores, ids)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; "
                    f"the last good checkpoint is kept in {out / 'last' if out else '(none)'}. "
                    "Try a lower --lr or check the input features for NaN."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            feedback = None
            if (
                cfg.model.method == "pico"
                and model.pico.config.feedback_source == "heldout"
                and step + 1 < len(batches)
            ):
                feedback = _feedback_batch(model, train_fs, batches[step + 1], device)
            model.after_step(img.detach(), img_m, txt.detach(), txt_m, ids, feedback=feedback)
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            bar.set_postfix(loss=f"{total / count:.3f}")

        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": total / max(count, 1),
            "lr": lr,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            metrics = evaluate_model(model, eval_fs)
            row.update({f"{cfg.eval_split}_{k}": v for k, v in _flat(metrics).items()})
            if metrics["rsum"] > best_rsum:
                best_rsum = metrics["rsum"]
                result.best = {"epoch": epoch + 1, **metrics}
                if out is not None:
                    model.save(out / "best")
        row.update(_p_stats(model))
        result.history.append(row)
        if out is not None:
            _save_last(out, model, opt, loss_fn, epoch, best_rsum, result)
            _write_metrics(out, result.history)
        if on_epoch is not None:
            on_epoch(row)
    if out is not None and not (out / "best").exists():
        model.save(out / "best")
    return result


@torch.no_grad()
def _feedback_batch(
    model: PicoAligner, fs: FeatureSet, idx: Tensor, device: torch.device
) -> tuple[Tensor, ...]:
    """The next batch, embedded but not yet trained on: PICO's held-out feedback batch."""
    img_t, img_m, txt_t, txt_m, ids = _batch(fs, idx, device)
    return (model.embed_images(img_t, img_m), img_m, model.embed_texts(txt_t, txt_m), txt_m, ids)


def _flat(metrics: dict[str, Any]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            flat.update({f"{k}_{kk}": vv for kk, vv in v.items()})
        elif isinstance(v, (int, float)):
            flat[k] = v
    return flat


def _save_last(
    out: Path,
    model: PicoAligner,
    opt: torch.optim.Optimizer,
    loss_fn: Any,
    epoch: int,
    best_rsum: float,
    result: TrainResult,
) -> None:
    model.save(out / "last")
    atomic_torch_save(
        {
            "optimizer": opt.state_dict(),
            "loss": loss_fn.state_dict(),
            "epoch": epoch,
            "best_rsum": best_rsum,
            "history": json.dumps(result.history),
            "best": json.dumps(result.best),
        },
        out / "last" / "state.pt",
    )


def _write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(row) + "\n" for row in history)
    atomic_write_text(lines, out / "metrics.jsonl")
    scalar_keys = [k for k in history[-1] if not isinstance(history[-1][k], list)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=scalar_keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(buf.getvalue(), out / "metrics.csv")
