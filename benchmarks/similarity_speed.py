"""Speed of the fine-grained (max-mean) score: picoalign vs the research-repo loop.

Measured side by side in one run, on the same synthetic tokens:

(a) the research-repo loop: one caption at a time, expanded over all images, one ``bmm``,
    masked max over words → mean over patches, max over patches → mean over words;
(b) ``fine_grained_scores`` in fp32;
(c) ``fine_grained_scores`` with ``compute_dtype=torch.bfloat16``;
(d) the machine's measured matmul peak: a large square fp32 GEMM and a bf16 GEMM.

It prints wall seconds (min and median of ``--repeat`` runs, fp32 and bf16 interleaved),
CPU seconds (all threads: with ``--threads 1`` a load-robust measure of work), GFLOP/s with FLOPs =
2·N_img·N_cap·n_v·n_t·D (nominal: padding counted), the ratio to the loop, the fraction of
the measured fp32 peak, the peak growth of anonymous RSS during each call (/proc, every 2 ms,
after a warm-up; the allocator may keep freed memory, so it is a rough view), the load
average before and after, and the top-1 agreement of bf16 with fp32 (share of captions whose
best image, and of images whose best caption, is the same) plus both rSums. Results depend
on the machine: the CPU model and ``torch.backends.cpu.get_cpu_capability()`` are printed.

Synthetic data with a true match, so the rankings mean something: caption c describes image
c mod N_img; each of its words is one of that image's patches plus noise.

    python benchmarks/similarity_speed.py                   # 1,000 × 1,000, D = 512 (minutes)
    python benchmarks/similarity_speed.py --quick           # smoke size, seconds
    python benchmarks/similarity_speed.py --shape flickr    # 1,000 × 5,000, ragged ≤ 32 words
    python benchmarks/similarity_speed.py --shape coco      # 5,000 × 25,000 (long: opt-in)
    python benchmarks/similarity_speed.py --scaling --plot scaling.png   # 1K → 25K captions
    python benchmarks/similarity_speed.py --json result.json --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from _common import add_overwrite_argument, machine, refuse_to_overwrite, timed, write_json
from picoalign.core.similarity import DEFAULT_BUDGET_MB, fine_grained_scores, l2_normalize
from picoalign.evaluation.metrics import recall_metrics
from picoalign.fileio import atomic_write

NOISE = 9.0  # norm of a word's noise vs 1 for its patch: R@1 well below 100% at 1K × 1K
# name: (n_img, n_v, n_cap, max words, ragged captions, loop sample)
SHAPES = {
    "default": (1000, 49, 1000, 16, False, None),
    "flickr": (1000, 49, 5000, 32, True, 1000),
    "coco": (5000, 49, 25000, 16, True, 1000),
    "quick": (100, 49, 200, 16, True, None),
}


def make_tokens(
    n_img: int, n_v: int, n_cap: int, n_t: int, dim: int, ragged: bool, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(img, img_mask, txt, txt_mask, caption_image); words = own patches + noise."""
    gen = torch.Generator().manual_seed(seed)
    img = l2_normalize(torch.randn(n_img, n_v, dim, generator=gen))
    cap_img = torch.arange(n_cap) % n_img
    txt = torch.empty(n_cap, n_t, dim)
    for c0 in range(0, n_cap, 2048):  # chunks: bounded temporaries at COCO size
        c1 = min(n_cap, c0 + 2048)
        patch = torch.randint(0, n_v, (c1 - c0, n_t), generator=gen)
        noise = torch.randn(c1 - c0, n_t, dim, generator=gen) * (NOISE / dim**0.5)
        txt[c0:c1] = l2_normalize(img[cap_img[c0:c1, None], patch] + noise)
    lens = (
        torch.randint(5, n_t + 1, (n_cap,), generator=gen) if ragged else torch.full((n_cap,), n_t)
    )
    txt_mask = torch.arange(n_t).unsqueeze(0) < lens.unsqueeze(1)
    return img, torch.ones(n_img, n_v, dtype=torch.bool), txt, txt_mask, cap_img


