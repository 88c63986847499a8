"""The parity step of ``gpu_check.py``: what a user runs on a GPU gives what the CPU gives.

Every function compares one path on ``device`` with the same path on the CPU, on the same
inputs, and returns plain numbers and booleans for the JSON report. In a dry run ``device``
is the CPU itself, so the comparison is trivially equal, but every line still runs (a test
runs the dry run, so this cannot rot). The paths are the ones no CPU test can reach:
scoring and search with a model on the GPU, GPO's accelerator rank weights, reading B's
"pairs" layout, and ``recall_metrics`` on device scores.
"""

from __future__ import annotations

import torch

from picoalign.core.pico import PICOConfig
from picoalign.evaluation.metrics import recall_metrics
from picoalign.model import ModelConfig, PicoAligner
from picoalign.retrieval.index import GalleryIndex


def _inputs(n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Raw backbone-shaped tokens with a planted match (caption i describes image i)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, 9, 24, generator=g)
    txt = img[:, :6, :20] + 0.3 * torch.randn(n, 6, 20, generator=g)
    im = torch.ones(n, 9, dtype=torch.bool)
    tm = torch.arange(6) < torch.randint(2, 7, (n, 1), generator=g)
    return img, im, txt, tm


def _model(scorer: str, reading: str) -> PicoAligner:
    torch.manual_seed(0)
    pico = PICOConfig(reading=reading, warmup_steps=0, feedback_source="batch")
    cfg = ModelConfig(image_dim=24, text_dim=20, embed_dim=16, scorer=scorer, method="pico",
                      pico=pico)  # fmt: skip
    return PicoAligner(cfg)


def model_parity(device: torch.device, n: int) -> dict:
    """Training scores, an update of PICO's state and evaluation scores of the same model on
    ``device`` and on the CPU, per scorer and reading: the largest difference of each."""
    on_cpu = (*_inputs(n), torch.arange(n))
    on_dev = tuple(t.to(device) for t in on_cpu)
    out: dict = {}
    for scorer in ("fine_grained", "gpo", "global"):
        for reading in ("pair", "global"):
            models = (_model(scorer, reading).train(), _model(scorer, reading).to(device).train())
            runs = list(zip(models, (on_cpu, on_dev), strict=True))
            train = [m.training_scores(*m(*x[:4]), x[4]).detach().cpu() for m, x in runs]
            for m, x in runs:  # PICO's statistics from the same batch, in both places
                m.after_step(*(t.detach() for t in m(*x[:4])), x[4])
            evals = [m.eval().scores(*m(*x[:4]), rule="weighted").cpu() for m, x in runs]
            out[f"{scorer}/{reading}"] = {
                "train": float((train[0] - train[1]).abs().max()),
                "p": float((models[0].pico.p - models[1].pico.p.cpu()).abs().max()),
                "eval": float((evals[0] - evals[1]).abs().max()),
            }
    worst = max(v for d in out.values() for v in d.values())
    return {"max_abs_diff": worst, "close": worst < 1e-3, "by_path": out}


def search_parity(device: torch.device, n: int) -> dict:
    """An index searched with queries embedded on ``device`` returns the rows the CPU
    returns (two-stage and exhaustive), and recall_metrics on device scores equals the
    CPU's."""
    img, im, txt, tm = _inputs(n, seed=1)
    cpu = _model("fine_grained", "global").eval()
    dev = _model("fine_grained", "global").to(device).eval()
    gallery, gm = cpu.embed_images(img, im)
    index = GalleryIndex.from_embeddings(gallery, gm)
    q_cpu = cpu.embed_texts(txt, tm)
    q_dev = dev.embed_texts(txt.to(device), tm.to(device))
    same = True
    for kw in ({}, {"exhaustive": True}):
        a = index.search_tokens(*q_cpu, cpu.scores, weights=cpu.eval_weights, k=5, **kw)
        b = index.search_tokens(*q_dev, dev.scores, weights=dev.eval_weights, k=5, **kw)
        same &= [[h.row for h in hs] for hs in a] == [[h.row for h in hs] for hs in b]
    scores = cpu.scores(gallery, gm, *q_cpu)
    r_cpu = recall_metrics(scores, torch.arange(n))
    r_dev = recall_metrics(scores.to(device), torch.arange(n, device=device))
    return {"same_rows": bool(same), "same_recall": r_cpu == r_dev, "queries": n}
