"""The device path on the ``meta`` device: catches CPU-created tensors and host syncs without a GPU.

Why meta: a meta tensor has a device, shape and dtype but no data. Mixing it with a tensor
created on the CPU raises ("Tensor on device cpu is not on the expected device meta"), exactly
as mixing a CPU tensor with a CUDA one does, and anything that reads a value on the host
(``.item()``, ``int()``, ``float()``, ``bool()``, ``nonzero()``, ``unique()``) raises too —
which on CUDA would be a device sync. So a hot path that runs on meta is device-correct and
sync-free; no op used in it lacks a meta kernel (reading B's chosen pairs and GPO's rank
weights were rewritten to avoid ``nonzero``/``unique`` and packing, which meta cannot run and
which sync on CUDA).

Set-up happens on the CPU (building the model, the optimiser's lazily created state) and the
module is then moved with ``.to("meta")``, as a user moves a model to ``cuda``.
"""

from __future__ import annotations

import pytest
import torch

from picoalign.core.losses import InfoNCELoss, TripletLoss
from picoalign.core.pico import PICO, PICOConfig
from picoalign.core.scorers import SCORERS, create_scorer
from picoalign.core.similarity import fine_grained_scores
from picoalign.model import ModelConfig, PicoAligner
from picoalign.training.distributed import _pad_to

META = torch.device("meta")
B, NV, NT, D = 12, 7, 5, 16


def tokens(n: int, length: int, dim: int = D, *, grad: bool = False):
    """Meta tokens and a meta mask (values unknown: every op must be data-independent)."""
    x = torch.empty(n, length, dim, device=META, requires_grad=grad)
    return x, torch.empty(n, length, dtype=torch.bool, device=META)


def batch(grad: bool = False):
    img, im = tokens(B, NV, grad=grad)
    txt, tm = tokens(B, NT, grad=grad)
    return img, im, txt, tm, torch.empty(B, dtype=torch.long, device=META)


def test_fine_grained_scores_on_meta_with_and_without_autograd() -> None:
    img, im, txt, tm, _ = batch(grad=True)
    w = torch.empty(D, device=META)
    s = fine_grained_scores(img, im, txt, tm, w, validate=False)
    assert s.device == META and s.shape == (B, B)
    s.sum().backward()
    assert img.grad.device == META
    with torch.no_grad():
        assert fine_grained_scores(img, im, txt, tm, validate=False).device == META


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_scorers_reduce_on_meta(name: str) -> None:
    scorer = create_scorer(name, D).to(META)
    x, m = tokens(B, NV, grad=True)
    out, out_m = scorer(x, m)
    assert out.device == out_m.device == META
    out.sum().backward()


@pytest.mark.parametrize("loss", [TripletLoss(0.2), InfoNCELoss()])
def test_losses_on_meta(loss: torch.nn.Module) -> None:
    loss.to(META)
    loss.hardest = True
    scores = torch.empty(B, B, device=META, requires_grad=True)
    value = loss(scores, torch.empty(B, dtype=torch.long, device=META))
    assert value.device == META and value.dim() == 0
    value.backward()


READINGS = [
    {"reading": "global", "feedback_metric": "rsum"},
    {"reading": "global", "feedback_metric": "mrr", "gain_normalize": "none"},
    {"reading": "pair", "feedback_metric": "neg_loss", "prior": "global", "hard_negatives": 3},
    {"reading": "pair", "feedback": False, "train_score": "weighted", "eval_score": "weighted"},
]


@pytest.mark.parametrize("opts", READINGS)
def test_pico_training_scores_and_update_on_meta(opts: dict) -> None:
    """Through warm-up and the first updates after it (the bank filling up, gains and ω of
    a partly filled bank, then a full one), with a held-out feedback batch."""
    pico = PICO(PICOConfig(dim=D, bank_size=3, warmup_steps=1, **opts)).to(META)
    for _ in range(5):
        img, im, txt, tm, ids = batch(grad=True)
        # validate=False as the model calls them: the input check reads values (a sync),
        # like fine_grained_scores' own, and is off in the training loop after its first batch
        scores = pico.training_scores(img, im, txt, tm, ids, validate=False)
        assert scores.device == META
        scores.sum().backward()
        pico.update(img, im, txt, tm, ids, feedback=batch(), validate=False)
    assert all(t.device == META for t in pico.buffers())
    assert pico.active
    if opts["reading"] == "pair":  # evaluation: reading B's blocked scores (validate=False:
        img, im, txt, tm, _ = batch()  # the input check reads values, a sync)
        assert pico.scores(img, im, txt, tm, rule="weighted", validate=False).device == META


def test_all_gather_padding_stays_on_the_tensors_device() -> None:
    x = torch.empty(3, 4, D, device=META)
    padded = _pad_to(x, 5, 6)
    assert padded.device == META and padded.shape == (5, 6, D)
    assert _pad_to(torch.empty(3, dtype=torch.long, device=META), 5, 0).device == META


@pytest.mark.parametrize(
    ("method", "scorer", "reading", "loss"),
    [
        ("pico", "fine_grained", "pair", "triplet"),
        ("pico", "fine_grained", "global", "infonce"),
        ("pico", "gpo", "global", "triplet"),
        ("baseline", "global", "pair", "triplet"),
    ],
)
def test_full_training_step_of_the_aligner_on_meta(
    method: str, scorer: str, reading: str, loss: str
) -> None:
    """forward, training_scores, loss, backward, clipping, optimizer step and after_step —
    the loop's ``_train_step`` on a device, several steps so PICO leaves its warm-up."""
    cfg = ModelConfig(
        image_dim=24,
        text_dim=20,
        embed_dim=D,
        head="mlp",
        scorer=scorer,
        method=method,
        pico=PICOConfig(reading=reading, bank_size=2, warmup_steps=1, hard_negatives=3),
    )
    model = PicoAligner(cfg).to(META)
    loss_fn = (TripletLoss(0.2) if loss == "triplet" else InfoNCELoss()).to(META)
    loss_fn.hardest = True
    params = [p for p in (*model.parameters(), *loss_fn.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    for _ in range(3):
        img_t, img_m = tokens(B, NV, 24)
        txt_t, txt_m = tokens(B, NT, 20)
        ids = torch.empty(B, dtype=torch.long, device=META)
        img, im, txt, tm = model(img_t, img_m, txt_t, txt_m)
        scores = model.training_scores(img, im, txt, tm, ids, validate=False)  # as the loop
        value = loss_fn(scores, ids)
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, 2.0)
        opt.step()
        fb = (*(x.detach() for x in model(*tokens(4, NV, 24), *tokens(4, NT, 20))), ids[:4])
        model.after_step(img.detach(), im, txt.detach(), tm, ids, feedback=fb, validate=False)
    assert all(p.device == META for p in model.parameters())
    assert model.pico.active == (method == "pico")


def test_a_moved_model_runs_its_frozen_backbones_where_its_heads_are() -> None:
    """The GPU review: ``model.to("cuda")`` left the frozen backbones (a plain dict, not
    submodules) on the CPU, so encode_* ran ViT/BERT there, silently."""
    model = PicoAligner.from_encoders("random-conv", "hash-text", embed_dim=D).to(META)
    assert model.backbone("image").device == META
    assert model.backbone("text").device == META
    lazy = PicoAligner(ModelConfig(image_encoder="random-conv", text_encoder="hash-text",
                                   image_dim=32, text_dim=32, embed_dim=D)).to(META)  # fmt: skip
    assert lazy.backbone("image").device == META  # built on first use: moved there too