def loop_scores(img: Tensor, img_mask: Tensor, txt: Tensor, txt_mask: Tensor) -> Tensor:
    """The research-repo loop: one caption at a time against every image (the reference)."""
    n_img = img.shape[0]
    out = torch.empty(n_img, txt.shape[0])
    patches = img_mask.float()
    n_patches = patches.sum(1)
    padded_images = not bool(img_mask.all())
    with torch.no_grad():
        for j in range(txt.shape[0]):
            t = txt[j : j + 1].expand(n_img, -1, -1)
            s = torch.bmm(img, t.transpose(1, 2))  # (N_img, n_v, n_t)
            s = s.masked_fill(~txt_mask[j].view(1, 1, -1), -torch.inf)
            i2t = (s.max(dim=2).values * patches).sum(1) / n_patches
            if padded_images:
                s = s.masked_fill(~img_mask.unsqueeze(2), -torch.inf)
            t2i = s.max(dim=1).values[:, txt_mask[j]].mean(1)
            out[:, j] = i2t + t2i
    return out


def _rss_bytes() -> int:
    """Anonymous resident memory (heap, tensors): file-backed pages (libraries paged in on
    first use of a kernel) would otherwise show up as growth."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def _trim() -> None:
    """Hand freed heap back to the OS (glibc), so the next RSS growth is not hidden by memory
    an earlier call freed but the allocator kept."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(fn: Callable[[], Tensor], repeat: int) -> dict[str, object]:
    """Run ``fn`` ``repeat`` times: wall seconds (min, median), peak RSS growth, last result."""
    times, cpu, peaks, result = [], [], [], None
    for _ in range(repeat):
        result = None
        _trim()
        base, peak, stop = _rss_bytes(), [0], threading.Event()

        def sample(base: int = base, peak: list[int] = peak, stop: threading.Event = stop) -> None:
            while not stop.wait(0.002):
                peak[0] = max(peak[0], _rss_bytes() - base)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        stop.set()
        sampler.join()
        peaks.append(max(peak[0], _rss_bytes() - base))
    return {
        "seconds_min": min(times),
        "seconds_median": statistics.median(times),
        "seconds_all": times,
        "cpu_seconds_min": min(cpu),  # all threads; robust to load only with --threads 1
        "peak_rss_mb": max(peaks) / 2**20,
        "result": result,
    }


def merge(a: dict[str, object] | None, b: dict[str, object]) -> dict[str, object]:
    """Combine two ``measure`` results (more repeats of the same call)."""
    if a is None:
        return b
    times = [*a["seconds_all"], *b["seconds_all"]]
    return {
        "seconds_min": min(times),
        "seconds_median": statistics.median(times),
        "seconds_all": times,
        "cpu_seconds_min": min(a["cpu_seconds_min"], b["cpu_seconds_min"]),
        "peak_rss_mb": max(a["peak_rss_mb"], b["peak_rss_mb"]),
        "result": b["result"],
    }


def matmul_peak(repeat: int, quick: bool) -> dict[str, float]:
    """GFLOP/s of a square fp32 GEMM and a bf16 GEMM (smaller: emulated bf16 is slow)."""
    out = {}
    for name, dtype, n in (
        ("fp32", torch.float32, 1024 if quick else 3072),
        ("bf16", torch.bfloat16, 256 if quick else 768),
    ):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b  # warm-up
        best = min(timed(lambda a=a, b=b: a @ b) for _ in range(repeat))
        out[f"{name}_gflops"] = 2 * n**3 / best / 1e9
        out[f"{name}_size"] = n
    return out


def load() -> list[float]:
    return list(os.getloadavg())


def top1_agreement(a: Tensor, b: Tensor) -> dict[str, float]:
    return {
        "captions": float((a.argmax(0) == b.argmax(0)).float().mean()),
        "images": float((a.argmax(1) == b.argmax(1)).float().mean()),
    }


