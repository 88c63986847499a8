"""The main job (``make demo`` / ``picoalign demo``): baseline vs PICO, side by side.

On the built-in data (Twemoji by default) it trains the fine-grained baseline and PICO with
the same seed, encoders, features and budget, evaluates both on the test split (concepts never
seen in training), prints R@1/5/10 and rSum, writes plots of p and of the prototype weights
over training, and shows a few text→image searches. The first run encodes and caches the
features; later runs start training at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from picoalign.cli.plots import plot_training
from picoalign.cli.progress import epoch_line
from picoalign.config import TrainConfig, load_config
from picoalign.config.paths import real_path
from picoalign.evaluation import embed_features, evaluate, format_table
from picoalign.features import FeatureSet, dataset_features
from picoalign.fileio import atomic_write_text, check_out_folder, make_dirs
from picoalign.marks import DEMO_MARK, holds_demo, json_dict
from picoalign.model import PicoAligner
from picoalign.training.derived import split_sizes
from picoalign.training.loop import train
from picoalign.training.runs import check_run_folder
from picoalign.training.schedule import resolve_epochs

# The demo's recipe; docs/results.md says how it was chosen. Both methods share everything
# but the method itself.
DEMO_OVERRIDES: dict[str, Any] = {}  # the default recipe, which is the study's
# a smoke run that still runs PICO: one warm-up epoch, then one with p estimated
QUICK_OVERRIDES: dict[str, Any] = {"epochs": 2, "batch_size": 64, "pico_warmup_epochs": 1}


# the built-in datasets whose splits are made by concept (picoalign.data.builtin)
CONCEPT_SPLIT = frozenset({"twemoji", "noto-emoji", "tuxpaint", "cross"})
# what the demo writes in its --out: the two runs, their table and their curves
DEMO_FILES = ("baseline", "pico", "results.json", "training.png", "demo.json")
DEMO_RUNS = ("baseline", "pico")


def demo_config(
    method: str,
    data: str,
    out: Path,
    seed: int,
    epochs: int | str | None,
    quick: bool,
    progress: bool,
) -> TrainConfig:
    overrides = {**DEMO_OVERRIDES, **(QUICK_OVERRIDES if quick else {})}
    overrides.update(
        {
            "data": data,
            "out": str(out / method),
            "seed": seed,
            "model.method": method,
            "progress": progress,
            "eval_split": "val",
        }
    )
    if epochs is not None:
        overrides["epochs"] = epochs
    return load_config(None, overrides)


def run_demo(
    data: str = "twemoji",
    out: str | Path = "runs/demo",
    epochs: int | str | None = None,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    features: FeatureSet | None = None,
) -> int:
    out = Path(real_path(str(out)))  # through a link: the folder it points to
    # a rerun replaces the demo's own outputs, never anything else
    check_out_folder(
        out,
        DEMO_FILES,
        "the demo does not write",
        "give the demo a new or empty folder, or its own earlier one",
    )
    _check_runs_are_the_demos(out)
    for method in DEMO_RUNS:  # both before either is trained: a refusal replaces neither
        check_run_folder(out / method, resume=False, overwrite=True)
    make_dirs(out, f"--out {out}")
    # written first: the runs in OUT are the demo's from now on, even if it is stopped
    atomic_write_text(json.dumps({"written_by": DEMO_MARK, "runs": DEMO_RUNS}), out / "demo.json")
    base_cfg = demo_config("baseline", data, out, seed, epochs, quick, progress)
    print(
        f"picoalign demo: {data}, encoders {base_cfg.model.image_encoder} + "
        f"{base_cfg.model.text_encoder} (features cached after the first run)"
    )
    fs = (
        features
        if features is not None
        else dataset_features(
            data,
            base_cfg.model.image_encoder,
            base_cfg.model.make_text_encoder,  # built once the data is known to load
            seed=seed,
            progress=progress,
        )
    )
    if quick:
        fs = _small(fs)
    test = fs.split("test")
    # only the built-in datasets split by concept; a user's JSONL/Karpathy split may not
    unseen = " (concepts unseen in training)" if data.split(":")[0] in CONCEPT_SPLIT else ""
    print(
        f"{fs.n_images} images / {fs.n_captions} captions; test split: {test.n_images} "
        f"images, {test.n_captions} captions{unseen}"
    )

    results: dict[str, dict[str, Any]] = {}
    runs = {}
    # "auto" is resolved here for the headings (no train split: auto_epochs says so)
    train_split = split_sizes(fs).get("train", {"images": 0, "captions": 0})
    for method in ("baseline", "pico"):
        cfg = demo_config(method, data, out, seed, epochs, quick, progress)
        cfg = resolve_epochs(cfg, train_split["images"], train_split["captions"])
        print(f"\n== training {method} ({cfg.epochs} epochs, seed {seed}) ==")
        # the demo owns OUT/baseline and OUT/pico: a rerun replaces them
        run = train(cfg, fs, overwrite=True, on_epoch=lambda r, m=method: print(epoch_line(r, m)))
        runs[method] = run
        results[method] = evaluate(PicoAligner.load(run.out), test)

    print("\n" + format_table({f"{m} (test)": r for m, r in results.items()}))
    delta = results["pico"]["rsum"] - results["baseline"]["rsum"]
    print(
        f"PICO − baseline: {delta:+.1f} rSum on this seed (one seed is not evidence: "
        f"see docs/results.md for the multi-seed study)"
    )
    atomic_write_text(json.dumps(results, indent=2), out / "results.json")
    plot_path = plot_training({m: r.history for m, r in runs.items()}, out / "training.png")
    print(f"plots: {plot_path}")
    _searches(PicoAligner.load(runs["pico"].out), test)
    return 0


def _check_runs_are_the_demos(out: Path) -> None:
    """The demo replaces OUT/baseline and OUT/pico, so it must have written them: an earlier
    demo leaves ``demo.json`` (or, before it, a ``results.json`` of the two runs). A user's
    own ``train --out OUT/pico`` was replaced without a word, with no ``--overwrite`` given."""
    runs = [name for name in DEMO_RUNS if (out / name).exists()]
    if not runs or _written_by_the_demo(out):
        return
    raise ValueError(
        f"--out {out}: {' and '.join(runs)} hold{'s' if len(runs) == 1 else ''} a run the demo "
        "did not write (no demo.json beside it), which a demo would replace; give the demo a "
        "new or empty folder"
    )


def _written_by_the_demo(out: Path) -> bool:
    results = json_dict(out / "results.json")  # demos before demo.json left only this
    return holds_demo(out) or (results is not None and set(results) == set(DEMO_RUNS))


def _small(fs: FeatureSet) -> FeatureSet:
    """A few hundred images, all splits represented: the --quick smoke run."""
    rows = [
        i
        for s in ("train", "val", "test")
        for i in [j for j, x in enumerate(fs.image_splits) if x == s][:120]
    ]
    return fs.subset(rows)


@torch.no_grad()
def _searches(model: Any, test: FeatureSet, n: int = 3, k: int = 5) -> None:
    """A few text→image searches over the test gallery, with the model's scoring rule."""
    img, im, txt, tm = embed_features(model, test)
    print("\ntext → image search over the test images (top 5; * = the query's own image):")
    step = max(1, test.n_captions // n)
    for q in range(0, min(test.n_captions, n * step), step):
        scores = model.scores(img, im, txt[q : q + 1], tm[q : q + 1])[:, 0]
        top = scores.topk(min(k, len(scores))).indices.tolist()
        truth = int(test.caption_image[q])
        first_caption = {}
        for c, i in zip(test.captions, test.caption_image.tolist(), strict=True):
            first_caption.setdefault(i, c)
        names = [
            ("*" if r == truth else "") + first_caption.get(r, test.image_keys[r]) for r in top
        ]
        print(f"  {test.captions[q]!r:36.36s} → " + " | ".join(names))
