"""One training loop for every scorer and method (``baseline`` | ``pico``) on cached features.

Why one loop: the methods differ only in the scoring rule (``PicoAligner.training_scores``)
and in PICO's post-step update (``PicoAligner.after_step``); copying the loop per variant is
how research code drifts apart. It reads as a sequence:
:func:`~picoalign.training.setup.setup_run` builds the run, then per epoch
:func:`_train_epoch` (each batch one :func:`_train_step`) and :func:`_evaluate_and_save`.
Data order is a pure function of (seed, epoch), so a resumed run sees exactly the batches an
uninterrupted one would.

Run folder layout::

    OUT/config.yaml        the full TrainConfig (reproduce with --config OUT/config.yaml)
    OUT/data.json          what it trained on: dataset fingerprint, caches, val carve, skips
    OUT/metrics.jsonl/.csv one row per epoch: loss, lr, validation R@K, p and ω statistics
    OUT/last/              model.safetensors + config.json + state.pt (optimiser, epoch)
    OUT/best/              the selected model: the last epoch (``select="last"``, the default)
                           or the one with the best validation rSum (``select="val"``)
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from picoalign.config import TrainConfig
from picoalign.config.paths import with_absolute_paths
from picoalign.core.maxmean import sparse_backward
from picoalign.core.similarity import check_tokens
from picoalign.evaluation import evaluate
from picoalign.evaluation.chance import at_chance_warning
from picoalign.evaluation.evaluate import NonFiniteEmbeddings
from picoalign.features import FeatureSet
from picoalign.fileio import atomic_replace_dir, make_temp_dir, swap_in_dir
from picoalign.progress import progress_bar
from picoalign.training.allocator import keep_freed_memory
from picoalign.training.devices import autocast, resolve_device
from picoalign.training.distributed import (
    assert_in_sync,
    init_distributed,
    local_device,
    mean_over_ranks,
    reseed_rank_stream,
    shutdown,
    sync_rank_local_state,
)
from picoalign.training.history import flat_metrics, pico_stats
from picoalign.training.losslog import (
    LOSS_CHECK_EVERY,
    LossLog,
    TrainingError,
    checkpoint_note,
    per_pair,
)
from picoalign.training.runs import check_run_folder, run_lock
from picoalign.training.schedule import batch_order, learning_rate
from picoalign.training.setup import Run, TrainResult, setup_run
from picoalign.training.state import Position, write_metrics

__all__ = ["TrainResult", "TrainingError", "batch_order", "learning_rate", "train"]


def train(
    cfg: TrainConfig,
    features: FeatureSet | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    write: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` (or on given ``features``); see module doc.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) it joins the job and trains data-parallel with
    one-process semantics (:mod:`picoalign.training.distributed`); only rank 0 writes.
    ``cfg`` is read, never written: what a run derives (dimensions, warm-up steps) lives in
    the model's own config. A folder that already holds a run is refused unless ``resume``
    (continue it) or ``overwrite`` (replace it once this run writes its first checkpoint).
    It seeds torch's global generator with ``cfg.seed``, as the command does (docs/cli.md).
    """
    cfg = with_absolute_paths(cfg)  # config.yaml then works from any folder
    keep_freed_memory()  # CPU steps stop paying page faults for their temporaries
    # one writer per run folder, held from before its checks to the end (rank 0 writes)
    writer = write and os.environ.get("RANK", "0") == "0"
    with run_lock(Path(cfg.out)) if writer else nullcontext():
        return _train(cfg, features, resume, overwrite, write, on_epoch)


