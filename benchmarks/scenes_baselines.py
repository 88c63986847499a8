"""Baselines on the ``scenes`` benchmark (docs/scenes.md): global vs fine-grained.

Both methods share frozen encoders (EfficientNet-Lite0 + MiniLM, cached features), the
scenes data, seeds, margin 0.8 and the training budget of benchmarks/quality.py. Each
(method, seed) model is trained on ``scenes:twemoji`` and tested on its test split
(in-style) and on the same test scenes drawn with Noto (``scenes:style``: image-style
shift). ``--caption`` adds the caption-style shift (``scenes:caption``, held family
``tags``): same images, hence the same cached image features, other captions.

Besides R@K / rSum it reports *sibling accuracy*: the share of test captions whose own image
outscores its 1–2 siblings (same objects, other arrangement or count). Chance is ≈ 0.42
(a family of 2 gives 1/2, of 3 gives 1/3); a bag of objects cannot beat it.

    python benchmarks/scenes_baselines.py                  # 7,000 images, 3 seeds
    python benchmarks/scenes_baselines.py --caption        # + caption-style shift
    python benchmarks/scenes_baselines.py --quick          # smoke run (size 700, 1 seed)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _common import add_out_arguments, refuse_to_overwrite
from picoalign.config import load_config
from picoalign.data import load_dataset
from picoalign.data.scenes import decode_source
from picoalign.encoders import create_text_encoder
from picoalign.evaluation import embed_features
from picoalign.evaluation.metrics import recall_metrics
from picoalign.features import dataset_features
from picoalign.features.encode import (
    CHUNK_BATCHES,
    cached_features,
    default_cache_dir,
    encode_dataset,
    encode_texts,
)
from picoalign.features.store import FeatureSet
from picoalign.fileio import atomic_write_text
from picoalign.model import PicoAligner
from picoalign.training.loop import train

ROOT = Path(__file__).resolve().parent
BASE: dict[str, Any] = {"epochs": 6, "lr_steps": [4], "batch_size": 128, "lr": 1e-3}
METHODS = {"global": {"model.method": "global"}, "fine_grained": {"model.method": "baseline"}}
MARGIN = 0.8
SIB_KEYS = ("sibling_acc", "pair_arrangement", "pair_count")


def sibling_metrics(scores: torch.Tensor, fs: FeatureSet, counts: dict[str, Any]) -> dict:
    """``sibling_acc``: share of captions whose image scores highest in its family (chance
    ≈ 42 %). ``pair_arrangement`` / ``pair_count``: share of (caption, sibling) pairs where the
    caption's own image outscores a sibling with the same counts (objects swapped) or with
    other counts (ties count half; chance 50 %). ``counts``: image key → its object counts."""
    groups, keys = fs.image_groups, fs.image_keys
    family: dict[str, list[int]] = {}
    for k, g in enumerate(groups):
        family.setdefault(g, []).append(k)
    best = 0
    pairs: dict[str, list[float]] = {"arrangement": [], "count": []}
    for j, i in enumerate(fs.caption_image.tolist()):
        fam = family[groups[i]]
        best += int(max(fam, key=lambda k: float(scores[k, j])) == i)
        for s in fam:
            if s != i:
                kind = "arrangement" if counts[keys[s]] == counts[keys[i]] else "count"
                a, b = float(scores[i, j]), float(scores[s, j])
                pairs[kind].append(1.0 if a > b else 0.5 if a == b else 0.0)
    out = {"sibling_acc": 100.0 * best / len(fs.caption_image)}
    for kind, wins in pairs.items():
        out[f"pair_{kind}"] = 100.0 * sum(wins) / max(1, len(wins))
    return out


def object_counts(spec: str) -> dict[str, Any]:
    """image key → sorted (concept, count) pairs of ``spec``'s scenes."""
    ds = load_dataset(spec)
    return {it.key: tuple(sorted(decode_source(it.source)[1].counts().items())) for it in ds.items}


def evaluate(model: PicoAligner, fs: FeatureSet, counts: dict[str, Any]) -> dict[str, Any]:
    img, im, txt, tm = embed_features(model, fs)
    scores = model.scores(img, im, txt, tm)
    return {**recall_metrics(scores, fs.caption_image), **sibling_metrics(scores, fs, counts)}


def caption_features(base: FeatureSet, spec: str) -> FeatureSet:
    """``spec``'s captions with ``base``'s image features: valid because the two datasets
    hold the same images under the same keys (checked), so no image is re-encoded."""
    ds = load_dataset(spec)
    if [it.key for it in ds.items] != base.image_keys:
        raise SystemExit(f"{spec}: images differ from {base.meta.get('dataset')}")
    captions = [c for it in ds.items for c in it.captions]
    enc = create_text_encoder("minilm")
    texts, _, _ = cached_features(
        "texts",
        ds,
        enc,
        captions,
        default_cache_dir(),
        lambda rows, bar: encode_texts([captions[i] for i in rows], enc, bar=bar),
        chunk=CHUNK_BATCHES * 64,
    )
    counts = torch.tensor([len(it.captions) for it in ds.items])
    return FeatureSet(
        images=base.images,
        texts=texts,
        caption_image=torch.repeat_interleave(torch.arange(len(ds.items)), counts),
        image_keys=base.image_keys,
        captions=captions,
        meta={**base.meta, "dataset": ds.name, "fingerprint": ds.fingerprint},
        image_splits=base.image_splits,
        image_groups=base.image_groups,
    )


