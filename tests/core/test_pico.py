"""The PICO module: prototype bank, feedback, momentum, warm-up, scoring rules, state.

METHOD.md §3–7, picoalign.core.pico.
"""

from __future__ import annotations

import math

import pytest
import torch

from picoalign.core.adaptive import pair_adaptive_scores
from picoalign.core.estimators import semantic_probability
from picoalign.core.pico import PICO, PICOConfig
from picoalign.core.similarity import fine_grained_scores

pytestmark = pytest.mark.usefixtures("torch_single_thread")

D = 32
BUFFERS = ("p", "bank", "bank_len", "bank_pos", "omega", "gains", "steps", "pair_scale")


@pytest.fixture
def batches(make_semantic_batch):
    """Factory: a stream of matched-pair batches sharing one set of semantic columns."""
    semantic = make_semantic_batch(2, d=D, seed=12345)[4]

    def make(seed: int, b: int = 16, **kw):
        img, im, txt, tm, _ = make_semantic_batch(b, d=D, seed=seed, semantic=semantic, **kw)
        return img, im, txt, tm

    make.semantic = semantic
    return make


def _p_tilde(batch, **kw):
    return semantic_probability(*batch, **kw)


# ------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("estimator", "signs"),
        ("positives", "best"),
        ("transform", "q"),
        ("gain_normalize", "minmax"),
        ("feedback_metric", "r@1"),
        ("feedback_source", "next"),
        ("reading", "both"),
        ("prior", "zeros"),
        ("train_score", "mixed"),
        ("eval_score", "mixed"),
        ("dim", 0),
        ("bank_size", 0),
        ("momentum", 0.0),
        ("momentum", 1.5),
        ("lam", -0.1),
        ("lam", 1.1),
        ("tau", 0.0),
        ("tau", -1.0),
    ],
)
def test_config_rejects_invalid_values(field, value):
    with pytest.raises(ValueError, match=rf"PICOConfig\.(\w+ and )?{field}"):
        PICOConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [("feedback_size", 0), ("warmup_steps", -1), ("hard_negatives", -1), ("tau", math.nan)],
)
def test_config_rejects_unvalidated_values(field, value):
    with pytest.raises(ValueError, match=field):
        PICOConfig(**{field: value})


def test_config_defaults_valid_and_dict():
    c = PICOConfig(dim=8)
    assert c.to_dict()["dim"] == 8 and c.to_dict()["reading"] == "pair"


# ------------------------------------------------------------------ convergence
@pytest.mark.parametrize("source", ["batch", "heldout"])
@pytest.mark.parametrize(
    ("estimator", "positives"), [("sign", "aligned"), ("magnitude", "aligned"), ("sign", "all")]
)
def test_update_converges_to_semantic_columns(batches, auc, source, estimator, positives):
    cfg = PICOConfig(
        dim=D,
        bank_size=4,
        momentum=0.3,
        feedback=True,
        feedback_source=source,
        feedback_size=16,
        estimator=estimator,
        positives=positives,
    )
    pico = PICO(cfg)
    for step in range(20):
        fb = (*batches(10_000 + step), torch.arange(16))
        pico.update(*batches(step), image_ids=torch.arange(16), feedback=fb)
    assert int(pico.steps) == 20 and int(pico.bank_len) == 4
    assert auc(pico.p, batches.semantic) > 0.95
    assert float(pico.p[batches.semantic].mean() - pico.p[~batches.semantic].mean()) > 0.2
    w = pico.weights
    assert abs(float(w.mean()) - 1) < 1e-5 and auc(w, batches.semantic) > 0.95
    assert abs(float(pico.omega.sum()) - 1) < 1e-5 and torch.all(pico.omega >= 0)
    assert torch.all((pico.p >= 0) & (pico.p <= 1))


def test_renormalize_flag(batches):
    for renorm in (True, False):
        pico = PICO(PICOConfig(dim=D, renormalize=renorm))
        pico.update(*batches(0))
        assert not torch.allclose(pico.p, torch.ones(D))
        expected = pico.p * D / pico.p.sum() if renorm else pico.p
        torch.testing.assert_close(pico.weights, expected)


