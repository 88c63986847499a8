"""Alignment losses on an in-batch score matrix: METHOD.md §7, picoalign.core.losses."""

from __future__ import annotations

import math

import pytest
import torch

from picoalign.core.losses import (
    InfoNCELoss,
    TripletLoss,
    create_loss,
    infonce_loss,
    positive_mask,
    triplet_loss,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# pairs 0 and 1 show the same image (id 5); pair 2 another image
S = torch.tensor([[0.5, 0.7, 0.6], [0.5, 0.9, 0.6], [0.4, 0.8, 0.3]])
IDS = torch.tensor([5, 5, 2])


def test_positive_mask():
    assert positive_mask(IDS).tolist() == [
        [True, True, False],
        [True, True, False],
        [False, False, True],
    ]


def test_triplet_by_hand_with_duplicate_image():
    # margin 0.2, diag = (.5, .9, .3)
    # caption negatives per row:  row 0: col 2 → .2+.6-.5 = .3 (col 1 is a positive)
    #                             row 1: col 2 → .2+.6-.9 < 0 → 0
    #                             row 2: col 0 → .2+.4-.3 = .3, col 1 → .2+.8-.3 = .7
    # image negatives per column: col 0: row 2 → .2+.4-.5 = .1 (row 1 is a positive)
    #                             col 1: row 2 → .2+.8-.9 = .1
    #                             col 2: rows 0, 1 → .2+.6-.3 = .5 each
    total = triplet_loss(S, IDS, margin=0.2, hardest=False)
    assert math.isclose(float(total), 0.3 + 0.3 + 0.7 + 0.1 + 0.1 + 0.5 + 0.5, rel_tol=1e-6)
    hardest = triplet_loss(S, IDS, margin=0.2, hardest=True)
    assert math.isclose(float(hardest), (0.3 + 0 + 0.7) + (0.1 + 0.1 + 0.5), rel_tol=1e-6)
    # if the duplicated image's other caption were a negative, row 0 would add
    # .2+.7-.5 = .4 and column 0 would add .2+.5-.5 = .2: the ids must be used
    diag_only = triplet_loss(S, torch.arange(3), margin=0.2, hardest=False)
    assert math.isclose(float(diag_only), 2.5 + 0.4 + 0.2, rel_tol=1e-6)


def test_triplet_duplicate_gets_no_negative_gradient():
    s = S.clone().requires_grad_(True)
    triplet_loss(s, IDS, margin=0.2, hardest=False).backward()
    assert s.grad[0, 1] == 0 and s.grad[1, 0] == 0  # other caption of the same image
    assert s.grad[0, 2] > 0 and s.grad[2, 1] > 0  # real negatives are pushed down
    assert s.grad[0, 0] < 0 and s.grad[2, 2] < 0  # positives are pulled up


def test_triplet_hardest_picks_only_max():
    s = S.clone().requires_grad_(True)
    triplet_loss(s, IDS, margin=0.2, hardest=True).backward()
    # row 2's hardest caption negative is column 1 (.7), not column 0 (.3); row 2 is also
    # the hardest (only) image negative of columns 0 and 1
    assert s.grad[2, 1] == 2.0  # hardest for row 2 and for column 1
    assert s.grad[2, 0] == 1.0  # hardest for column 0 only


def test_triplet_margin_and_module():
    assert float(triplet_loss(torch.eye(3) * 5, torch.arange(3), margin=0.2)) == 0.0
    assert float(triplet_loss(torch.zeros(3, 3), torch.arange(3), margin=0.2)) == pytest.approx(
        2 * 3 * 0.2
    )
    loss = TripletLoss(margin=0.2)
    assert not loss.hardest  # warm-up: all negatives first
    assert float(loss(S, IDS)) == pytest.approx(float(triplet_loss(S, IDS, hardest=False)))
    loss.hardest = True
    assert float(loss(S, IDS)) == pytest.approx(float(triplet_loss(S, IDS, hardest=True)))


def _ce(logits, target):
    return -logits[target] + math.log(sum(math.exp(x) for x in logits))


def test_infonce_distinct_ids_equals_cross_entropy_by_hand():
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    scale = 7.0
    got = infonce_loss(s, torch.arange(4), scale)
    lg = (s * scale).tolist()
    i2t = sum(_ce(lg[a], a) for a in range(4)) / 4
    t2i = sum(_ce([lg[r][b] for r in range(4)], b) for b in range(4)) / 4
    assert math.isclose(float(got), 0.5 * (i2t + t2i), rel_tol=1e-9)


def test_infonce_masks_other_positives():
    scale = 3.0
    got = infonce_loss(S.double(), IDS, scale)
    lg = (S.double() * scale).tolist()
    # row 0: caption 1 shows the same image → left out of row 0's denominator, etc.
    rows = [_ce([lg[0][0], lg[0][2]], 0), _ce([lg[1][1], lg[1][2]], 0), _ce(lg[2], 2)]
    cols = [
        _ce([lg[0][0], lg[2][0]], 0),
        _ce([lg[1][1], lg[2][1]], 0),
        _ce([lg[0][2], lg[1][2], lg[2][2]], 2),
    ]
    assert math.isclose(float(got), 0.5 * (sum(rows) / 3 + sum(cols) / 3), rel_tol=1e-9)
    assert not math.isclose(float(got), float(infonce_loss(S.double(), torch.arange(3), scale)))


def test_infonce_learnable_temperature_gets_gradient():
    loss = create_loss("infonce", init_temperature=0.1)
    assert isinstance(loss, InfoNCELoss)
    assert float(loss.logit_scale.detach()) == pytest.approx(10.0)
    s = torch.randn(5, 5, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    out = loss(s, torch.arange(5))
    out.backward()
    g = loss.log_scale.grad
    assert g is not None and torch.isfinite(g) and abs(float(g)) > 1e-6
    assert s.grad is not None and s.grad.abs().sum() > 0
    # one optimiser step on the temperature alone lowers the loss
    with torch.no_grad():
        loss.log_scale -= 0.1 * torch.sign(g)
    with torch.no_grad():
        assert float(loss(s.detach(), torch.arange(5))) < float(out.detach())


def test_infonce_scale_clamped():
    loss = InfoNCELoss(init_temperature=1e-4, max_scale=100.0)
    assert float(loss.logit_scale.detach()) == pytest.approx(100.0)


def test_create_loss_and_bad_inputs():
    assert isinstance(create_loss("triplet", margin=0.5), TripletLoss)
    with pytest.raises(ValueError, match="unknown loss"):
        create_loss("hinge")
    with pytest.raises(ValueError, match="scores"):
        triplet_loss(torch.zeros(3, 4), torch.arange(3))
    with pytest.raises(ValueError, match="image_ids"):
        triplet_loss(torch.zeros(3, 3), torch.arange(4))
    with pytest.raises(ValueError, match="image_ids"):
        infonce_loss(torch.zeros(3, 3), torch.zeros(3, 1), 1.0)


@pytest.mark.parametrize("hardest", [True, False])
def test_triplet_gradient_stops_depending_on_the_margin_once_every_hinge_is_active(hardest):
    # why the study found margins 0.8 and 1.2 training the same fine-grained model: cosine
    # scores whose gaps are all below both margins give the same gradient at either margin
    torch.manual_seed(0)
    ids = torch.arange(4)

    def grad(margin: float, scores: torch.Tensor) -> torch.Tensor:
        s = scores.clone().requires_grad_(True)
        triplet_loss(s, ids, margin=margin, hardest=hardest).backward()
        return s.grad

    close = 0.1 * torch.rand(4, 4)  # every gap < 0.1: every hinge active at 0.8 and 1.2
    assert torch.equal(grad(0.8, close), grad(1.2, close))
    apart = close + torch.eye(4)  # positives 1 above the negatives: active at 1.2 only
    assert not torch.equal(grad(0.8, apart), grad(1.2, apart))


@pytest.mark.parametrize("margin", [float("nan"), -0.1])
def test_a_margin_that_would_give_nan_or_nothing_is_refused(margin: float) -> None:
    scores, ids = torch.randn(3, 3), torch.arange(3)
    with pytest.raises(ValueError, match="margin must be a number >= 0"):
        triplet_loss(scores, ids, margin=margin)


def test_triplet_of_an_empty_batch_is_zero_and_ids_must_be_a_tensor():
    """The re-test: B = 0 failed inside amax, and a list of ids with an AttributeError."""
    scores = torch.zeros(0, 0, requires_grad=True)
    loss = triplet_loss(scores, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    with pytest.raises(ValueError, match="image_ids must be a tensor"):
        triplet_loss(torch.zeros(2, 2), [0, 1])