def _train(
    cfg: TrainConfig,
    features: FeatureSet | None,
    resume: bool,
    overwrite: bool,
    write: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> TrainResult:
    if write:  # every rank, before any of them joins the job (so none has written yet)
        check_run_folder(Path(cfg.out), resume=resume, overwrite=overwrite)
    device = resolve_device(cfg.device)
    owns_group = not (dist.is_available() and dist.is_initialized())
    ctx = init_distributed(device)
    run: Run | None = None
    try:
        run = setup_run(cfg, features, ctx, local_device(device, ctx), resume, write)
        for epoch in range(run.start.epoch, run.cfg.epochs):
            row = _train_epoch(run, epoch)
            _evaluate_and_save(run, epoch, row)
            if on_epoch is not None and ctx.is_main:
                on_epoch(row)
            ctx.barrier()  # the other ranks wait for rank 0's evaluation and checkpoint
        if ctx.is_main:
            _warn_if_at_chance(run)
        if run.out is not None and not (run.out / "best").exists():
            atomic_replace_dir(run.out / "best", run.model.save)
        return run.result
    except BaseException:
        if run is not None:
            run.undo()  # before its first checkpoint: the folder as it was
        raise
    finally:
        if run is not None:
            if run.pixels is not None:
                run.pixels.close()
            run.net = run.model  # the DDP wrapper must go before its process group (shutdown)
        if owns_group:
            shutdown(ctx)


def _train_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """One pass over the training captions (from the resumed step, if any) → its log row."""
    cfg, ctx = run.cfg, run.ctx
    t0 = time.perf_counter()
    lr = learning_rate(cfg, epoch)
    for group in run.opt.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    run.loss_fn.hardest = epoch >= cfg.triplet_warmup_epochs
    batches = batch_order(run.train_fs.n_captions, cfg.batch_size, cfg.seed, epoch)
    first = run.start.step if epoch == run.start.epoch else 0
    total, count = (run.start.total, run.start.count) if first else (0.0, 0)
    log = LossLog(total, count, epoch, run.out / "last" if run.out is not None else None)
    run.model.train()
    bar = progress_bar(
        range(first, len(batches)),
        desc=f"{run.model.config.label} epoch {epoch + 1}/{cfg.epochs}",
        unit="batch",
        disable=not (cfg.progress and ctx.is_main),
        leave=False,
        initial=first,
        total=len(batches),
    )
    for step in bar:
        loss = _train_step(run, batches, step, epoch)
        log.add(step, per_pair(loss, run.loss_fn, len(batches[step]), ctx, cfg), len(batches[step]))
        every = cfg.save_every_steps
        save = run.out is not None and every and (step + 1) % every == 0
        if save and step + 1 < len(batches):
            log.settle()  # never checkpoint weights a non-finite loss has touched
            run.save_last(Position(epoch, step + 1, log.total, log.count))
        if (step + 1) % LOSS_CHECK_EVERY == 0:
            log.settle()
            bar.set_postfix(loss=f"{log.mean:.4f}", refresh=False)  # drawn at its next update
    log.settle()
    _check_finite(run, epoch)
    assert_in_sync(ctx, run.model, run.loss_fn)
    return {
        "epoch": epoch + 1,
        "loss": log.mean,
        "lr": lr,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _train_step(run: Run, batches: list[Tensor], step: int, epoch: int) -> Tensor:
    """Forward, loss, backward, optimiser step and PICO's update for batch ``step``.
    Returns the (detached) loss as the loss function gives it."""
    cfg, ctx, model = run.cfg, run.ctx, run.model
    idx = batches[step]
    sizes = ctx.shard_sizes(len(idx))
    if run.pixels is not None and step + 1 < len(batches):  # decode ahead
        run.pixels.prefetch(ctx.shard(batches[step + 1]))
    reseed_rank_stream(ctx, cfg.seed, epoch, step)  # each rank its own dropout masks
    img, img_m, txt, txt_m, ids = _forward(run, run.net, ctx.shard(idx), _text_width(run, idx))
    if not run.validated:  # once per run: check_tokens reads values (a device sync)
        _validate(img, img_m, txt, txt_m, epoch, step)
        run.validated = True
    # every rank sees the whole global batch: the loss's negatives and PICO's statistics
    g_img, g_img_m, g_txt, g_txt_m, g_ids = (
        ctx.gather(x, sizes, keep_grad=cfg.gather_negatives) for x in (img, img_m, txt, txt_m, ids)
    )
    with sparse_backward(cfg.sparse_backward):  # taken at forward time, kept by the graph
        if cfg.gather_negatives:
            scores = model.training_scores(g_img, g_img_m, g_txt, g_txt_m, g_ids, validate=False)
            loss = run.loss_fn(scores, g_ids)
        else:  # each rank's own shard; the summed gradients then average the rank losses
            scores = model.training_scores(img, img_m, txt, txt_m, ids, validate=False)
            loss = run.loss_fn(scores, ids)
            loss = mean_over_ranks(loss, ctx)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    if not cfg.gather_negatives:
        sync_rank_local_state(model, run.loss_fn, ctx)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip)
    run.opt.step()
    model.after_step(
        g_img.detach(),
        g_img_m,
        g_txt.detach(),
        g_txt_m,
        g_ids,
        feedback=_feedback(run, batches, step),
        validate=False,  # the first batch is checked (_validate); later ones stay sync-free
    )
    return loss.detach()


def _validate(
    img: Tensor, img_m: Tensor, txt: Tensor, txt_m: Tensor, epoch: int, step: int
) -> None:
    """Shapes, masks (every sample has a real token) and finiteness of the first embedded
    batch; later steps skip it (``validate=False`` in the scorers) to stay sync-free."""
    try:
        check_tokens(img, img_m, txt, txt_m)
    except ValueError as e:
        if "NaN" not in str(e):
            raise TrainingError(f"epoch {epoch + 1}, step {step + 1}: bad batch: {e}") from e
        # a NaN is left to the loss check, which reports it with the step and the checkpoint


def _feedback(run: Run, batches: list[Tensor], step: int) -> tuple[Tensor, ...] | None:
    """PICO's held-out feedback batch: the first ``feedback_size`` pairs of the next batch,
    which the optimiser has not seen yet (METHOD.md §6); None where it is not used."""
    model, ctx = run.model, run.ctx
    c = model.pico.config
    if model.config.method != "pico" or c.feedback_source != "heldout":
        return None
    if step + 1 >= len(batches):
        return None
    nxt = batches[step + 1][: c.feedback_size]
    with torch.no_grad():
        fb = _forward(run, model, ctx.shard(nxt), _text_width(run, nxt))
    return tuple(ctx.gather(x, ctx.shard_sizes(len(nxt))) for x in fb)


def _check_finite(run: Run, epoch: int) -> None:
    """A finite loss does not prove finite weights (a hinge loss stays finite while a huge
    step overflows them): checked once an epoch, before validation would trip on NaN tokens
    with a message that named neither the epoch nor the cause."""
    params = [p for p in run.model.parameters() if p.requires_grad]
    if params and not bool(torch.stack([p.isfinite().all() for p in params]).all()):
        raise _diverged(run, epoch)


def _diverged(run: Run, epoch: int) -> TrainingError:
    kept = checkpoint_note(run.out / "last" if run.out is not None else None)
    return TrainingError(
        f"training diverged in epoch {epoch + 1}: the model's weights or embeddings are no "
        f"longer finite (NaN or Inf){kept}. Try a lower --lr (it was {run.cfg.lr:g})."
    )


def _warn_if_at_chance(run: Run) -> None:
    """Say so when the best validation of the run is no better than a random ranking: a
    finite run that did not learn (evaluation/chance.py says why no other check sees it)."""
    key = f"{run.cfg.eval_split}_rsum"
    seen = [row[key] for row in run.result.history if key in row]
    if not seen:
        return
    line = at_chance_warning(run.cfg.eval_split, max(seen), run.eval_fs.caption_image.tolist())
    if line is not None:
        print(
            f"picoalign: {line} (a learning rate far too large or too small does this, and "
            f"so do captions that belong to other images; --lr was {run.cfg.lr:g})",
            file=sys.stderr,
        )


def _evaluate_and_save(run: Run, epoch: int, row: dict[str, Any]) -> None:
    """Validation (rank 0, every ``eval_every`` epochs and at the end), ``best/`` when it
    improves, PICO's p/ω statistics, and the resumable ``last/`` state with the metrics."""
    cfg, result = run.cfg, run.result
    last = epoch + 1 == cfg.epochs
    staged: Path | None = None  # the new best/, filled and swapped in after last/
    if run.ctx.is_main and ((epoch + 1) % cfg.eval_every == 0 or last):
        try:
            metrics = evaluate(run.model, run.eval_fs)
        except NonFiniteEmbeddings as e:  # finite loss and weights, overflowing embeddings
            raise _diverged(run, epoch) from e
        row.update({f"{cfg.eval_split}_{k}": v for k, v in flat_metrics(metrics).items()})
        if (cfg.select == "last" and last) or (
            cfg.select == "val" and metrics["rsum"] > result.best_rsum
        ):
            result.best = {"epoch": epoch + 1, **metrics}
            if run.out is not None:
                staged = make_temp_dir(run.out / "best")
    row.update(pico_stats(run.model))
    result.history.append(row)
    if run.out is None:
        return
    # best/ is written first but swapped in last: a failed write (a full disk) leaves best/,
    # last/ and the metrics all as they were, never a best/ of an epoch the records lack
    try:
        if staged is not None:
            run.model.save(staged)
        run.save_last(Position(epoch + 1))
        write_metrics(run.out, result.history)
        if staged is not None:
            swap_in_dir(staged, run.out / "best", restore_on=Exception)
    except BaseException:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        raise


def _text_width(run: Run, idx: Tensor) -> int | None:
    """The caption slots a batch is trimmed to (``TrainConfig.trim_padding``), None = all.
    ``idx`` is the whole global batch: one width for it, so every rank's shard has the same
    shape for the gathers."""
    return run.train_fs.text_width(idx) if run.cfg.trim_padding else None


def _forward(
    run: Run, net: torch.nn.Module, idx: Tensor, text_tokens: int | None = None
) -> tuple[Tensor, ...]:
    """Embed the captions ``idx`` and their images (through DDP when distributed); fine-tuned
    backbones read the raw captions / images instead of the cached features.
    ``text_tokens``: the caption slots kept (``TrainConfig.trim_padding``)."""
    fs, device, mc = run.train_fs, run.device, run.model.config
    img_t, img_m, txt_t, txt_m, ids = fs.batch(idx, device, text_tokens)
    captions = [fs.captions[i] for i in idx.tolist()] if mc.trains_text else None
    px = run.pixels.get(idx, device) if run.pixels is not None else None
    with autocast(device, run.cfg.amp):
        img, img_m, txt, txt_m = net(img_t, img_m, txt_t, txt_m, captions, px)
    return img.float(), img_m, txt.float(), txt_m, ids
