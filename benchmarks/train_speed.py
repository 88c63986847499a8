"""Training throughput: baseline vs PICO steps/s on cached features, the share of a step that
PICO's update costs, and MiniLM fine-tuning throughput (docs/performance.md).

All variants are timed side by side in one run, interleaved over several rounds (so a load
spike from another process hits them alike), and the median per variant is reported.

    python benchmarks/train_speed.py            # Twemoji-shaped synthetic features, B=128
    python benchmarks/train_speed.py --quick    # smaller, seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch

from picoalign.core.losses import triplet_loss
from picoalign.core.maxmean import sparse_backward
from picoalign.core.pico import PICOConfig
from picoalign.model import ModelConfig, PicoAligner
from picoalign.training.allocator import (
    GLIBC_DEFAULT_BYTES,
    keep_freed_memory,
    set_malloc_thresholds,
)


def make_step(
    method: str,
    pico_kw: dict,
    b: int,
    n_v: int,
    n_t: int,
    c_img: int,
    c_txt: int,
    d: int,
    sparse: bool = False,
) -> tuple[Callable[[], None], Callable[[], float]]:
    """A training step closure and a closure timing only PICO's update for the same batch.
    ``sparse``: the max-mean's sparse backward (``TrainConfig.sparse_backward``)."""
    torch.manual_seed(0)
    model = PicoAligner(
        ModelConfig(
            image_dim=c_img,
            text_dim=c_txt,
            embed_dim=d,
            method=method,
            pico=PICOConfig(dim=d, **pico_kw),
        )
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    img_t = torch.randn(b, n_v, c_img)
    img_m = torch.ones(b, n_v, dtype=torch.bool)
    txt_t = torch.randn(b, n_t, c_txt)
    txt_m = torch.rand(b, n_t) < 0.7
    txt_m[:, 0] = True
    ids = torch.arange(b)
    fb = None
    state: dict[str, float] = {}

    def step() -> None:
        img, im = model.embed_images(img_t, img_m)
        txt, tm = model.embed_texts(txt_t, txt_m)
        with sparse_backward(sparse):
            scores = model.training_scores(img, im, txt, tm, ids, validate=False)  # as the loop
        loss = triplet_loss(scores, ids, margin=0.8)
        opt.zero_grad()
        loss.backward()
        opt.step()
        t0 = time.perf_counter()
        feedback = (img.detach(), im, txt.detach(), tm, ids) if method == "pico" else fb
        model.after_step(img.detach(), im, txt.detach(), tm, ids, feedback=feedback, validate=False)
        state["update"] = time.perf_counter() - t0

    return step, lambda: state.get("update", 0.0)


def make_finetune_step(b: int) -> Callable[[], None]:
    """One MiniLM fine-tuning step (fwd + bwd + AdamW) on b short captions."""
    from picoalign.encoders import create_text_encoder

    enc = create_text_encoder("minilm").train()
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-5)
    captions = [
        f"a small picture of a {w} on a white background"
        for w in ("cat", "dog", "red apple", "green tree", "blue car", "smiling face")
    ] * b
    batch = enc.tokenize(captions[:b])

    def step() -> None:
        tokens, mask = enc(**batch)
        loss = (tokens * mask.unsqueeze(-1)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def make_image_finetune_step(b: int) -> Callable[[], None]:
    """One EfficientNet-Lite0 fine-tuning step (fwd + bwd + AdamW) on b 224² images, through
    ``PicoAligner.forward`` with pixels (BatchNorm frozen, as in training)."""
    from picoalign.model import ModelConfig, PicoAligner

    model = PicoAligner(ModelConfig(method="baseline", finetune_image=True)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pixels = torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    txt = torch.randn(b, 12, 384)
    mask = torch.ones(b, 12, dtype=torch.bool)

    def step() -> None:
        img, im, t, tm = model(None, None, txt, mask, pixels=pixels)
        scores = model.training_scores(img, im, t, tm, torch.arange(b), validate=False)
        loss = -scores.diagonal().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--no-finetune", action="store_true", help="skip the backbone fine-tuning variants"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    b, d = (32, 128) if args.quick else (128, 512)
    shape = {"b": b, "n_v": 49, "n_t": 12, "c_img": 1280, "c_txt": 384, "d": d}
    warm = {"warmup_steps": 0}
    variants = {
        "baseline": make_step("baseline", {}, **shape),
        "pico (reading A, K=8, feedback on 32 pairs)": make_step(
            "pico", {**warm, "reading": "global", "feedback_size": 32}, **shape
        ),
        "pico (reading A, K=8, feedback on 64 pairs)": make_step(
            "pico", {**warm, "reading": "global", "feedback_size": 64}, **shape
        ),
        "pico (reading B training rule)": make_step(
            "pico", {**warm, "reading": "pair", "feedback_size": 32}, **shape
        ),
        "baseline, sparse backward": make_step("baseline", {}, **shape, sparse=True),
        "pico (reading B training rule), sparse backward": make_step(
            "pico", {**warm, "reading": "pair", "feedback_size": 32}, **shape, sparse=True
        ),
    }
    times: dict[str, list[float]] = {}
    updates: dict[str, list[float]] = {}

    def timed(group: dict[str, tuple[Callable[[], None], Callable[[], float]]]) -> None:
        """Warm up, then time ``group`` interleaved over the rounds."""
        for step, _ in group.values():  # warm-up: fill PICO banks, allocate
            for _ in range(2 if args.quick else 9):
                step()
        for _ in range(args.rounds):
            for name, (step, upd) in group.items():
                t0 = time.perf_counter()
                step()
                times.setdefault(name, []).append(time.perf_counter() - t0)
                updates.setdefault(name, []).append(upd())

    keep_freed_memory()  # what picoalign's training and CLI run with
    timed(variants)
    # Then the baseline and reading B with glibc's default thresholds, which hand every large
    # temporary fresh pages (picoalign.training.allocator). A phase of its own: switching the
    # thresholds back and forth would make each mode pay for the other's pages.
    default_alloc = {
        f"{name}, glibc default allocator": variants[name]
        for name in ("baseline", "pico (reading B training rule)")
    }
    if set_malloc_thresholds(GLIBC_DEFAULT_BYTES):
        timed(default_alloc)
        keep_freed_memory()
    variants.update(default_alloc if "baseline, glibc default allocator" in times else {})
    # Backbone fine-tuning is timed after, not interleaved: its large activations disturb the
    # allocator and caches enough to slow the next variant's step (reading B: ≈ 1.8×).
    ft_times: list[float] = []
    ift_times: list[float] = []
    if not args.no_finetune:
        for make, n, out in (
            (make_finetune_step, 32, ft_times),
            (make_image_finetune_step, 16, ift_times),
        ):
            ft = make(n)
            ft()  # warm-up
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                ft()
                out.append(time.perf_counter() - t0)
            del ft
    rows = []
    for name in variants:
        phase = "baseline, glibc default allocator" if name in default_alloc else "baseline"
        base = statistics.median(times[phase])  # × base: against its own phase's baseline
        t = statistics.median(times[name])
        u = statistics.median(updates[name])
        rows.append(
            {
                "variant": name,
                "step_s": t,
                "steps_per_s": 1 / t,
                "samples_per_s": b / t,
                "vs_baseline": t / base,
                "pico_update_s": u,
                "update_share": u / t,
            }
        )
    for label, n, ts in (
        ("MiniLM fine-tuning (32 captions)", 32, ft_times),
        ("EfficientNet-Lite0 fine-tuning (16 images)", 16, ift_times),
    ):
        if ts:
            t = statistics.median(ts)
            rows.append(
                {"variant": label, "step_s": t, "steps_per_s": 1 / t, "samples_per_s": n / t}
            )
    if args.json:
        print(json.dumps({"shape": shape, "rows": rows}, indent=2))
        return 0
    print(
        f"batch {b}, image tokens 49×1280, caption tokens ≤12×384, D={d}; "
        f"torch threads {torch.get_num_threads()}, median of {args.rounds} interleaved rounds"
    )
    print(
        f"{'variant':56s} {'s/step':>8s} {'steps/s':>8s} {'samples/s':>10s} "
        f"{'× base':>7s} {'update':>8s} {'share':>6s}"
    )
    for r in rows:
        extra = (
            f"{r['vs_baseline']:7.2f} {r['pico_update_s']:8.3f} {r['update_share']:6.1%}"
            if "vs_baseline" in r
            else ""
        )
        print(
            f"{r['variant']:56s} {r['step_s']:8.3f} {r['steps_per_s']:8.2f} "
            f"{r['samples_per_s']:10.1f} {extra}"
        )
    if "baseline, glibc default allocator" in times:
        gain = [
            statistics.median(times[f"{n}, glibc default allocator"]) / statistics.median(times[n])
            for n in ("baseline", "pico (reading B training rule)")
        ]
        print(
            "× base of a glibc-default row is against the baseline of its own phase. "
            f"Keeping freed memory made the baseline step {gain[0]:.2f}× and the reading B "
            f"step {gain[1]:.2f}× faster (the two phases ran one after the other)."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
