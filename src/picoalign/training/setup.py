"""What one training run holds, and how it is built: data, model, loss, optimiser, run folder.

Why apart from :mod:`picoalign.training.loop`: building a run (loading features, deriving the
model's config, fitting standardisation, restoring a checkpoint, moving an old run aside) is
done once and reads top to bottom; the loop only iterates over what :func:`setup_run` built.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from picoalign.config import TrainConfig, dump_config, load_config
from picoalign.core.losses import create_loss
from picoalign.evaluation import coarse_split_warning, duplicate_caption_warning
from picoalign.features import FeatureSet, dataset_features
from picoalign.fileio import atomic_write_text, make_dirs
from picoalign.model import ModelConfig, PicoAligner
from picoalign.training.derived import model_config_for, split_sizes
from picoalign.training.devices import numerics
from picoalign.training.distributed import DistContext, wrap_ddp
from picoalign.training.pixels import PixelBatches
from picoalign.training.runs import Replacement, data_change, data_record
from picoalign.training.schedule import batch_order, continue_schedule, resolve_epochs
from picoalign.training.state import Position, restore_last, save_last


@dataclass
class TrainResult:
    """The trained model, one row per epoch, and the selected epoch's validation metrics
    (``best``: the last epoch, or the best by validation — ``TrainConfig.select``)."""

    model: PicoAligner
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None
    config: TrainConfig | None = None  # as trained: ``epochs="auto"`` resolved

    @property
    def best_rsum(self) -> float:
        return float(self.best.get("rsum", -math.inf))


@dataclass
class Run:
    """Everything one training run holds, built once by :func:`setup_run`."""

    cfg: TrainConfig
    ctx: DistContext
    device: torch.device
    train_fs: FeatureSet
    eval_fs: FeatureSet
    model: PicoAligner
    net: torch.nn.Module  # the model, DDP-wrapped when distributed (forward only)
    loss_fn: torch.nn.Module
    opt: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    pixels: PixelBatches | None
    out: Path | None  # where this rank writes (rank 0 only)
    result: TrainResult
    start: Position
    validated: bool = False  # the first batch's tokens were checked (see loop._validate)
    replacing: Replacement | None = None  # the old run an --overwrite moves aside
    # a resume's new run files (config.yaml, ...), written with its first checkpoint
    pending: dict[str, str] = field(default_factory=dict)
    # those files as they were before, put back if that checkpoint fails (None: absent)
    before: dict[str, str | None] = field(default_factory=dict)

    def save_last(self, pos: Position) -> None:
        """The resumable checkpoint at ``pos``; the first one lets a replaced run go, and
        writes a resume's run files. Why then: a resume stopped before it (Ctrl-C, a full
        disk, a bad option) must leave the run as it was, and a ``config.yaml`` saying
        ``--epochs 30`` would make a later ``--resume`` train to 30 on a run that never
        started doing so."""
        assert self.out is not None
        if self.pending:
            self.before = {name: _text_or_none(self.out / name) for name in self.pending}
            for name, text in self.pending.items():
                atomic_write_text(text, self.out / name)
        r = self.result
        save_last(self.out, self.model, self.opt, self.loss_fn, pos, r.history, r.best)
        self.pending, self.before = {}, {}
        if self.replacing is not None:
            self.replacing.commit()
            self.replacing = None

    def undo(self) -> None:
        """A run stopped before its first checkpoint: the folder goes back to what it was
        (an ``--overwrite``'s old run comes back, a resume's run files are put back)."""
        if self.replacing is not None:
            self.replacing.abort()
        for name, text in self.before.items():
            try:
                if text is None:
                    (self.out / name).unlink(missing_ok=True)  # type: ignore[operator]
                else:
                    atomic_write_text(text, self.out / name)  # type: ignore[operator]
            except OSError as e:  # the error that stopped the run is the one to raise
                print(f"picoalign: could not put back {name}: {e}", file=sys.stderr)


def _text_or_none(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def _advice(
    cfg: TrainConfig,
    fs: FeatureSet,
    train_fs: FeatureSet,
    eval_fs: FeatureSet,
    model: PicoAligner,
    total_steps: int,
    resume: bool,
) -> list[str]:
    """What a run says before it trains: the speed options on, and each setting that makes
    a run other than the user meant (a batch larger than the data, an evaluation split too
    small to pick an epoch on, an lr step or a PICO warm-up past the run's end)."""
    notes: list[str] = []
    speed = [  # opt-in, the same training up to rounding (docs/performance.md): said once
        what
        for on, what in (
            (cfg.trim_padding, "trim_padding: each batch uses only the caption slots it needs"),
            (
                cfg.sparse_backward,
                "sparse_backward: the max-mean backward over the pairs with a gradient only",
            ),
        )
        if on
    ]
    if speed:
        notes.append("; ".join(speed) + " (the same training up to rounding)")
    if cfg.batch_size > train_fs.n_captions:
        notes.append(
            f"warning: batch size {cfg.batch_size} > {train_fs.n_captions} training captions: "
            "every step sees the whole train split"
        )
    dup = duplicate_caption_warning(
        cfg.eval_split, eval_fs.captions, eval_fs.caption_image.tolist()
    )
    if dup is not None:
        notes.append(dup)
    coarse = coarse_split_warning(cfg.eval_split, eval_fs.n_images)
    if coarse is not None:
        notes.append(
            f"{coarse} (select=last: the run keeps its last epoch)"
            if cfg.select == "last"
            else f"{coarse}; select=val picks the kept epoch on it: select=last is safer"
        )
    named = cfg.model.image_encoder
    if fs.meta.get("image_encoder") == "precomputed" and named not in (
        "precomputed", ModelConfig().image_encoder,
    ):  # fmt: skip
        notes.append(
            f"warning: image encoder {named} is not used: {cfg.data} brings its own image "
            "features (the model records the 'precomputed' encoder)"
        )
    late = [int(s) for s in cfg.lr_steps if s >= 1 and s >= cfg.epochs]  # epoch numbers
    # e.g. --set lr_steps=[5] with --epochs 2: no word, no step. A resume keeps the run's own
    # steps (continue_schedule below): a step past a shortened run's end is the schedule's
    if late and not resume:
        notes.append(
            f"warning: lr_steps {cfg.lr_steps} puts a step at epoch {late[0] + 1} (lr_steps "
            f"count epochs from 0), past the run's {cfg.epochs}: the learning rate never "
            "takes it (fractions, such as 0.6, follow --epochs)"
        )
    warmup = model.config.pico.warmup_steps
    # p is first updated after step warmup + 1 and first used by step warmup + 2
    if model.config.method == "pico" and warmup + 1 >= total_steps:
        notes.append(
            f"warning: PICO's warm-up ({warmup} steps: pico_warmup_epochs="
            f"{cfg.pico_warmup_epochs}) leaves no training step that uses p: it is first "
            f"updated after step {warmup + 1}, and used from the next, of the run's "
            f"{total_steps}; so this run trains the baseline (more --epochs, or "
            "--set pico_warmup_epochs=N)"
        )
    return notes


def setup_run(
    cfg: TrainConfig,
    features: FeatureSet | None,
    ctx: DistContext,
    device: torch.device,
    resume: bool,
    write: bool,
) -> Run:
    """Data, model, loss, optimiser and (on resume) the state to continue from."""
    torch.manual_seed(cfg.seed)
    # the schedule the run trained on, read by every rank before rank 0 (past the barrier
    # of main_first below) can rewrite it
    saved_path = Path(cfg.out) / "config.yaml"
    saved = load_config(saved_path) if write and resume and saved_path.is_file() else None
    fs = features if features is not None else ctx.main_first(lambda: run_features(cfg, device))
    train_fs = fs.split("train")
    eval_fs = fs.split(cfg.eval_split) if cfg.eval_split != "train" else train_fs
    if train_fs.n_captions < 2:
        raise ValueError(f"--data {cfg.data}: the train split has fewer than 2 captions")
    if eval_fs.n_images == 0:  # else evaluation would crash after the first epoch
        raise ValueError(f"--data {cfg.data}: the {cfg.eval_split} split (eval_split) is empty")
    notes = []  # printed once the run is set up: a run that fails to start shows its error
    if cfg.epochs == "auto":
        cfg = resolve_epochs(cfg, train_fs.n_images, train_fs.n_captions)
        per_image = train_fs.n_captions / train_fs.n_images
        notes.append(
            f"epochs=auto: {cfg.epochs} epochs for {per_image:.3g} captions per image "
            "(--epochs N to choose)"
        )
    steps_per_epoch = len(batch_order(train_fs.n_captions, cfg.batch_size, cfg.seed, 0))
    model = PicoAligner(model_config_for(cfg, fs, steps_per_epoch))
    total_steps = cfg.epochs * steps_per_epoch
    notes += _advice(cfg, fs, train_fs, eval_fs, model, total_steps, resume)
    if model.config.standardize:  # training-split statistics, saved with the model
        model.fit_standardization(train_fs.images, train_fs.texts)
    model.to(device)
    finetune = model.config.trains_text or model.config.finetune_image
    net = wrap_ddp(model, device, ctx, find_unused=finetune)  # forward via DDP, rest via model
    pixels = PixelBatches(model, train_fs) if model.config.finetune_image else None
    loss_fn = create_loss(cfg.loss, **({"margin": cfg.margin} if cfg.loss == "triplet" else {}))
    loss_fn.to(device)
    params = [p for p in (*model.parameters(), *loss_fn.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(
        param_groups(model, params, cfg.backbone_lr_mult), lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    out = Path(cfg.out) if write and ctx.is_main else None
    result = TrainResult(model=model, out=Path(cfg.out) if write else None, config=cfg)
    start = Position()
    if write and resume:
        touched = check_same_data(Path(cfg.out), fs.meta)
        if touched is not None:
            notes.append(touched)
        # rank 0 first, and only rank 0 repairs what a kill left: the others just read
        start, result.history, result.best = ctx.main_first(
            lambda: restore_last(Path(cfg.out), model, opt, loss_fn, repair=ctx.is_main)
        )
        if start.epoch > cfg.epochs:  # before config.yaml is written: the run stays as it is
            raise ValueError(
                f"--resume --epochs {cfg.epochs}: the run in {cfg.out} has already trained "
                f"{start.epoch} epochs; a resume can only continue it (--epochs {start.epoch} "
                "or more)"
            )
        # a resume inside an epoch has trained at that epoch's lr already
        used = start.epoch + (1 if start.step > 0 else 0)
        kept = continue_schedule(saved, cfg, used) if saved is not None else cfg
        if saved is not None and kept is not cfg:
            notes.append(
                f"epochs {saved.epochs} -> {cfg.epochs}: the lr steps the run has trained "
                f"past stay, the rest follow the new length: lr_steps {kept.lr_steps}, not "
                f"{cfg.lr_step_epochs()} (0-based epochs, as config.yaml says from this "
                f"resume's first checkpoint); a {cfg.epochs}-epoch run from the start is "
                "another run"
            )
            cfg = result.config = kept
    replacing = Replacement(out) if out is not None and not resume else None
    run_files = (
        {}
        if out is None
        else {  # what rank 0 writes of a run besides checkpoints
            "config.yaml": dump_config(cfg),
            "data.json": json.dumps({**fs.meta, "splits": split_sizes(fs)}, indent=2, default=str),
            "numerics.json": json.dumps(numerics(device), indent=2),
        }
    )
    if out is not None and not resume:
        _start_run_folder(out, run_files, replacing)
    # a resume's files change only with its first checkpoint; unchanged ones are not written
    pending = {} if out is None or not resume else _changed(out, run_files)
    for line in notes if ctx.is_main else []:
        print(f"picoalign: {line}", file=sys.stderr)  # as every command's own warnings
    return Run(
        cfg, ctx, device, train_fs, eval_fs, model, net, loss_fn, opt, params, pixels, out,
        result, start, replacing=replacing, pending=pending,
    )  # fmt: skip


def _start_run_folder(out: Path, files: dict[str, str], replacing: Replacement | None) -> None:
    """A new run's folder and its files (config.yaml, data.json, numerics.json), written
    once the data is loaded and the model built; a run it replaces is moved aside only now,
    and put back if this fails (the loop undoes a run it holds; this one it does not yet)."""
    if replacing is not None:
        replacing.begin()
    try:
        make_dirs(out, f"--out {out}")
        for name, text in files.items():
            atomic_write_text(text, out / name)
    except BaseException:
        if replacing is not None:
            replacing.abort()
        raise


def _changed(out: Path, files: dict[str, str]) -> dict[str, str]:
    return {name: text for name, text in files.items() if _text_or_none(out / name) != text}


def check_same_data(out: Path, meta: dict[str, Any]) -> str | None:
    """Refuse to resume on other data than the run trained on. Why: only the dataset spec is
    part of the config, and a file edited in place keeps its spec. The run's ``data.json``
    holds two fingerprints: of its items (keys, splits, captions: a difference is other data,
    refused) and of the whole input, which also holds the image files' sizes and times (a
    difference there alone may be a copy that did not keep the times: the warning returned,
    printed with the run's other notes, once). A run without them, from before they were
    written, is not checked."""
    path = out / "data.json"
    change = data_change(data_record(out), meta)
    if change is not None and change[0] == "items":
        raise ValueError(
            f"--resume: the data of {out} changed since the run trained on it (its images, "
            f"splits or captions: fingerprint {change[1]} in {path}, {change[2]} now): a "
            "resumed run keeps its data; put the old data back, or train a new run into "
            "another --out"
        )
    if change is not None:
        return (
            "warning: --resume: the same images and captions, but image files "
            "changed on disk since the run trained on them (size, time or inode: edited, "
            "replaced, renamed or copied; "
            f"fingerprint {change[1]} in {path}, {change[2]} now): resuming on them"
        )
    return None


def param_groups(
    model: PicoAligner, params: list[torch.nn.Parameter], backbone_lr_mult: float
) -> list[dict[str, Any]]:
    """Heads (and the loss) at the base lr; fine-tuned backbones slower (METHOD.md §7: ×0.1)."""
    backbone = {
        id(p)
        for n, p in model.named_parameters()
        if n.startswith(("text_backbone.", "image_backbone."))
    }
    groups = [{"params": [p for p in params if id(p) not in backbone], "lr_mult": 1.0}]
    if backbone:
        groups.append(
            {"params": [p for p in params if id(p) in backbone], "lr_mult": backbone_lr_mult}
        )
    return groups


def run_features(cfg: TrainConfig, device: torch.device | str = "cpu") -> FeatureSet:
    """The run's data through the feature cache, encoded on ``device`` where not cached."""
    return dataset_features(
        cfg.data,
        cfg.model.image_encoder,
        cfg.model.make_text_encoder,  # built once the data is known to load
        seed=cfg.split_seed,
        skip_bad=cfg.skip_bad,
        cache_dir=cfg.cache_dir,
        progress=cfg.progress,
        max_image_pixels=cfg.max_image_pixels,
        need_splits=("train", cfg.eval_split),
        device=device,
    )
