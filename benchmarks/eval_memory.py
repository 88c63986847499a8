"""Evaluation at COCO-5K size within a memory budget (docs/performance.md).

Ranks a 5,000-image × 25,000-caption fine-grained score matrix two ways, each in its own
process so the peak resident memory is its own: at once (the fp32 matrix is 477 MiB) and in
blocks with ``--memory-mb`` (default 256, 64 and 16) of scores held at a time. Prints the peak
resident memory added by evaluation (kernel temporaries and allocator arenas included), the
time, and whether every run gives the metrics of the whole matrix. Token counts and
D are small (synthetic features) so the FLOPs fit a CPU; the matrix size is COCO 5K's.

    python benchmarks/eval_memory.py
    python benchmarks/eval_memory.py --images 1000 --captions-per-image 5   # Flickr 1K
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from picoalign.core.similarity import fine_grained_scores
from picoalign.evaluation.metrics import blocked_recall_metrics


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def child(args: argparse.Namespace, memory_mb: float) -> dict:
    gen = torch.Generator().manual_seed(args.seed)
    n_img, n_cap = args.images, args.images * args.captions_per_image
    img = torch.nn.functional.normalize(
        torch.randn(n_img, args.tokens, args.dim, generator=gen), dim=-1
    )
    txt = torch.nn.functional.normalize(
        torch.randn(n_cap, args.tokens, args.dim, generator=gen), dim=-1
    )
    cap_img = torch.arange(n_img).repeat_interleave(args.captions_per_image)
    txt = txt + 0.5 * img[cap_img]  # matched pairs share signal: ranks are not all ties
    im = torch.ones(n_img, args.tokens, dtype=torch.bool)
    tm = torch.ones(n_cap, args.tokens, dtype=torch.bool)
    before = _rss_mb()
    t0 = time.perf_counter()
    metrics = blocked_recall_metrics(
        lambda r, c: fine_grained_scores(img[r], im[r], txt[c], tm[c], memory_budget_mb=64),
        n_img,
        cap_img,
        memory_mb=memory_mb,
    )
    return {
        "memory_mb": memory_mb,
        "seconds": round(time.perf_counter() - t0, 1),
        "inputs_rss_mb": round(before, 1),
        "added_peak_mb": round(_rss_mb() - before, 1),
        "rsum": metrics["rsum"],
        "metrics": metrics,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--captions-per-image", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument(
        "--memory-mb", type=float, nargs="+", default=[256.0, 64.0, 16.0], help="blocked budgets"
    )
    ap.add_argument("--child", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args, args.child)))
        return 0
    n_cap = args.images * args.captions_per_image
    full_mb = args.images * n_cap * 4 / 2**20
    print(
        f"{args.images} images × {n_cap} captions, {args.tokens} tokens, D={args.dim}; "
        f"the fp32 score matrix is {full_mb:.0f} MB"
    )
    rows = []
    budgets = [max(4 * full_mb, 1024.0), *args.memory_mb]
    for memory_mb in budgets:
        cmd = [sys.executable, __file__, *_shape_args(args), "--child", str(memory_mb)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{'mode':<24} {'scores MB':>9} {'added peak MB':>13} {'seconds':>8} {'rSum':>7}")
    for r in rows:
        mode = "whole matrix" if r is rows[0] else "blocked (two passes)"
        print(
            f"{mode:<24} {min(r['memory_mb'], full_mb):>9.0f} {r['added_peak_mb']:>13.1f} "
            f"{r['seconds']:>8.1f} {r['rsum']:>7.2f}"
        )
    same = all(r["metrics"] == rows[0]["metrics"] for r in rows)
    print(f"identical metrics in every run: {same}")
    return 0 if same else 1


def _shape_args(args: argparse.Namespace) -> list[str]:
    return [
        f"--images={args.images}",
        f"--captions-per-image={args.captions_per_image}",
        f"--tokens={args.tokens}",
        f"--dim={args.dim}",
        f"--seed={args.seed}",
    ]


if __name__ == "__main__":
    sys.exit(main())
