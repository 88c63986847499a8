"""Gallery search at scale: two-stage vs exhaustive fine-grained search as the gallery grows.

Two-stage = a FAISS first stage over pooled embeddings (``flat`` exact inner product, ``ivf``
with nlist ≈ √N, ``hnsw`` with M = 32) returning ``candidates`` rows, re-ranked with the
fine-grained max-mean score; exhaustive = the max-mean score against every gallery item. Both
run through :class:`picoalign.retrieval.GalleryIndex` (the code ``picoalign search`` uses), with
``fine_grained_scores`` (the plain rule) as the stage-2 score.

Synthetic token features (no model, no dataset), built so that pooled retrieval is informative
but not perfect and the fine-grained score is better:

- items come in clusters of ``--cluster`` (200) sharing a random centre; each cluster has 16
  background and 16 "part" vectors (part = 0.5·centre + a random unit vector, renormalised);
- an item has T = 49 tokens: 6 distinct parts of its cluster + 43 background vectors drawn with
  replacement, each plus a little token noise (norm ≈ 0.3), L2-normalised, stored float16;
- a query is a noisy view of a random item: 3 of its parts and 5 of its background vectors
  (the noise-free vectors its tokens were drawn from) plus noise of norm 1.0, L2-normalised.

Pooled embeddings find the cluster and, roughly, the item (R@10 ≈ 0.55–0.65, R@100 ≈ 0.98,
R@200 ≈ 1.0); the max-mean score sees which parts an item has (R@10 ≈ 0.995–1.0). The cluster
size is fixed, so the number of clusters grows with N.

Recall@10 = share of queries whose source item is in the top 10. Exhaustive search is slow, so
it runs on a subset of the queries, and every method's R@10 is also reported on that subset
("R@10 sub"). "lost" = share of that subset whose item is in the exhaustive top 10 but not among
the first stage's candidates. Stage 2 runs ``fine_grained_scores``' input checks, as
``model.scores`` does; ``--no-validate`` shows their cost (most of a 100-candidate re-rank).

    python benchmarks/retrieval_scale.py                    # 1K, 10K, 100K (~3-4 min, 2 cores)
    python benchmarks/retrieval_scale.py --quick            # < 1 min
    python benchmarks/retrieval_scale.py --plot scale.png --sizes 1000,30000,100000
"""

from __future__ import annotations

import argparse
import math
import os
import time
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from _common import add_overwrite_argument, recall_at_k, refuse_to_overwrite, write_json
from picoalign.core.similarity import fine_grained_scores, l2_normalize, pool_tokens
from picoalign.fileio import atomic_write
from picoalign.retrieval.index import GalleryIndex
from picoalign.retrieval.store import pooled_embeddings

PARTS, PART_VOCAB, BG_VOCAB = 6, 16, 16