# ------------------------------------------------------------------------ feedback
def test_feedback_prefers_the_better_prototype(batches):
    """Bank = [prototype of a batch with signal, prototype of a coin-flip batch]; on a hard
    held-out batch the first brings the larger gain and gets the larger weight."""
    hard = (*batches(300, b=32, noise=2.0, style_scale=3.0), torch.arange(32))
    for metric in ("mrr", "rsum", "neg_loss"):
        pico = PICO(PICOConfig(dim=D, bank_size=2, momentum=1.0, feedback_metric=metric))
        pico.update(*batches(100, b=32))
        pico.update(*batches(200, b=32, signal=False), feedback=hard)
        assert float(pico.gains[0]) == 0.0  # p equals the first prototype's 1 − π
        assert float(pico.gains[1]) < 0.0
        # zscore of two gains is (+1, −1): ω = softmax(±1/τ), τ = 1
        torch.testing.assert_close(
            pico.omega, torch.softmax(torch.tensor([1.0, -1.0]), 0), atol=1e-6, rtol=0
        )
        p_new = 1 - (pico.omega.unsqueeze(1) * pico.bank).sum(0)
        torch.testing.assert_close(pico.p, p_new, atol=1e-6, rtol=0)


def test_feedback_source_batch_ignores_heldout(batches):
    hard = (*batches(300, b=32, noise=2.0, style_scale=3.0), torch.arange(32))
    states = []
    for source, fb in (("batch", None), ("batch", hard), ("heldout", hard)):
        pico = PICO(PICOConfig(dim=D, bank_size=3, momentum=0.5, feedback_source=source))
        for s in range(4):
            pico.update(*batches(s), feedback=fb)
        states.append(pico.gains.clone())
    assert torch.equal(states[0], states[1])
    assert not torch.equal(states[0], states[2])  # the held-out batch is really used