def run_shape(args: argparse.Namespace) -> dict[str, object]:
    n_img, n_v, n_cap, n_t, ragged, sample = SHAPES["quick" if args.quick else args.shape]
    n_img, n_cap = args.n_img or n_img, args.n_cap or n_cap
    sample = args.loop_sample if args.loop_sample is not None else sample
    img, im, txt, tm, cap_img = make_tokens(n_img, n_v, n_cap, n_t, args.dim, ragged)
    flops = 2 * n_img * n_cap * n_v * n_t * args.dim
    res: dict[str, object] = {
        "machine": machine(),
        "shape": {
            "n_img": n_img,
            "n_v": n_v,
            "n_cap": n_cap,
            "n_t": n_t,
            "dim": args.dim,
            "ragged": ragged,
            "gflop": flops / 1e9,
        },
        "load_before": load(),
    }
    print(json.dumps(res["machine"]), "\nshape", res["shape"], "load", res["load_before"])
    peak_before = matmul_peak(max(5, args.repeat), args.quick)

    n_loop = n_cap if not sample or sample >= n_cap else sample
    # warm-up on a slice: thread pools, MKL buffers and allocator arenas are set up once per
    # process; without it the first method measured would carry that memory and time
    w_img, w_cap = min(n_img, 64), min(n_cap, 128)
    loop_scores(img[:w_img], im[:w_img], txt[:w_cap], tm[:w_cap])
    fine_grained_scores(img[:w_img], im[:w_img], txt[:w_cap], tm[:w_cap])
    print(f"timing the loop on {n_loop} captions ...", flush=True)
    runs = {"loop": measure(lambda: loop_scores(img, im, txt[:n_loop], tm[:n_loop]), 1)}
    fns = {
        "fp32": lambda: fine_grained_scores(img, im, txt, tm),
        "bf16": lambda: fine_grained_scores(img, im, txt, tm, compute_dtype=torch.bfloat16),
    }
    for rep in range(args.repeat):  # interleaved, so a change of load hits both alike
        print(f"timing fp32 and bf16, round {rep + 1}/{args.repeat} ...", flush=True)
        for name, fn in fns.items():
            runs[name] = merge(runs.get(name), measure(fn, 1))
    # the peak is taken before and after the runs, best of both: load varies while we measure
    peak_after = matmul_peak(max(5, args.repeat), args.quick)
    res["peak"] = {k: max(peak_before[k], peak_after[k]) for k in peak_before}
    res["peak_before_after"] = [peak_before, peak_after]
    print(
        f"measured peak (best of before/after): fp32 {res['peak']['fp32_gflops']:.1f} "
        f"GFLOP/s ({res['peak']['fp32_size']}²), bf16 {res['peak']['bf16_gflops']:.2f} "
        f"GFLOP/s ({res['peak']['bf16_size']}²)"
    )
    scale = n_cap / n_loop  # the loop is linear in captions: extrapolate a sample
    for key in ("seconds_min", "seconds_median", "cpu_seconds_min"):
        runs["loop"][key] *= scale
    runs["loop"]["captions_timed"] = n_loop
    fp32 = runs["fp32"]["result"]
    err = float((runs["loop"]["result"] - fp32[:, :n_loop]).abs().max())
    res["max_abs_diff_fp32_vs_loop"] = err
    res["bf16_top1_agreement"] = top1_agreement(fp32, runs["bf16"]["result"])
    res["rsum"] = {k: recall_metrics(runs[k]["result"], cap_img)["rsum"] for k in ("fp32", "bf16")}
    res["max_abs_diff_bf16_vs_fp32"] = float((runs["bf16"]["result"] - fp32).abs().max())
    loop_s = runs["loop"]["seconds_min"]
    print(
        f"\n{'method':<6} {'s (min)':>9} {'s (med)':>9} {'GFLOP/s':>8} {'× loop':>7} "
        f"{'% peak':>7} {'cpu s':>8} {'peak RSS':>9}"
    )
    for name, r in runs.items():
        r.pop("result")
        r["gflops"] = flops / r["seconds_min"] / 1e9
        r["speedup_vs_loop"] = loop_s / r["seconds_min"]
        r["fraction_of_fp32_peak"] = r["gflops"] / res["peak"]["fp32_gflops"]
        note = f"  (timed on {n_loop} captions)" if name == "loop" and scale != 1 else ""
        print(
            f"{name:<6} {r['seconds_min']:9.2f} {r['seconds_median']:9.2f} "
            f"{r['gflops']:8.1f} {r['speedup_vs_loop']:7.2f} "
            f"{100 * r['fraction_of_fp32_peak']:6.1f}% {r['cpu_seconds_min']:8.2f} "
            f"{r['peak_rss_mb']:7.0f}MB{note}"
        )
    res["runs"] = runs
    res["load_after"] = load()
    agree = res["bf16_top1_agreement"]
    print(
        f"\nfp32 vs loop max |Δ| {err:.2e}; bf16 vs fp32 max |Δ| "
        f"{res['max_abs_diff_bf16_vs_fp32']:.2e}; bf16 top-1 agreement: captions "
        f"{100 * agree['captions']:.1f}%, images {100 * agree['images']:.1f}%; rSum fp32 "
        f"{res['rsum']['fp32']:.1f}, bf16 {res['rsum']['bf16']:.1f}; load after "
        f"{res['load_after']}"
    )
    return res


