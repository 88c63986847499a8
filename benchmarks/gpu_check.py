"""One command that proves picoalign on a GPU: ``make gpu-check``.

No CUDA path had run when this was written, so this script is the test and the benchmark
of every GPU-relevant path in one go. With no CUDA device it says so and exits 0 (nothing is
measured). On a GPU it measures, prints and writes ``benchmarks/results/gpu_check.json``:

1. the GEMM peak of this GPU in the same run (bf16, and fp32 with TF32 off);
2. ``fine_grained_scores`` on CUDA against the CPU on a structured random set (caption c
   describes image c, words = its patches + noise): the same R@K (ranks), max |Δ|, and
   TFLOP/s of fp32 and bf16 against the measured peaks;
3. one epoch of baseline and PICO training (reading B, feedback) on CUDA with AMP, on
   synthetic cached features, through the real training loop;
4. ViT-B/16 + BERT-base sized towers from ``transformers`` configs with random weights
   (nothing is downloaded): samples/s frozen (towers in inference) and fine-tuned;
5. DDP over NCCL with 2 ranks when there are ≥ 2 GPUs: two steps (the second is PICO's first
   active one), uneven shards through the all-gather, parameters and PICO state checked bit
   for bit across ranks;
6. the COCO-5K evaluation: 5,000 images × 25,000 captions, 49 × ≤ 16 tokens, D = 512, through
   ``blocked_recall_metrics`` + ``fine_grained_scores`` (fp32 and bf16; the figure is the
   scoring and ranking alone, at a 1 GB block budget, not evaluate()'s embedding and 64 MB);
7. parity (``gpu_parity.py``): a model on the GPU against the same model on the CPU, every
   scorer and reading (training scores, PICO's update, weighted evaluation scores), and an
   index searched with queries embedded on the GPU, and ``recall_metrics`` on GPU scores.

A step that fails is recorded with its error and the others still run; the report is
written after every step, so a failure late in the run keeps what was measured before it.
``--dry-run`` runs every step on the CPU at toy sizes (seconds; a test runs it so the script
cannot rot); its figures mean nothing. Sized to finish well under 8 minutes on an H200.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
from torch import Tensor

from _common import add_out_arguments, refuse_to_overwrite
from gpu_parity import model_parity, search_parity
from picoalign.config import load_config
from picoalign.core.losses import TripletLoss
from picoalign.core.pico import PICOConfig
from picoalign.core.similarity import fine_grained_scores, l2_normalize
from picoalign.evaluation.metrics import blocked_recall_metrics, recall_metrics
from picoalign.features.encode import FeatureSet, TokenFeatures
from picoalign.fileio import atomic_write_text
from picoalign.model import ModelConfig, PicoAligner
from picoalign.training.devices import autocast
from picoalign.training.distributed import DistContext, assert_in_sync, wrap_ddp
from picoalign.training.loop import train

RESULTS = Path(__file__).parent / "results" / "gpu_check.json"
NO_GPU = "no CUDA device: nothing measured; these paths are untested"
DDP_TIMEOUT_S = 300  # two toy ranks take seconds; this only bounds a hang

# (GPU size, dry-run size) of every measurement
SIZES = {
    "gemm": (8192, 128),
    "scores": ((1000, 1000), (24, 40)),  # images × captions for the CUDA-vs-CPU check
    "speed": ((2000, 10000), (24, 40)),  # the TFLOP/s measurement
    "train_images": (5000, 20),  # × 5 captions, 80% of them train: an epoch of 20K captions
    "towers_batch": (64, 4),
    "coco": ((5000, 25000), (30, 150)),
    "parity": ((64, 400), (12, 20)),  # (pairs of the model check, queries of the search)
}


def _nvidia_gpu_present() -> bool:
    """An NVIDIA GPU on this machine, whatever torch can see (its device nodes, or the
    driver's tool)."""
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeat: int = 3) -> float:
    """Best wall seconds of ``repeat`` calls after one warm-up, the device synchronised."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def structured_tokens(n_img: int, n_cap: int, *, d: int = 512, n_v: int = 49, n_t: int = 16):
    """Caption c describes image c mod n_img: each word is one of its patches + noise; ragged
    captions (4..n_t words) so the padding path is measured too."""
    g = torch.Generator().manual_seed(0)
    img = l2_normalize(torch.randn(n_img, n_v, d, generator=g))
    own = torch.arange(n_cap) % n_img
    pick = torch.randint(0, n_v, (n_cap, n_t), generator=g)
    txt = img[own.unsqueeze(1), pick] + 0.35 * torch.randn(n_cap, n_t, d, generator=g)
    lengths = torch.randint(4, n_t + 1, (n_cap, 1), generator=g)
    tm = torch.arange(n_t) < lengths
    im = torch.ones(n_img, n_v, dtype=torch.bool)
    return img, im, l2_normalize(txt) * tm.unsqueeze(-1), tm, own


def gemm_peak(device: torch.device, n: int) -> dict[str, float]:
    """TFLOP/s of a square n × n GEMM in bf16 and in fp32 (TF32 off: the fp32 we score in)."""
    out = {}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for name, dt in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            a = torch.randn(n, n, device=device, dtype=dt)
            b = torch.randn(n, n, device=device, dtype=dt)
            out[name] = 2 * n**3 / timed(lambda a=a, b=b: a @ b, device) / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return out


def check_scores(device: torch.device, sizes: dict, peak: dict[str, float]) -> dict:
    """CUDA against CPU on the same tokens: identical ranks (R@K) and the speed."""
    n_img, n_cap = sizes["scores"]
    img, im, txt, tm, own = structured_tokens(n_img, n_cap)
    on = [x.to(device) for x in (img, im, txt, tm)]
    budget = 1024.0 if device.type == "cuda" else 64.0
    cpu = fine_grained_scores(img, im, txt, tm)
    dev = fine_grained_scores(*on, memory_budget_mb=budget).cpu()
    bf16 = fine_grained_scores(*on, memory_budget_mb=budget, compute_dtype=torch.bfloat16).cpu()
    r_cpu, r_dev, r_bf = (recall_metrics(s, own) for s in (cpu, dev, bf16))
    keys = ("r1", "r5", "r10")
    same = all(r_cpu[d][k] == r_dev[d][k] for d in ("i2t", "t2i") for k in keys)
    out = {
        "shape": [n_img, n_cap, 49, 16, 512],
        "recall_cpu": r_cpu,
        "recall_cuda_fp32": r_dev,
        "recall_cuda_bf16": r_bf,
        "same_recall_fp32": same,
        "max_abs_diff_fp32": float((cpu - dev).abs().max()),
        "bf16_top1_agreement": float((cpu.argmax(1) == bf16.argmax(1)).double().mean()),
    }
    n_img, n_cap = sizes["speed"]
    img, im, txt, tm, _ = structured_tokens(n_img, n_cap)
    on = [x.to(device) for x in (img, im, txt, tm)]
    flops = 2 * n_img * n_cap * 49 * 16 * 512
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):

        def run(dt: torch.dtype = dt) -> Tensor:
            return fine_grained_scores(*on, memory_budget_mb=budget, compute_dtype=dt)

        seconds = timed(run, device, repeat=2)
        out[f"{name}_seconds"] = seconds
        out[f"{name}_tflops"] = flops / seconds / 1e12
        out[f"{name}_of_peak"] = out[f"{name}_tflops"] / peak[name]
    out["speed_shape"] = [n_img, n_cap]
    return out


def synthetic_features(n: int, captions: int = 5, *, c_v: int = 1280, c_t: int = 384):
    """Cached-feature shapes of the CPU recipe (49 × 1280 image, ≤ 12 × 384 word tokens) with a
    planted signal; splits 80% train, 10% val, 10% test."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 16, generator=g)
    a, b = torch.randn(16, c_v, generator=g), torch.randn(16, c_t, generator=g)
    img = (z @ a).unsqueeze(1) + 2.0 * torch.randn(n, 49, c_v, generator=g)
    zt = z.repeat_interleave(captions, 0)
    txt = (zt @ b).unsqueeze(1) + 2.0 * torch.randn(n * captions, 12, c_t, generator=g)
    tm = torch.arange(12) < torch.randint(3, 13, (n * captions, 1), generator=g)
    n_train, n_val = int(0.8 * n), n // 10
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val)
    return FeatureSet(
        images=TokenFeatures(img.half(), torch.ones(n, 49, dtype=torch.bool)),
        texts=TokenFeatures((txt * tm.unsqueeze(-1)).half(), tm),
        caption_image=torch.arange(n).repeat_interleave(captions),
        image_keys=[f"img{i}" for i in range(n)],
        captions=[f"caption {j}" for j in range(n * captions)],
        meta={"dataset": "gpu-check"},
        image_splits=splits,
        image_groups=[f"g{i}" for i in range(n)],
    )