def test_feedback_false_gives_uniform_omega(batches):
    hard = (*batches(300, b=32, noise=2.0, style_scale=3.0), torch.arange(32))
    pico = PICO(PICOConfig(dim=D, bank_size=3, momentum=1.0, feedback=False))
    for n in range(1, 6):
        pico.update(*batches(n), feedback=hard)
        k = min(n, 3)
        torch.testing.assert_close(pico.omega[:k], torch.full((k,), 1 / k))
        assert torch.all(pico.omega[k:] == 0) and torch.all(pico.gains == 0)
        torch.testing.assert_close(pico.p, 1 - pico.bank[:k].mean(0), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------- warm-up
def test_warmup_keeps_weights_at_ones(batches):
    w_steps = 3
    pico = PICO(PICOConfig(dim=D, warmup_steps=w_steps, reading="global"))
    batch = batches(0)
    ids = torch.arange(16)
    for step in range(1, w_steps + 1):
        pico.update(*batch)
        assert int(pico.steps) == step and not pico.active
        assert torch.equal(pico.weights, torch.ones(D))
        assert torch.equal(pico.p, torch.ones(D)) and int(pico.bank_len) == 0
        torch.testing.assert_close(
            pico.training_scores(*batch, ids), fine_grained_scores(*batch), atol=0, rtol=0
        )
    pico.update(*batch)
    assert pico.active and int(pico.bank_len) == 1
    assert not torch.allclose(pico.weights, torch.ones(D))
    weighted = fine_grained_scores(*batch, pico.weights)
    torch.testing.assert_close(pico.training_scores(*batch, ids), weighted)


# ------------------------------------------------------------------- bank, momentum
def test_fifo_bank_keeps_last_k_in_order(batches):
    k = 3
    pico = PICO(PICOConfig(dim=D, bank_size=k, momentum=1.0, feedback=False))
    protos = []
    for s in range(7):
        b = batches(s)
        protos.append(1 - _p_tilde(b))
        pico.update(*b)
        n = min(s + 1, k)
        assert int(pico.bank_len) == n
        if s + 1 < k:  # still filling: rows in arrival order
            torch.testing.assert_close(pico.bank[:n], torch.stack(protos), atol=0, rtol=0)
    # full: the ring, read from the write position, is the last k oldest → newest
    assert int(pico.bank_pos) == 7 % k
    ordered = torch.roll(pico.bank, -int(pico.bank_pos), dims=0)
    torch.testing.assert_close(ordered, torch.stack(protos[-k:]), atol=0, rtol=0)


def test_bank_size_one_momentum_one_is_last_batch(batches):
    pico = PICO(PICOConfig(dim=D, bank_size=1, momentum=1.0))
    for s in range(4):
        b = batches(s)
        pico.update(*b)
        torch.testing.assert_close(pico.p, _p_tilde(b), atol=1e-6, rtol=0)
        assert float(pico.omega[0]) == 1.0


def test_momentum(batches):
    m = 0.5
    pico = PICO(PICOConfig(dim=D, bank_size=1, momentum=m))
    b1, b2 = batches(1), batches(2)
    pico.update(*b1)
    pico.update(*b2)
    expected = (1 - m) * ((1 - m) * 1 + m * _p_tilde(b1)) + m * _p_tilde(b2)
    torch.testing.assert_close(pico.p, expected, atol=1e-6, rtol=0)


def test_gather_hook_pools_ranks(batches):
    """DDP: with a gather hook, every rank's statistics are those of the gathered batch."""
    mine, other = batches(1, b=8), batches(2, b=8)
    ids_mine, ids_other = torch.arange(8), torch.arange(8, 16)

    def gather(x):
        for a, b in zip((*mine, ids_mine), (*other, ids_other), strict=True):
            if x.shape == a.shape and x.dtype == a.dtype and torch.equal(x, a):
                return torch.cat([x, b])
        raise AssertionError("gather called on an unexpected tensor")

    cfg = PICOConfig(dim=D, bank_size=2, momentum=0.5, feedback_source="batch")
    ddp, single = PICO(cfg, gather=gather), PICO(cfg)
    full = tuple(torch.cat([a, b]) for a, b in zip(mine, other, strict=True))
    for _ in range(2):
        ddp.update(*mine, image_ids=ids_mine)
        single.update(*full, image_ids=torch.arange(16))
    torch.testing.assert_close(ddp.p, single.p, atol=1e-6, rtol=0)
    torch.testing.assert_close(ddp.omega, single.omega, atol=1e-6, rtol=0)
    assert not torch.allclose(single.p, PICO(cfg).p)


# ------------------------------------------------------------------ scoring rules
def test_scoring_rules_global(batches):
    batch, ids = batches(0), torch.arange(16)
    pico = PICO(PICOConfig(dim=D, reading="global", train_score="weighted", eval_score="weighted"))
    pico.update(*batch)
    weighted = fine_grained_scores(*batch, pico.weights)
    torch.testing.assert_close(pico.training_scores(*batch, ids), weighted)
    torch.testing.assert_close(pico.scores(*batch), weighted)
    plain = PICO(PICOConfig(dim=D, reading="global", train_score="plain", eval_score="plain"))
    plain.load_state_dict(pico.state_dict())
    torch.testing.assert_close(plain.training_scores(*batch, ids), fine_grained_scores(*batch))
    torch.testing.assert_close(plain.scores(*batch), fine_grained_scores(*batch))
    assert (weighted - fine_grained_scores(*batch)).abs().max() > 1e-3


def test_scoring_rules_pair_reading(batches):
    batch, ids = batches(0), torch.arange(16)
    cfg = PICOConfig(dim=D, reading="pair", eval_score="weighted", lam=0.5, hard_negatives=2)
    pico = PICO(cfg)
    pico.update(*batch)
    img = batch[0].clone().requires_grad_(True)
    s = pico.training_scores(img, batch[1], batch[2], batch[3], ids)
    s.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    assert float(pico.pair_scale) != 1.0  # the matched-pair rescaling is tracked
    expected = pair_adaptive_scores(
        *batch, prior=torch.ones(D), lam=0.5, scale=float(pico.pair_scale)
    )
    torch.testing.assert_close(pico.scores(*batch), expected)


# ---------------------------------------------------------------------- state
def _trained(batches, cfg):
    pico = PICO(cfg)
    hard = (*batches(300, noise=2.0, style_scale=3.0), torch.arange(16))
    for s in range(5):
        pico.update(*batches(s), feedback=hard)
    return pico


def _assert_same_state(a: PICO, b: PICO):
    for name in BUFFERS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name


CFG = PICOConfig(dim=D, bank_size=3, momentum=0.5, warmup_steps=1)


def test_state_dict_round_trip(batches):
    pico = _trained(batches, CFG)
    sd = pico.state_dict()
    assert set(BUFFERS) <= set(sd)
    fresh = PICO(CFG)
    assert not torch.equal(fresh.p, pico.p)
    fresh.load_state_dict(sd)
    _assert_same_state(pico, fresh)
    # and the restored module carries on exactly like the original
    nxt = batches(99)
    pico.update(*nxt)
    fresh.update(*nxt)
    _assert_same_state(pico, fresh)


def test_state_dict_safetensors_round_trip(batches, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    pico = _trained(batches, CFG)
    path = tmp_path / "pico.safetensors"
    safetensors_torch.save_file(pico.state_dict(), str(path))
    fresh = PICO(CFG)
    fresh.load_state_dict(safetensors_torch.load_file(str(path)))
    _assert_same_state(pico, fresh)
    assert fresh.active and torch.equal(fresh.weights, pico.weights)


def test_the_drop_in_api_refuses_what_would_make_nan_or_fail_later() -> None:
    """The user report: a caption with no real token gave NaN scores and a NaN loss silently,
    and PICOConfig(dim=256) on 512-d tokens failed only at the next update."""
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(3, 4, 8, generator=g), torch.randn(3, 5, 8, generator=g)
    im, tm = torch.ones(3, 4, dtype=torch.bool), torch.ones(3, 5, dtype=torch.bool)
    pico = PICO(PICOConfig(dim=8, warmup_steps=0))
    assert torch.isfinite(pico.training_scores(img, im, txt, tm, torch.arange(3))).all()
    empty = tm.clone()
    empty[1] = False
    with pytest.raises(ValueError, match="txt_mask: caption 1 has no real token"):
        pico.training_scores(img, im, txt, empty, torch.arange(3))
    with pytest.raises(ValueError, match="txt_mask: caption 1 has no real token"):
        pico.update(img, im, txt, empty, torch.arange(3))
    wide = PICO(PICOConfig(dim=16))
    with pytest.raises(ValueError, match=r"dim=16 \(PICOConfig.dim\) but the tokens have D=8"):
        wide.training_scores(img, im, txt, tm, torch.arange(3))


def test_bf16_tokens_train_through_the_weighted_steps_in_fp32() -> None:
    """The user report: with bf16 tokens the drop-in API's first step worked and the second
    (the first weighted one) failed in scatter_add with a dtype mismatch."""
    from picoalign.core.losses import triplet_loss

    g = torch.Generator().manual_seed(0)
    pico = PICO(PICOConfig(dim=8, warmup_steps=0, reading="pair", train_score="weighted"))
    mask_i, mask_t = torch.ones(4, 5, dtype=torch.bool), torch.ones(4, 6, dtype=torch.bool)
    for _ in range(3):
        img = torch.nn.functional.normalize(torch.randn(4, 5, 8, generator=g), dim=-1)
        txt = torch.nn.functional.normalize(torch.randn(4, 6, 8, generator=g), dim=-1)
        img, txt = img.bfloat16().requires_grad_(), txt.bfloat16().requires_grad_()
        scores = pico.training_scores(img, mask_i, txt, mask_t, torch.arange(4))
        assert scores.dtype == torch.float32
        triplet_loss(scores, torch.arange(4), margin=0.8).backward()
        assert img.grad.dtype == torch.bfloat16 and torch.isfinite(img.grad.float()).all()
        pico.update(img, mask_i, txt, mask_t, torch.arange(4))
    assert pico.active


@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [
        ("feedback", "no", "true or false"),
        ("renormalize", 1, "true or false"),
        ("dim", 32.5, "an integer"),
        ("dim", "32", "an integer"),
        ("bank_size", 2.0, "an integer"),
        ("tau", True, "a number"),
    ],
)
def test_config_checks_types_from_python(field, value, kind):
    """The walkthrough's report: feedback="no" turned feedback on (a truthy string), dim=32.5
    was accepted, bank_size=2.0 failed in torch.zeros."""
    with pytest.raises(ValueError, match=rf"PICOConfig\.{field} must be {kind}, got"):
        PICOConfig(**{field: value})


def test_the_drop_in_api_checks_batches_and_every_scoring_rule() -> None:
    """The walkthrough's reports: mismatched batches and image_ids failed in tensor-size
    messages, an empty batch in a reshape; scores(rule="weighted") returned NaN for NaN
    tokens where the plain rule refused them."""
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(4, 5, 8, generator=g), torch.randn(4, 3, 8, generator=g)
    im, tm = torch.ones(4, 5, dtype=torch.bool), torch.ones(4, 3, dtype=torch.bool)
    pico = PICO(PICOConfig(dim=8, warmup_steps=0))
    with pytest.raises(ValueError, match=r"B >= 1 matched pairs .* got 4 images and 3 captions"):
        pico.training_scores(img, im, txt[:3], tm[:3], torch.arange(3))
    with pytest.raises(ValueError, match=r"image_ids must be a \(4,\) tensor .* got \(3,\)"):
        pico.training_scores(img, im, txt, tm, torch.arange(3))
    with pytest.raises(ValueError, match="got 0 images and 0 captions"):
        pico.update(img[:0], im[:0], txt[:0], tm[:0])
    with pytest.raises(ValueError, match="image_ids must be"):
        pico.update(img, im, txt, tm, [0, 1, 2, 3])
    # None: every pair its own image, as update already read it
    assert torch.equal(
        pico.training_scores(img, im, txt, tm),
        pico.training_scores(img, im, txt, tm, torch.arange(4)),
    )
    pico.update(img, im, txt, tm)
    for rule in ("plain", "weighted"):
        with pytest.raises(ValueError, match="img contains NaN"):
            pico.scores(img * float("nan"), im, txt, tm, rule=rule)
        with pytest.raises(ValueError, match=r"dim=8 \(PICOConfig.dim\) but the tokens have D=4"):
            pico.scores(img[..., :4], im, txt[..., :4], tm, rule=rule)
    assert pico.scores(img, im, txt[:2], tm[:2]).shape == (4, 2)  # a gallery is no batch


def test_a_validation_loss_leaves_the_weighted_scores_as_they_were(batches) -> None:
    """The walkthrough's report: training_scores in eval mode under no_grad (a validation
    loss) moved reading B's pair_scale, so evaluation scores changed with it."""
    pico = PICO(PICOConfig(dim=D, warmup_steps=0, reading="pair", train_score="weighted"))
    for seed in range(2):
        pico.update(*batches(seed), torch.arange(16))
    img, im, txt, tm = batches(7)
    pico.eval()
    before = pico.scores(img, im, txt, tm, rule="weighted")
    with torch.no_grad():
        pico.training_scores(img, im, txt, tm, torch.arange(16))
    assert torch.equal(pico.scores(img, im, txt, tm, rule="weighted"), before)
    pico.train()
    pico.training_scores(img, im, txt, tm, torch.arange(16))
    assert not torch.equal(pico.scores(img, im, txt, tm, rule="weighted"), before)
