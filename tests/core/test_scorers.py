"""Scorer registry: what each scorer reduces tokens to, and PICO on every scorer."""

from __future__ import annotations

import pytest
import torch

from picoalign.core.estimators import semantic_probability
from picoalign.core.scorers import GPO, SCORERS, create_scorer, list_scorers
from picoalign.core.similarity import fine_grained_scores, global_scores, pool_tokens
from picoalign.model import ModelConfig, PicoAligner

D = 8


def tokens(n: int = 5, t: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm ragged tokens with garbage in the padding (a scorer must ignore it)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, t, D, generator=g), dim=-1)
    mask = torch.arange(t) < torch.randint(1, t + 1, (n, 1), generator=g)
    mask[0] = True
    return torch.where(mask.unsqueeze(-1), x, torch.full_like(x, 9.0)), mask


def test_registry_lists_every_scorer_and_names_choices_on_a_typo() -> None:
    assert list_scorers() == ["fine_grained", "global", "gpo"]
    with pytest.raises(ValueError, match=r"unknown scorer 'gp0'.*fine_grained"):
        create_scorer("gp0", D)
    for name in list_scorers():
        assert SCORERS[name].name == name


def test_fine_grained_keeps_every_token_and_global_pools_to_one() -> None:
    x, m = tokens()
    fx, fm = create_scorer("fine_grained", D)(x, m)
    assert fx is x and fm is m
    gx, gm = create_scorer("global", D)(x, m)
    assert gx.shape == (5, 1, D) and gm.shape == (5, 1) and bool(gm.all())
    torch.testing.assert_close(gx[:, 0], pool_tokens(x, m))
    # scale ½: the max-mean of one token each is twice the cosine
    scale = SCORERS["global"].scale
    y, ym = tokens(7, 4, seed=1)
    hy, hym = create_scorer("global", D)(y, ym)
    got = fine_grained_scores(gx, gm, hy, hym) * scale
    torch.testing.assert_close(got, global_scores(x, m, y, ym))


def test_gpo_starts_as_mean_pooling_ignores_padding_and_can_learn_max_pooling() -> None:
    torch.manual_seed(0)
    gpo = GPO(D)
    x, m = tokens()
    px, pm = gpo(x, m)
    assert px.shape == (5, 1, D) and bool(pm.all())
    # zero output layer → uniform θ over the real tokens: the mean of sorted values = mean
    torch.testing.assert_close(px[:, 0], pool_tokens(x, m))
    theta = gpo.rank_weights(m.sum(1), m.shape[1])
    torch.testing.assert_close(theta.sum(1), torch.ones(5))
    assert torch.all(theta[~(torch.arange(6) < m.sum(1, keepdim=True))] == 0)
    # what sits in the padding never matters
    x2 = torch.where(m.unsqueeze(-1), x, -x)
    torch.testing.assert_close(gpo(x2, m)[0], px)
    # gradients reach the weight generator (zero-initialised, it must still learn)
    gpo(x, m)[0][:, 0, 0].sum().backward()
    assert gpo.out.weight.grad is not None and bool(gpo.out.weight.grad.abs().sum() > 0)
    # with all weight on the top rank the operator is max pooling (of the real tokens)
    gpo.rank_weights = lambda lengths, width: torch.eye(width)[[0] * len(lengths)]
    maxpool = x.masked_fill(~m.unsqueeze(-1), float("-inf")).amax(1)
    torch.testing.assert_close(gpo(x, m)[0][:, 0], torch.nn.functional.normalize(maxpool, dim=-1))


def test_gpo_is_deterministic_and_batch_independent() -> None:
    torch.manual_seed(0)
    gpo = GPO(D)
    torch.nn.init.normal_(gpo.out.weight)  # a non-trivial θ
    x, m = tokens(6, 6, seed=3)
    whole = gpo(x, m)[0]
    parts = torch.cat([gpo(x[i : i + 2], m[i : i + 2])[0] for i in range(0, 6, 2)])
    torch.testing.assert_close(whole, parts)  # θ depends on each sample's length only


def make(scorer: str, method: str, **pico) -> PicoAligner:
    torch.manual_seed(0)
    cfg = ModelConfig(
        image_encoder="random-conv",
        text_encoder="hash-text",
        image_dim=12,
        text_dim=10,
        embed_dim=D,
        scorer=scorer,
        method=method,
        pico={"warmup_steps": 0, "feedback_size": 4, **pico},
    )
    return PicoAligner(cfg)


@pytest.mark.parametrize("scorer", ["fine_grained", "global", "gpo"])
@pytest.mark.parametrize("reading", ["global", "pair"])
def test_pico_trains_and_scores_on_every_scorer(scorer: str, reading: str) -> None:
    model = make(scorer, "pico", reading=reading, eval_score="weighted")
    g = torch.Generator().manual_seed(1)
    img_t, txt_t = torch.randn(6, 5, 12, generator=g), torch.randn(6, 4, 10, generator=g)
    im, tm = torch.ones(6, 5, dtype=torch.bool), torch.arange(4) < torch.tensor([[4], [2]] * 3)
    ids = torch.arange(6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        img, vm, txt, wm = model(img_t, im, txt_t, tm)
        loss = model.training_scores(img, vm, txt, wm, ids).diagonal().sum()
        opt.zero_grad()
        (-loss).backward()
        opt.step()
        model.after_step(img.detach(), vm, txt.detach(), wm, ids)
    assert int(model.pico.bank_len) == 3 and model.pico.active
    with torch.no_grad():
        img, vm, txt, wm = model(img_t, im, txt_t, tm)
    width = 1 if SCORERS[scorer].pooled else 5
    assert img.shape == (6, width, D)
    for rule in ("plain", "weighted"):
        s = model.scores(img, vm, txt, wm, rule=rule)
        assert s.shape == (6, 6) and bool(torch.isfinite(s).all())
    if SCORERS[scorer].pooled:
        # the pooled reading's statistic: the share of matched pairs with v̄_d t̄_d > 0
        p = semantic_probability(img, vm, txt, wm, estimator="sign", positives="aligned")
        q = ((img[:, 0] * txt[:, 0]) > 0).float().mean(0)
        torch.testing.assert_close(p, (2 * q - 1).clamp(0, 1))


def test_weighted_rule_needs_a_pico_model_and_rules_are_checked() -> None:
    model = make("global", "baseline")
    x, m = tokens()
    px, pm = model.scorer(x, m)
    with pytest.raises(ValueError, match="needs a PICO model"):
        model.scores(px, pm, px, pm, rule="weighted")
    with pytest.raises(ValueError, match="rule must be one of"):
        model.scores(px, pm, px, pm, rule="fancy")


def test_gpo_model_saves_and_loads_bit_exactly(tmp_path) -> None:
    model = make("gpo", "pico")
    torch.nn.init.normal_(model.scorer.out.weight)
    model.save(tmp_path / "m")
    loaded = PicoAligner.load(tmp_path / "m")
    assert loaded.config == model.config and isinstance(loaded.scorer, GPO)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_model_config_checks_scorer_and_legacy_global_method() -> None:
    with pytest.raises(ValueError, match="scorer must be one of"):
        ModelConfig(scorer="cosine")
    legacy = ModelConfig(method="global")
    assert (legacy.method, legacy.scorer) == ("baseline", "global")
    with pytest.raises(ValueError, match="contradicts scorer 'gpo'"):
        ModelConfig(method="global", scorer="gpo")
