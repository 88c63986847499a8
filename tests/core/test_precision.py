"""Scoring inside a caller's autocast region gives the scores of fp32 (the GPU review: the
README's drop-in PICO, used in an AMP loop, scored in bf16 without a word)."""

from __future__ import annotations

import pytest
import torch

from picoalign import PICO, PICOConfig, fine_grained_scores, global_scores, pair_scores


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    img, txt = torch.randn(8, 6, 32, generator=gen), torch.randn(8, 5, 32, generator=gen)
    im, tm = torch.ones(8, 6, dtype=torch.bool), torch.ones(8, 5, dtype=torch.bool)
    im[0, 4:] = tm[1, 3:] = False
    return img, im, txt, tm


@pytest.mark.parametrize("fn", [fine_grained_scores, pair_scores, global_scores])
def test_scores_under_autocast_are_the_fp32_scores(batch, fn) -> None:
    ref = fn(*batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(*batch)
    assert got.dtype == torch.float32 and torch.equal(got, ref)


def test_pico_under_autocast_is_pico_in_fp32(batch) -> None:
    ids = torch.arange(8)
    ref, amp = PICO(PICOConfig(dim=32)), PICO(PICOConfig(dim=32))
    want = ref.training_scores(*batch, ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = amp.training_scores(*batch, ids)
        weighted = amp.eval().scores(*batch, rule="weighted")
    assert torch.equal(got, want)
    assert torch.equal(amp.state_dict()["p"], ref.state_dict()["p"])  # the statistics too
    assert torch.equal(weighted, ref.eval().scores(*batch, rule="weighted"))
