"""Two-stage vs exhaustive search on *real* features: what does the first stage cost in recall?

``retrieval_scale.py`` measures the speed curve to 100K items on synthetic tokens; this script
measures recall with a trained model and real images. The gallery is every image of the
installed built-in datasets, all splits (Twemoji + Noto Emoji + Tux Paint, embedded by the
model: 49 EfficientNet-Lite0 patch tokens each); the queries are the test captions of the
training set (MiniLM word tokens), each with its own image as the only correct answer. The
same concepts drawn in the other emoji style are in the gallery too, so every query has a
near-duplicate distractor: a hard gallery for a pooled first stage.

Both methods run through :class:`picoalign.retrieval.index.GalleryIndex` with the model's own
evaluation rule (``model.scores``) as stage 2 and the model's stage-1 weights, exactly as
``picoalign search`` does. Reported per first stage and candidate count: R@1/5/10, top-10
overlap with exhaustive search, "lost" (queries whose image is in the exhaustive top 10 but not
among the candidates), queries/s and the speed-up over exhaustive search.

Without ``--checkpoint`` a model is trained first with picoalign's defaults (the demo's budget:
6 epochs) on ``--train``; ``--method baseline`` trains the fine-grained baseline instead.

    python benchmarks/retrieval_real.py                       # PICO default, ≈ 2–3 min
    python benchmarks/retrieval_real.py --method baseline
    python benchmarks/retrieval_real.py --checkpoint runs/demo/pico/best
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from _common import add_overwrite_argument, recall_at_k, refuse_to_overwrite, write_json
from picoalign.config import load_config
from picoalign.core.similarity import pool_tokens
from picoalign.data import list_datasets
from picoalign.evaluation import embed_features
from picoalign.features import dataset_features
from picoalign.features.encode import FeatureSet
from picoalign.model import PicoAligner
from picoalign.retrieval.index import GalleryIndex
from picoalign.retrieval.store import pooled_embeddings
from picoalign.training.loop import train

GALLERY = ("twemoji", "noto-emoji", "tuxpaint")
BUDGET = {"epochs": 6, "lr_steps": [4], "batch_size": 128, "lr": 1e-3, "margin": 0.8}


def trained_model(args: argparse.Namespace, fs: FeatureSet) -> PicoAligner:
    if args.checkpoint:
        return PicoAligner.load(args.checkpoint).eval()
    with tempfile.TemporaryDirectory(prefix="picoalign-retrieval-") as tmp:
        cfg = load_config(
            None,
            {
                **BUDGET,
                "model.method": args.method,
                "seed": args.seed,
                "data": args.train,
                "progress": False,
                "out": tmp,
            },
        )
        start = time.perf_counter()
        result = train(cfg, fs)
        print(
            f"trained {args.method} on {args.train} in {time.perf_counter() - start:.0f}s "
            f"(best val rSum {result.best.get('rsum'):.1f})",
            flush=True,
        )
        return PicoAligner.load(Path(tmp) / "best").eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", help="a trained model folder (default: train one)")
    p.add_argument("--method", default="pico", choices=["pico", "baseline"])
    p.add_argument("--train", default="twemoji", help="training set; its test captions query")
    p.add_argument("--gallery", default=",".join(GALLERY), help="built-in sets, all splits")
    p.add_argument("--candidates", default="50,100,200", help="comma-separated stage-1 sizes")
    p.add_argument("--stages", default="flat,ivf,hnsw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows as JSON")
    add_overwrite_argument(p, "--json")
    args = p.parse_args(argv)
    refuse_to_overwrite([args.json] if args.json else [], args.overwrite)
    names = args.gallery.split(",")
    installed = {name: ok for name, _, ok in list_datasets()}
    missing = [n for n in names if not installed.get(n)]
    if missing:
        p.error(f"not installed: {', '.join(missing)} (see `picoalign datasets`)")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    # each set's cached features loaded once: for training, the gallery and the queries
    feats = {
        name: dataset_features(name, progress=False) for name in dict.fromkeys([*names, args.train])
    }
    model = trained_model(args, feats[args.train])
    tokens, masks, keys = [], [], []
    for name in names:
        fs = feats[name]
        img, img_mask, _, _ = embed_features(model, fs)
        tokens.append(img)
        masks.append(img_mask)
        keys += [f"{name}/{k}" for k in fs.image_keys]
    gallery, gallery_mask = torch.cat(tokens), torch.cat(masks)
    test = feats[args.train].split("test")
    _, _, q, qm = embed_features(model, test)
    row_of = {k: i for i, k in enumerate(keys)}
    target = [row_of[f"{args.train}/{test.image_keys[int(i)]}"] for i in test.caption_image]
    print(
        f"gallery: {len(keys):,} images ({', '.join(names)}); {len(q):,} queries "
        f"({args.train} test captions); stage 2 = {model.config.method} "
        f"(eval rule {model.config.eval_rule})",
        flush=True,
    )

    def run(index: GalleryIndex, **kw) -> tuple[list[list[int]], float]:
        start = time.perf_counter()
        hits = index.search_tokens(q, qm, model.scores, weights=model.eval_weights, k=10, **kw)
        return [[h.row for h in hs] for hs in hits], time.perf_counter() - start

    def recall(rows: list[list[int]], k: int) -> float:
        return recall_at_k(rows, target, k)

    weights = model.eval_weights  # stage 1's query weighting, as in search_tokens
    pooled_q = pool_tokens(q, qm) * (weights.float() if weights is not None else 1.0)
    pooled = pooled_embeddings(gallery, gallery_mask)  # shared by the three first stages
    flat = GalleryIndex.from_embeddings(gallery, gallery_mask, keys=keys, pooled=pooled)
    ex_rows, ex_s = run(flat, exhaustive=True)
    table = [{"method": "exhaustive", "candidates": len(keys), "rows": ex_rows, "s": ex_s}]
    for stage in args.stages.split(","):
        index = (
            flat
            if stage == "flat"
            else GalleryIndex.from_embeddings(
                gallery, gallery_mask, keys=keys, pooled=pooled, first_stage=stage
            )
        )
        if stage == "flat":
            rows, s = run(index, rerank=False)
            table.append({"method": "flat, pooled only", "candidates": None, "rows": rows, "s": s})
        for c in (int(x) for x in args.candidates.split(",")):
            rows, s = run(index, candidates=c)
            first = index.first_stage(pooled_q, c)[1].tolist()
            lost = sum(
                t in e and t not in f for e, f, t in zip(ex_rows, first, target, strict=True)
            )
            table.append(
                {
                    "method": f"{stage} + re-rank",
                    "candidates": c,
                    "rows": rows,
                    "s": s,
                    "lost": 100 * lost / len(target),
                }
            )
    out = []
    print(
        f"\n{'first stage':<18} {'cand':>6} {'R@1':>6} {'R@5':>6} {'R@10':>6} "
        f"{'overlap':>8} {'lost':>6} {'queries/s':>10} {'speed-up':>9}"
    )
    for r in table:
        overlap = sum(len(set(a) & set(b)) for a, b in zip(r["rows"], ex_rows, strict=True)) / (
            10 * len(target)
        )
        row = {
            "method": r["method"],
            "candidates": r["candidates"],
            "r1": recall(r["rows"], 1),
            "r5": recall(r["rows"], 5),
            "r10": recall(r["rows"], 10),
            "overlap": 100 * overlap,
            "lost": r.get("lost"),
            "qps": len(target) / r["s"],
            "speedup": ex_s / r["s"],
        }
        out.append(row)
        cand = "all" if r["method"] == "exhaustive" else (row["candidates"] or 10)
        lost = "—" if row["lost"] is None else f"{row['lost']:.1f}"
        print(
            f"{row['method']:<18} {cand:>6} {row['r1']:6.1f} {row['r5']:6.1f} {row['r10']:6.1f} "
            f"{row['overlap']:7.1f}% {lost:>6} {row['qps']:10.1f} {row['speedup']:8.1f}x"
        )
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