def train_epochs(device: torch.device, sizes: dict, dry: bool) -> dict:
    """One epoch per method through the real loop (AMP "auto": bf16 heads on CUDA)."""
    fs = synthetic_features(sizes["train_images"], c_v=64 if dry else 1280, c_t=32 if dry else 384)
    out = {}
    for method in ("baseline", "pico"):
        over = {
            "device": str(device),
            "epochs": 1,
            "batch_size": 10 if dry else 128,
            "progress": False,
            "pico_warmup_epochs": 0,  # PICO's update runs from the first step
            "model.method": method,
            "model.embed_dim": 16 if dry else 512,
            "model.head": "mlp",
            "model.pico.feedback_size": 8 if dry else 32,
        }
        result = train(load_config(None, over), fs, write=False)
        row = result.history[0]
        n = fs.split("train").n_captions
        out[method] = {
            "train_captions": n,
            "seconds": row["seconds"],
            "samples_per_s": n / row["seconds"],
            "val_rsum": row.get("val_rsum"),
            "loss": row["loss"],
        }
    return out


def towers(device: torch.device, batch: int, dry: bool, steps: int = 5) -> dict:
    """ViT-B/16 + BERT-base (random weights) feeding the heads: samples/s frozen and tuned."""
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel

    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    vit_cfg = ViTConfig(**small, intermediate_size=64, image_size=32) if dry else ViTConfig()
    bert_cfg = BertConfig(**small, intermediate_size=64) if dry else BertConfig()
    vit, bert = ViTModel(vit_cfg).to(device), BertModel(bert_cfg).to(device)
    side = vit_cfg.image_size
    model = PicoAligner(
        ModelConfig(
            image_dim=vit_cfg.hidden_size,
            text_dim=bert_cfg.hidden_size,
            embed_dim=16 if dry else 512,
            head="mlp",
            pico=PICOConfig(warmup_steps=0, feedback_source="batch"),
        )
    ).to(device)
    loss_fn = TripletLoss(0.2)
    loss_fn.hardest = True
    pixels = torch.randn(batch, 3, side, side, device=device)
    words = torch.randint(1000, 2000, (batch, 32), device=device)
    ids = torch.arange(batch, device=device)
    out = {"image_tokens": (side // 16) ** 2 + 1, "words": 32, "batch": batch}
    for mode in ("frozen", "finetuned"):
        tuned = mode == "finetuned"
        params = [*model.parameters()] + ([*vit.parameters(), *bert.parameters()] if tuned else [])
        opt = torch.optim.AdamW(params, lr=1e-5)

        def step(tuned: bool = tuned, opt: torch.optim.Optimizer = opt) -> None:
            with torch.set_grad_enabled(tuned), autocast(device, "auto"):
                v = vit(pixel_values=pixels).last_hidden_state
                t = bert(input_ids=words).last_hidden_state
            vm = torch.ones(v.shape[:2], dtype=torch.bool, device=device)
            tm = torch.ones(t.shape[:2], dtype=torch.bool, device=device)
            with autocast(device, "auto"):
                img, im, txt, tm = model(v, vm, t, tm)
            img, txt = img.float(), txt.float()
            loss = loss_fn(model.training_scores(img, im, txt, tm, ids, validate=False), ids)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.after_step(img.detach(), im, txt.detach(), tm, ids, validate=False)

        seconds = timed(lambda: [step() for _ in range(steps)], device, repeat=1)
        out[f"{mode}_samples_per_s"] = batch * steps / seconds
    return out


def _ddp_worker(rank: int, world: int, backend: str, init: str, out_dir: str) -> None:
    """One DDP step on rank ``rank``; uneven shards go through the all-gather padding."""
    import torch.distributed as dist

    torch.set_num_threads(1)  # two ranks share the host's cores
    # a bounded rendezvous: a rank that never arrives fails the check instead of hanging it
    dist.init_process_group(
        backend, init_method=init, rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    try:
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if backend == "nccl":
            torch.cuda.set_device(device)
        ctx = DistContext(rank, world, rank)
        torch.manual_seed(0)  # the same initial weights on every rank
        pico = PICOConfig(warmup_steps=1, feedback_source="batch")
        cfg = ModelConfig(image_dim=24, text_dim=20, embed_dim=16, head="mlp", pico=pico)
        model = PicoAligner(cfg).to(device)
        net = wrap_ddp(model, device, ctx)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        loss_fn = TripletLoss(0.2)
        g = torch.Generator().manual_seed(100 + rank)
        n, width = 5 - rank, 6 - rank  # uneven rows and widths: the padding path
        img_t = torch.randn(n, 7, 24, generator=g).to(device)
        txt_t = torch.randn(n, width, 20, generator=g).to(device)
        img_m = torch.ones(n, 7, dtype=torch.bool, device=device)
        txt_m = torch.ones(n, width, dtype=torch.bool, device=device)
        sizes = [5 - r for r in range(world)]
        ids = torch.arange(n, device=device) + sum(sizes[:rank])
        for _ in range(2):  # the second step is PICO's first active one
            out = net(img_t, img_m, txt_t, txt_m)
            gathered = [ctx.gather(x, sizes, keep_grad=True) for x in (*out, ids)]
            loss = loss_fn(model.training_scores(*gathered, validate=False), gathered[-1])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.after_step(*(x.detach() for x in gathered), validate=False)
        assert_in_sync(ctx, model)  # raises on a rank whose weights or PICO state differ
        Path(out_dir, f"rank{rank}.ok").write_text(str(model.pico.p.sum().item()))
        dist.barrier()  # no rank tears gloo down while its peer still talks (a CI run aborted)
    finally:
        dist.destroy_process_group()


def ddp(dry: bool) -> dict:
    """Two ranks, one process each (NCCL on 2 GPUs; gloo on the CPU in a dry run)."""
    if not dry and torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU: DDP needs 2"}
    import torch.multiprocessing as mp

    backend = "gloo" if dry else "nccl"
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{Path(tmp) / 'rendezvous'}"
        t0 = time.perf_counter()
        # spawn, also in a dry run: a forked child of a parent whose OpenMP pool has run
        # can deadlock in its first parallel region (a CI run hung here with fork)
        args = (2, backend, init, tmp)
        ctx = mp.start_processes(_ddp_worker, args=args, nprocs=2, join=False, start_method="spawn")
        deadline = time.monotonic() + DDP_TIMEOUT_S
        teardown = None
        try:
            while not ctx.join(timeout=5):
                if time.monotonic() > deadline:
                    for proc in ctx.processes:
                        proc.kill()
                    return {
                        "backend": backend,
                        "ranks": 2,
                        "in_sync": False,
                        "error": f"ranks still running after {DDP_TIMEOUT_S} s: killed",
                    }
        except mp.ProcessExitedException as e:
            # each rank writes its .ok after its steps and the sync check: a rank that died
            # after both were written died tearing gloo down (seen once in CI: SIGABRT,
            # "terminate called without an active exception"), not in the checked work
            if not all(Path(tmp, f"rank{r}.ok").is_file() for r in range(2)):
                raise
            teardown = str(e)
        p = [Path(tmp, f"rank{r}.ok").read_text() for r in range(2)]
    return {
        "backend": backend,
        "ranks": 2,
        "in_sync": p[0] == p[1],
        "seconds": time.perf_counter() - t0,
        **({"teardown_error": teardown} if teardown else {}),
    }


def coco_eval(device: torch.device, n_img: int, n_cap: int) -> dict:
    """The COCO-5K protocol's cost: every image against every caption, ranked, as evaluate()
    does it (scores to the host, ranks on the CPU)."""
    img, im, txt, tm, own = structured_tokens(n_img, n_cap)
    on = [x.to(device) for x in (img, im, txt, tm)]
    budget = 1024.0 if device.type == "cuda" else 64.0
    out = {"shape": [n_img, n_cap, 49, 16, 512], "memory_budget_mb": budget}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):

        def scores_fn(rows: Tensor, cols: Tensor, dt: torch.dtype = dt) -> Tensor:
            a, b = rows.to(device), cols.to(device)
            s = fine_grained_scores(
                on[0][a], on[1][a], on[2][b], on[3][b], memory_budget_mb=budget, compute_dtype=dt
            )
            return s.cpu()

        sync(device)
        t0 = time.perf_counter()
        metrics = blocked_recall_metrics(scores_fn, n_img, own)
        out[f"{name}_seconds"] = time.perf_counter() - t0
        out[f"{name}_rsum"] = metrics["rsum"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="every step on the CPU, toy sizes")
    add_out_arguments(ap, None, f"the JSON report (default {RESULTS}; none with --dry-run)")
    args = ap.parse_args(argv)
    dry = args.dry_run
    out = args.out or (None if dry else RESULTS)
    refuse_to_overwrite([out] if out is not None else [], args.overwrite)
    if not dry and not torch.cuda.is_available():
        if torch.version.cuda is None and _nvidia_gpu_present():
            print(
                f"gpu-check: FAILED: this machine has an NVIDIA GPU but torch "
                f"{torch.__version__} is a CPU-only build: install a CUDA build of torch "
                "(the Makefile's install is the CPU wheel) and run it again"
            )
            return 1
        print(NO_GPU)
        return 0
    device = torch.device("cpu" if dry else "cuda")
    sizes = {k: v[1] if dry else v[0] for k, v in SIZES.items()}
    report: dict = {"dry_run": dry, "torch": torch.__version__}
    if not dry:
        report["gpu"] = torch.cuda.get_device_name(device)
        report["gpus"] = torch.cuda.device_count()
    t_start = time.perf_counter()

    def step(name: str, fn: Callable[[], dict]) -> None:
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as e:  # recorded; the other steps still measure what they can
            traceback.print_exc()
            report[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        print(f"[{name}] {time.perf_counter() - t0:.1f} s: {json.dumps(report[name])}", flush=True)
        report["total_seconds"] = time.perf_counter() - t_start
        if out is not None:  # after every step: a later failure keeps these figures
            atomic_write_text(json.dumps(report, indent=2) + "\n", out)

    step("gemm_peak_tflops", lambda: gemm_peak(device, sizes["gemm"]))
    step("fine_grained_scores", lambda: check_scores(device, sizes, report["gemm_peak_tflops"]))
    step("train_one_epoch", lambda: train_epochs(device, sizes, dry))
    step(
        "towers_vit_b16_bert_base",
        lambda: towers(device, sizes["towers_batch"], dry, 1 if dry else 5),
    )
    step("ddp", lambda: ddp(dry))
    step("coco5k_eval", lambda: coco_eval(device, *sizes["coco"]))
    step("model_parity", lambda: model_parity(device, sizes["parity"][0]))
    step("search_parity", lambda: search_parity(device, sizes["parity"][1]))
    if out is not None:
        print(f"wrote {out}")
    failed = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    ok = (
        not failed
        and report["fine_grained_scores"]["same_recall_fp32"]
        and report["ddp"].get("in_sync", True)
        and report["model_parity"]["close"]
        and report["search_parity"]["same_rows"]
        and report["search_parity"]["same_recall"]
    )
    if failed:
        print(f"steps that failed: {', '.join(failed)}")
    print("gpu-check:", "OK" if ok else "FAILED (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
