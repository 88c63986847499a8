"""One training loop for every method (``global`` | ``baseline`` | ``pico``) on cached features.

Why one loop: the methods differ only in the scoring rule (``PicoAligner.training_scores``)
and in PICO's post-step update (``PicoAligner.after_step``); copying the loop per variant is
how research code drifts apart. Data order is a pure function of (seed, epoch), so a resumed
run sees exactly the batches an uninterrupted one would.

Run folder layout::

    OUT/config.yaml        the full TrainConfig (reproduce with --config OUT/config.yaml)
    OUT/data.json          what it trained on: dataset fingerprint, caches, val carve, skips
    OUT/metrics.jsonl/.csv one row per epoch: loss, lr, validation R@K, p and ω statistics
    OUT/last/              model.safetensors + config.json + state.pt (optimiser, epoch)
    OUT/best/              the model with the best validation rSum
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from picoalign.config import TrainConfig, dump_config
from picoalign.core.losses import TripletLoss, create_loss
from picoalign.evaluation.pipeline import PixelBatches, dataset_features, evaluate_model
from picoalign.features.encode import FeatureSet
from picoalign.fileio import atomic_replace_dir, atomic_write_text
from picoalign.model import PicoAligner
from picoalign.training.devices import autocast, resolve_device
from picoalign.training.distributed import (
    DistContext,
    assert_in_sync,
    init_distributed,
    local_device,
    shutdown,
    wrap_ddp,
)
from picoalign.training.state import Position, restore_last, save_last, write_metrics


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


@dataclass
class TrainResult:
    model: PicoAligner
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None

    @property
    def best_rsum(self) -> float:
        return float(self.best.get("rsum", -math.inf))


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
    """Train ``cfg.model.method`` on ``cfg.data`` (or on given ``features``); see module doc.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) it joins the job and trains data-parallel with
    one-process semantics (:mod:`picoalign.training.distributed`); only rank 0 writes.
    """
    device = resolve_device(cfg.device)
    owns_group = not (dist.is_available() and dist.is_initialized())
    ctx = init_distributed(device)
    try:
        return _train(cfg, features, ctx, local_device(device, ctx), resume, write, on_epoch)
    finally:
        if owns_group:
            shutdown(ctx)


def _train(
    cfg: TrainConfig,
    features: FeatureSet | None,
    ctx: DistContext,
    device: torch.device,
    resume: bool,
    write: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> TrainResult:
    torch.manual_seed(cfg.seed)
    fs = features if features is not None else ctx.main_first(lambda: _load_features(cfg))
    train_fs = fs.split("train")
    eval_fs = fs.split(cfg.eval_split) if cfg.eval_split != "train" else train_fs
    if train_fs.n_captions < 2:
        raise ValueError(f"--data {cfg.data}: the train split has fewer than 2 captions")
    if eval_fs.n_images == 0:  # else evaluation would crash after the first epoch
        raise ValueError(f"--data {cfg.data}: the {cfg.eval_split} split (eval_split) is empty")
    if cfg.batch_size > train_fs.n_captions and ctx.is_main:
        print(
            f"warning: batch size {cfg.batch_size} > {train_fs.n_captions} training captions: "
            "every step sees the whole train split",
            file=sys.stderr,
        )
    cfg.model.image_dim, cfg.model.text_dim = fs.images.dim, fs.texts.dim
    steps_per_epoch = len(batch_order(train_fs.n_captions, cfg.batch_size, cfg.seed, 0))
    cfg.model.pico.warmup_steps = cfg.pico_warmup_epochs * steps_per_epoch

    model = PicoAligner(cfg.model).to(device)
    finetune = cfg.model.finetune_text or cfg.model.finetune_image
    net = wrap_ddp(model, device, ctx, find_unused=finetune)  # forward via DDP, rest via model
    pixels = PixelBatches(model, train_fs) if cfg.model.finetune_image else None
    loss_fn = create_loss(cfg.loss, **({"margin": cfg.margin} if cfg.loss == "triplet" else {}))
    loss_fn.to(device)
    params = [p for p in (*model.parameters(), *loss_fn.parameters()) if p.requires_grad]
    backbone = {
        id(p)
        for n, p in model.named_parameters()
        if n.startswith(("text_backbone.", "image_backbone."))
    }
    groups = [{"params": [p for p in params if id(p) not in backbone], "lr_mult": 1.0}]
    if backbone:  # fine-tuned backbones learn slower (METHOD.md §7: ×0.1)
        groups.append(
            {"params": [p for p in params if id(p) in backbone], "lr_mult": cfg.backbone_lr_mult}
        )
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    out = Path(cfg.out) if write and ctx.is_main else None
    result = TrainResult(model=model, out=Path(cfg.out) if write else None)
    pos = Position()
    if write:
        if resume:
            # rank 0 first: it repairs a folder swap a kill cut short before others read it
            pos, result.history, result.best = ctx.main_first(
                lambda: restore_last(Path(cfg.out), model, opt, loss_fn)
            )
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(dump_config(cfg), out / "config.yaml")
            atomic_write_text(json.dumps(fs.meta, indent=2, default=str), out / "data.json")

    for epoch in range(pos.epoch, cfg.epochs):
        t0 = time.perf_counter()
        lr = learning_rate(cfg, epoch)
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        loss_fn.hardest = epoch >= cfg.triplet_warmup_epochs
        batches = batch_order(train_fs.n_captions, cfg.batch_size, cfg.seed, epoch)
        first = pos.step if epoch == pos.epoch else 0
        total, count = (pos.total, pos.count) if first else (0.0, 0)
        model.train()
        bar = tqdm(
            range(first, len(batches)),
            desc=f"{cfg.model.method} epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            disable=not (cfg.progress and ctx.is_main),
            leave=False,
            initial=first,
            total=len(batches),
        )
        for step in bar:
            idx = batches[step]
            sizes = ctx.shard_sizes(len(idx))
            if pixels is not None and step + 1 < len(batches):  # decode ahead
                pixels.prefetch(ctx.shard(batches[step + 1]))
            img, img_m, txt, txt_m, ids = _forward(
                net, train_fs, ctx.shard(idx), device, cfg, pixels
            )
            # every rank sees the whole global batch: the loss's negatives and PICO's statistics
            g_img, g_img_m, g_txt, g_txt_m, g_ids = (
                ctx.gather(x, sizes, keep_grad=cfg.gather_negatives)
                for x in (img, img_m, txt, txt_m, ids)
            )
            if cfg.gather_negatives:
                scores = model.training_scores(g_img, g_img_m, g_txt, g_txt_m, g_ids)
                loss = loss_fn(scores, g_ids)
            else:  # each rank's own shard; the summed gradients then average the rank losses
                loss = loss_fn(model.training_scores(img, img_m, txt, txt_m, ids), ids)
                loss = _mean_over_ranks(loss, ctx)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; "
                    f"the last good checkpoint is kept in {Path(cfg.out) / 'last'}. "
                    "Try a lower --lr or check the input features for NaN."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if not cfg.gather_negatives:
                _sync_rank_local_state(model, loss_fn, ctx)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            feedback = None
            if (
                cfg.model.method == "pico"
                and model.pico.config.feedback_source == "heldout"
                and step + 1 < len(batches)
            ):
                # the next batch's first feedback_size pairs (all the gains look at)
                nxt = batches[step + 1][: model.pico.config.feedback_size]
                with torch.no_grad():
                    fb = _forward(model, train_fs, ctx.shard(nxt), device, cfg, pixels)
                feedback = tuple(ctx.gather(x, ctx.shard_sizes(len(nxt))) for x in fb)
            model.after_step(
                g_img.detach(), g_img_m, g_txt.detach(), g_txt_m, g_ids, feedback=feedback
            )
            total += _per_pair(loss, loss_fn, len(idx), ctx, cfg) * len(idx)
            count += len(idx)
            bar.set_postfix(loss=f"{total / count:.3f}")
            every = cfg.save_every_steps
            if out is not None and every and (step + 1) % every == 0 and step + 1 < len(batches):
                here = Position(epoch, step + 1, total, count)
                save_last(out, model, opt, loss_fn, here, result.history, result.best)
        assert_in_sync(ctx, model, loss_fn)

        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": total / max(count, 1),
            "lr": lr,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if ctx.is_main and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            metrics = evaluate_model(model, eval_fs)
            row.update({f"{cfg.eval_split}_{k}": v for k, v in _flat(metrics).items()})
            if metrics["rsum"] > result.best_rsum:
                result.best = {"epoch": epoch + 1, **metrics}
                if out is not None:
                    atomic_replace_dir(out / "best", model.save)
        row.update(_p_stats(model))
        result.history.append(row)
        if out is not None:
            save_last(out, model, opt, loss_fn, Position(epoch + 1), result.history, result.best)
            write_metrics(out, result.history)
        if on_epoch is not None and ctx.is_main:
            on_epoch(row)
        ctx.barrier()  # the other ranks wait for rank 0's evaluation and checkpoint
    if out is not None and not (out / "best").exists():
        atomic_replace_dir(out / "best", model.save)
    if pixels is not None:
        pixels.close()
    return result


def _load_features(cfg: TrainConfig) -> FeatureSet:
    return dataset_features(
        cfg.data,
        cfg.model.image_encoder,
        cfg.model.text_encoder,
        seed=cfg.seed,
        skip_bad=cfg.skip_bad,
        cache_dir=cfg.cache_dir,
        progress=cfg.progress,
        max_image_pixels=cfg.max_image_pixels,
        need_splits=("train", cfg.eval_split),
    )


def _forward(
    net: torch.nn.Module,
    fs: FeatureSet,
    idx: Tensor,
    device: torch.device,
    cfg: TrainConfig,
    pixels: PixelBatches | None,
) -> tuple[Tensor, ...]:
    """Embed the captions ``idx`` and their images (through DDP when distributed); fine-tuned
    backbones read the raw captions / images instead of the cached features."""
    img_t, img_m, txt_t, txt_m, ids = _batch(fs, idx, device)
    captions = [fs.captions[i] for i in idx.tolist()] if cfg.model.finetune_text else None
    px = pixels.get(idx, device) if pixels is not None else None
    with autocast(device, cfg.amp):
        img, img_m, txt, txt_m = net(img_t, img_m, txt_t, txt_m, captions, px)
    return img.float(), img_m, txt.float(), txt_m, ids


def _per_pair(
    loss: Tensor, loss_fn: torch.nn.Module, pairs: int, ctx: DistContext, cfg: TrainConfig
) -> float:
    """The batch loss per pair, for logging only: the triplet loss is a sum over the batch
    (its margin's scale), so its logged value would grow with the batch size; InfoNCE is
    already a mean. The optimised loss is unchanged."""
    value = float(loss.detach())
    if not isinstance(loss_fn, TripletLoss):
        return value
    if ctx.enabled and not cfg.gather_negatives:  # mean over ranks of per-shard sums
        return value * ctx.world_size / pairs
    return value / pairs


def _mean_over_ranks(loss: Tensor, ctx: DistContext) -> Tensor:
    """Scale a rank-local loss so the summed gradients average the ranks; the returned value
    (for logging and the NaN check) is the mean of every rank's loss."""
    if not ctx.enabled:
        return loss
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    mean /= ctx.world_size
    return loss / ctx.world_size + (mean - loss.detach() / ctx.world_size)


def _sync_rank_local_state(model: PicoAligner, loss_fn: torch.nn.Module, ctx: DistContext) -> None:
    """With rank-local losses, what the loss side computed differs per rank: the gradients of
    the loss's own parameters (InfoNCE temperature; outside DDP) are summed, and reading B's
    matched-pair scale (an EMA updated while scoring) is averaged — the EMA of the mean."""
    if not ctx.enabled:
        return
    for p in loss_fn.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
    if model.config.method == "pico":
        scale = model.pico.pair_scale
        dist.all_reduce(scale)
        scale /= ctx.world_size


def _flat(metrics: dict[str, Any]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            flat.update({f"{k}_{kk}": vv for kk, vv in v.items()})
        elif isinstance(v, (int, float)):
            flat[k] = v
    return flat
