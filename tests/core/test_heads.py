"""Projection heads (picoalign.core.heads)."""

from __future__ import annotations

import pytest
import torch

from picoalign.core.heads import HEADS, LinearHead, MLPHead

C_V, D = 12, 8


def test_mlp_head_starts_as_its_linear_projection() -> None:
    torch.manual_seed(0)
    head = MLPHead(C_V, D)
    x = torch.randn(3, 4, C_V)
    torch.testing.assert_close(head(x), head.proj(x))
    head(x).sum().backward()  # and the zero-initialised branch still gets gradients
    assert head.mlp[2].weight.grad is not None and head.mlp[2].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_head_maps_tokens_to_the_shared_width(name: str) -> None:
    head = HEADS[name](C_V, D)
    assert head(torch.randn(2, 5, C_V)).shape == (2, 5, D)
    assert {"linear": LinearHead, "mlp": MLPHead}[name] is type(head)