def one_run(
    method: str,
    seed: int,
    train_fs: FeatureSet,
    tests: dict[str, FeatureSet],
    base: dict[str, Any],
    data: str,
    counts: dict[str, Any],
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="picoalign-scenes-") as tmp:
        cfg = load_config(
            None,
            {
                **base,
                **METHODS[method],
                "margin": MARGIN,
                "seed": seed,
                "data": data,
                "progress": False,
                "out": tmp,
            },
        )
        t0 = time.perf_counter()
        result = train(cfg, train_fs)
        seconds = time.perf_counter() - t0
        model = PicoAligner.load(Path(tmp) / "best")  # select=last: the last epoch
    return {
        "method": method,
        "seed": seed,
        "val_rsum": result.best.get("rsum"),
        "seconds": round(seconds, 1),
        "tests": {name: evaluate(model, fs, counts) for name, fs in tests.items()},
    }


def _ms(xs: list[float]) -> str:
    return (
        f"{xs[0]:.1f}" if len(xs) < 2 else f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"
    )


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    seeds = sorted({r["seed"] for r in rows})
    protocols = meta.get("protocols") or list(dict.fromkeys(t for r in rows for t in r["tests"]))
    epochs = 2 if meta.get("quick") else BASE["epochs"]
    lines = [
        f"scenes size={meta.get('size', '?')} (train/val/test images {meta.get('splits', '?')}), "
        f"seeds {seeds}, margin {MARGIN}, {epochs} epochs; mean ± std over seeds"
        + (" (PARTIAL: study interrupted)" if meta.get("partial") else "")
        + "\n",
        "| protocol | method | R@1 i→t | R@1 t→i | R@5 i→t | R@5 t→i | rSum | sibling acc "
        "| vs swapped sibling | vs count sibling |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for proto in protocols:
        for method in METHODS:
            ms = [r["tests"][proto] for r in rows if r["method"] == method and proto in r["tests"]]
            if not ms:
                continue
            cells = [_ms([m[d][k] for m in ms]) for k in ("r1", "r5") for d in ("i2t", "t2i")]
            lines.append(
                f"| {proto} | {method} | "
                + " | ".join(cells)
                + f" | {_ms([m['rsum'] for m in ms])} | "
                + " | ".join(_ms([m[k] for m in ms]) for k in SIB_KEYS)
                + " |"
            )
    return "\n".join(lines) + "\n"


def _save(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    atomic_write_text(json.dumps({"meta": meta, "runs": rows}, indent=1), path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, help="images per glyph set (default 7000; --quick: 700)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--caption", action="store_true", help="add the caption-style shift")
    ap.add_argument("--quick", action="store_true", help="size 700, 1 seed, 2 epochs")
    add_out_arguments(
        ap, ROOT / "results" / "scenes_baselines.json", "the runs (JSON; the table beside it, .md)"
    )
    ap.add_argument("--report-only", action="store_true", help="re-print the table of --out")
    args = ap.parse_args(argv)
    if args.report_only:
        saved = json.loads(args.out.read_text())
        print(report(saved["runs"], saved["meta"]))
        return 0
    base = dict(BASE)
    if args.quick:
        args.size, args.seeds = args.size or 700, args.seeds[:1]
        base.update(epochs=2, lr_steps=[])
        args.out = args.out.with_name("scenes_baselines-quick.json")
    args.size = args.size or 7000
    refuse_to_overwrite([args.out, args.out.with_suffix(".md")], args.overwrite)
    start = time.perf_counter()
    data = f"scenes:twemoji:size={args.size}"
    tw = dataset_features(data, progress=True)
    noto = load_dataset(f"scenes:noto:size={args.size}").split("test")
    tests = {
        "twemoji (in-style)": tw.split("test"),
        "style (Twemoji→Noto)": encode_dataset(noto, "efficientnet-lite0", "minilm").split("test"),
    }
    counts = object_counts(data) | object_counts(f"scenes:noto:size={args.size}")
    print(f"features ready after {time.perf_counter() - start:.0f} s", flush=True)
    splits = "/".join(str(sum(s == x for s in tw.image_splits)) for x in ("train", "val", "test"))
    protocols = list(tests) + (["caption (held: tags)"] if args.caption else [])
    meta = {"size": args.size, "splits": splits, "quick": args.quick, "protocols": protocols}
    rows: list[dict[str, Any]] = []
    for method in METHODS:
        for seed in args.seeds:
            rows.append(one_run(method, seed, tw, tests, base, data, counts))
            _save(args.out, {**meta, "partial": True}, rows)  # interrupted: keep the runs
            print(
                f"{method} seed {seed}: "
                + ", ".join(
                    f"{k} rSum {v['rsum']:.1f} sib {v['sibling_acc']:.1f}"
                    for k, v in rows[-1]["tests"].items()
                )
                + f" ({rows[-1]['seconds']:.0f} s)",
                flush=True,
            )
    if args.caption:
        name = "caption (held: tags)"
        spec = f"scenes:caption:size={args.size}"
        cap = caption_features(tw, spec)
        for method in METHODS:
            for seed in args.seeds:
                row = one_run(method, seed, cap, {name: cap.split("test")}, base, spec, counts)
                row["protocol"] = "caption"
                rows.append(row)
                _save(args.out, {**meta, "partial": True}, rows)
                print(f"{method} seed {seed}: {name} rSum {row['tests'][name]['rsum']:.1f}")
    meta["seconds"] = round(time.perf_counter() - start, 1)
    text = report(rows, meta)
    _save(args.out, meta, rows)
    atomic_write_text(text, args.out.with_suffix(".md"))
    print(text)
    print(f"wall time {meta['seconds']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