def run_scaling(args: argparse.Namespace) -> dict[str, object]:
    """fp32 time and peak RSS growth as captions grow (images fixed)."""
    sizes = [int(s) for s in args.sizes.split(",")]
    n_img = args.n_img or (100 if args.quick else 1000)
    img, im, txt, tm, _ = make_tokens(n_img, 49, max(sizes), 16, args.dim, True)
    rows = []
    print(json.dumps(machine()), "load", load())
    for n in sizes:
        if not rows:  # warm-up, as in run_shape
            fine_grained_scores(img[:64], im[:64], txt[:128], tm[:128])
        r = measure(lambda n=n: fine_grained_scores(img, im, txt[:n], tm[:n]), 1)
        r.pop("result")
        gflops = 2 * n_img * n * 49 * 16 * args.dim / r["seconds_min"] / 1e9
        rows.append(
            {
                "n_cap": n,
                "seconds": r["seconds_min"],
                "peak_rss_mb": r["peak_rss_mb"],
                "gflops": gflops,
                "load": load(),
            }
        )
        print(
            f"{n_img} images × {n:>6} captions: {r['seconds_min']:8.2f} s, {gflops:6.1f} "
            f"GFLOP/s, peak RSS +{r['peak_rss_mb']:.0f} MB (scores alone "
            f"{n_img * n * 4 / 2**20:.0f} MB)"
        )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        xs = [r["n_cap"] for r in rows]
        ax1.plot(xs, [r["seconds"] for r in rows], "o-")
        ax1.set(xlabel="captions", ylabel="seconds", title=f"fp32, {n_img} images × 49 patches")
        ax2.plot(xs, [r["peak_rss_mb"] for r in rows], "o-", label="peak RSS growth")
        ax2.plot(xs, [n_img * x * 4 / 2**20 for x in xs], "--", label="score matrix")
        ax2.axhline(DEFAULT_BUDGET_MB, color="grey", ls=":", label="block budget")
        ax2.set(xlabel="captions", ylabel="MB", title="memory")
        ax2.legend()
        fig.suptitle(machine()["cpu_model"])
        fig.tight_layout()
        atomic_write(Path(args.plot), lambda tmp: fig.savefig(tmp, format="png", dpi=120))
        print(f"plot written to {args.plot}")
    return {"machine": machine(), "n_img": n_img, "scaling": rows}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=["default", "flickr", "coco"], default="default")
    p.add_argument("--quick", action="store_true", help="smoke size (100 × 200), seconds")
    p.add_argument("--n-img", type=int, default=None, help="override the shape's images")
    p.add_argument("--n-cap", type=int, default=None, help="override the shape's captions")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3, help="runs of (b), (c), (d): min, median")
    p.add_argument(
        "--loop-sample",
        type=int,
        default=None,
        help="time the loop on this many captions and scale (it is linear in them)",
    )
    p.add_argument("--scaling", action="store_true", help="time and memory as captions grow")
    p.add_argument("--sizes", default="1000,2000,5000,10000,25000", help="captions, --scaling")
    p.add_argument("--plot", default=None, help="PNG path for the --scaling plot")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    add_overwrite_argument(p, "--plot / --json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads first")
    args = p.parse_args(argv)
    refuse_to_overwrite([x for x in (args.plot, args.json) if x], args.overwrite)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.scaling and args.quick and args.sizes == p.get_default("sizes"):
        args.sizes = "200,500,1000"
    res = run_scaling(args) if args.scaling else run_shape(args)
    res["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        write_json(args.json, res)
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