def make_gallery(
    n: int, tokens: int = 49, dim: int = 256, cluster: int = 200, seed: int = 0
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """(tokens float16 (n, T, D), mask, generator state needed to draw queries)."""
    gen = torch.Generator().manual_seed(seed)
    m = math.ceil(n / cluster)
    centres = l2_normalize(torch.randn(m, dim, generator=gen))
    bg = l2_normalize(
        centres[:, None] + 0.8 * l2_normalize(torch.randn(m, BG_VOCAB, dim, generator=gen))
    )
    parts = l2_normalize(
        0.5 * centres[:, None] + l2_normalize(torch.randn(m, PART_VOCAB, dim, generator=gen))
    )
    clus = torch.randint(m, (n,), generator=gen)
    part_idx = torch.rand(n, PART_VOCAB, generator=gen).argsort(1)[:, :PARTS]
    bg_idx = torch.randint(BG_VOCAB, (n, tokens - PARTS), generator=gen)
    out = torch.empty(n, tokens, dim, dtype=torch.float16)
    for i in range(0, n, 2048):
        c = clus[i : i + 2048, None]
        base = torch.cat([parts[c, part_idx[i : i + 2048]], bg[c, bg_idx[i : i + 2048]]], 1)
        noise = torch.randn(base.shape, generator=gen).mul_(0.3 / math.sqrt(dim))
        out[i : i + 2048] = l2_normalize(base.add_(noise)).half()
    state = {"clus": clus, "parts": parts, "bg": bg, "part_idx": part_idx, "bg_idx": bg_idx}
    return out, torch.ones(n, tokens, dtype=torch.bool), state


def make_queries(
    state: dict[str, Tensor],
    nq: int,
    q_parts: int = 3,
    q_bg: int = 5,
    noise: float = 1.0,
    seed: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Noisy views of random items: (query tokens (nq, q_parts + q_bg, D), mask, target rows)."""
    gen = torch.Generator().manual_seed(seed)
    n = len(state["clus"])
    target = torch.randint(n, (nq,), generator=gen)
    c, t = state["clus"][target][:, None], target[:, None]
    pick_p = torch.rand(nq, PARTS, generator=gen).argsort(1)[:, :q_parts]
    pick_b = torch.randint(state["bg_idx"].shape[1], (nq, q_bg), generator=gen)
    base = torch.cat(
        [
            state["parts"][c, state["part_idx"][t, pick_p]],
            state["bg"][c, state["bg_idx"][t, pick_b]],
        ],
        1,
    )
    q = l2_normalize(base + noise * l2_normalize(torch.randn(base.shape, generator=gen)))
    return q, torch.ones(nq, q_parts + q_bg, dtype=torch.bool), target


def recall(rows: list[list[int]], target: Tensor, k: int) -> float:
    """Share (0–1) of queries whose target is in the top ``k``."""
    return recall_at_k(rows, target.tolist(), k) / 100


def run_size(n: int, args: argparse.Namespace) -> list[dict]:
    t0 = time.perf_counter()
    tokens, mask, state = make_gallery(n, args.tokens, args.dim, args.cluster, args.seed)
    pooled = pooled_embeddings(tokens, mask)
    q, qm, target = make_queries(state, args.queries, seed=args.seed + 1)
    n_ex = args.exhaustive_queries or max(32, min(args.queries, 3_200_000 // n))
    n_ex = min(n_ex, args.queries)
    print(
        f"\nN = {n:,}: gallery generated in {time.perf_counter() - t0:.1f}s "
        f"({tokens.numel() * 2 / 2**30:.2f} GiB float16); {args.queries} queries, "
        f"exhaustive on {n_ex}",
        flush=True,
    )
    k, rows_out = args.k, []
    score_fn = partial(fine_grained_scores, validate=args.validate)

    def search(index: GalleryIndex, qs: slice, **kw) -> tuple[list[list[int]], float]:
        start = time.perf_counter()
        hits = index.search_tokens(q[qs], qm[qs], score_fn, k=k, nprobe=args.nprobe, **kw)
        return [[h.row for h in hs] for hs in hits], time.perf_counter() - start

    indexes: dict[str, tuple[GalleryIndex, float]] = {}
    for stage in args.stages:
        start = time.perf_counter()
        indexes[stage] = (
            GalleryIndex.from_embeddings(tokens, mask, pooled=pooled, first_stage=stage),
            time.perf_counter() - start,
        )
    flat = indexes.get("flat", next(iter(indexes.values())))[0]
    sub = slice(0, n_ex)
    ex_rows, ex_time = search(flat, sub, exhaustive=True)
    ex_qps = n_ex / ex_time
    ex_r10 = recall(ex_rows, target[:n_ex], k)
    rows_out.append(
        {
            "n": n,
            "method": "exhaustive",
            "candidates": n,
            "build_s": 0.0,
            "qps": ex_qps,
            "ms_per_query": 1e3 / ex_qps,
            "r10": None,
            "r10_subset": ex_r10,
            "stage1_recall": None,
            "lost": 0.0,
            "overlap": 1.0,
            "speedup": 1.0,
        }
    )
    print(
        f"  exhaustive: {1e3 / ex_qps:.0f} ms/query, R@10 {ex_r10:.3f} ({n_ex} queries)", flush=True
    )
    pq = pool_tokens(q, qm)
    for stage, (index, build_s) in indexes.items():
        for cand in [0, *args.candidates] if stage == "flat" else args.candidates:
            rerank = cand > 0
            c = min(cand, n) if rerank else k
            rows, dt = search(index, slice(None), candidates=max(c, 1), rerank=rerank)
            qps = len(rows) / dt
            _, first = index.first_stage(pq, c, nprobe=args.nprobe)
            first = first.tolist()
            lost = (
                sum(
                    int(t) in e[:k] and int(t) not in f
                    for e, f, t in zip(ex_rows, first[:n_ex], target[:n_ex].tolist(), strict=True)
                )
                / n_ex
            )
            overlap = sum(
                len(set(a[:k]) & set(b[:k])) for a, b in zip(rows[:n_ex], ex_rows, strict=True)
            )
            rows_out.append(
                {
                    "n": n,
                    "method": f"{stage}+rerank" if rerank else "flat only (pooled)",
                    "candidates": c if rerank else None,
                    "build_s": build_s,
                    "qps": qps,
                    "ms_per_query": 1e3 / qps,
                    "r10": recall(rows, target, k),
                    "r10_subset": recall(rows[:n_ex], target[:n_ex], k),
                    "stage1_recall": recall(first, target, c) if rerank else None,
                    "lost": lost if rerank else None,
                    "overlap": overlap / (n_ex * k),
                    "speedup": qps / ex_qps,
                }
            )
            r = rows_out[-1]
            print(
                f"  {r['method']:<18} c={cand:<4} {r['ms_per_query']:8.2f} ms/q  "
                f"R@10 {r['r10']:.3f}  speed-up {r['speedup']:.0f}x",
                flush=True,
            )
    return rows_out


def print_table(rows: list[dict], k: int) -> None:
    head = [
        "N",
        "method",
        "cand",
        "build s",
        "queries/s",
        "ms/query",
        f"R@{k}",
        f"R@{k} sub",
        "stage1 R@c",
        "lost",
        f"top{k} overlap",
        "speed-up",
    ]

    def f(x: float | None, fmt: str) -> str:
        return "—" if x is None else format(x, fmt)

    body = [
        [
            f"{r['n']:,}",
            r["method"],
            f(r["candidates"], ","),
            f(r["build_s"], ".1f"),
            f(r["qps"], ",.1f"),
            f(r["ms_per_query"], ".2f"),
            f(r["r10"], ".3f"),
            f(r["r10_subset"], ".3f"),
            f(r["stage1_recall"], ".3f"),
            f(r["lost"], ".3f"),
            f(r["overlap"], ".3f"),
            f(r["speedup"], ",.0f") + "x",
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    for line in [head, *body]:
        print(
            "  ".join(
                c.ljust(w) if j == 1 else c.rjust(w)
                for j, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )


def plot(rows: list[dict], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)

    def label(r: dict) -> str:
        return (
            r["method"]
            if r["lost"] is None or r["method"] == "exhaustive"
            else (f"{r['method']} c={r['candidates']}")
        )

    cands = sorted({r["candidates"] for r in rows if r["method"].endswith("+rerank")})
    for name in dict.fromkeys(label(r) for r in rows):
        sel = [r for r in rows if label(r) == name]
        style = "--" if cands and name.endswith(f"c={cands[-1]}") and len(cands) > 1 else "-"
        xs = [r["n"] for r in sel]
        ax1.plot(xs, [r["qps"] for r in sel], style, marker="o", label=name)
        ax2.plot(xs, [r["r10_subset"] for r in sel], style, marker="o", label=name)
    ax1.set(xscale="log", yscale="log", xlabel="gallery size", ylabel="queries / s (CPU)")
    ax2.set(xscale="log", xlabel="gallery size", ylabel="R@10")
    ax1.set_title("throughput", fontsize=9)
    ax2.set_title("recall@10 on the queries timed exhaustively", fontsize=9)
    ax2.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000", help="comma-separated gallery sizes")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--exhaustive-queries", type=int, default=0, help="default: ~3.2M/N, >= 32")
    p.add_argument("--candidates", default="100,200", help="comma-separated stage-1 sizes")
    p.add_argument("--stages", default="flat,ivf,hnsw")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists searched (default 32)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--tokens", type=int, default=49)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--cluster", type=int, default=200, help="items per cluster")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-validate",
        dest="validate",
        action="store_false",
        help="skip fine_grained_scores' input checks (model.scores always runs them)",
    )
    p.add_argument("--quick", action="store_true", help="1K and 5K items, 100 queries (< 1 min)")
    p.add_argument("--plot", help="write a PNG of queries/s and R@10 against gallery size")
    p.add_argument("--json", help="write the raw rows as JSON")
    add_overwrite_argument(p, "--plot / --json")
    args = p.parse_args(argv)
    refuse_to_overwrite([x for x in (args.plot, args.json) if x], args.overwrite)
    if args.quick:
        args.sizes, args.queries = "1000,5000", min(args.queries, 100)
    args.sizes = [int(x) for x in args.sizes.split(",")]
    args.candidates = [int(x) for x in args.candidates.split(",")]
    args.stages = args.stages.split(",")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
        f"{os.getloadavg()[0]:.1f}; T={args.tokens}, D={args.dim}, query tokens 8, k={args.k}, "
        f"input checks {'on' if args.validate else 'off'}"
    )
    start = time.perf_counter()
    rows = [r for n in args.sizes for r in run_size(n, args)]
    print()
    print_table(rows, args.k)
    big = [
        r
        for r in rows
        if r["n"] == max(args.sizes) and r["lost"] is not None and r["method"] != "exhaustive"
    ]
    ex = next(r for r in rows if r["n"] == max(args.sizes) and r["method"] == "exhaustive")
    print(
        f"\nat N = {max(args.sizes):,}: exhaustive R@{args.k} {ex['r10_subset']:.3f} "
        f"({ex['ms_per_query']:.0f} ms/query); recall lost by the first stage (target in the "
        f"exhaustive top-{args.k} but not among the candidates):"
    )
    for r in big:
        gap = r["r10_subset"] - ex["r10_subset"]
        print(
            f"  {r['method']:<12} c={r['candidates']:<4} lost {100 * r['lost']:.1f} pt, R@{args.k} "
            f"{100 * gap:+.1f} pt vs exhaustive, {r['speedup']:,.0f}x faster"
        )
    print(f"total {time.perf_counter() - start:.0f}s")
    if args.plot:
        plot(rows, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
