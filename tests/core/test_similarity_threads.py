"""The multi-threaded (no-autograd) path of fine_grained_scores agrees with the reference."""

import pytest
import torch

from picoalign.core.similarity import fine_grained_scores, l2_normalize
from reference_scores import naive_fine_grained_scores


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _tokens(n, t, d, seed):
    g = torch.Generator().manual_seed(seed)
    x = l2_normalize(torch.randn(n, t, d, generator=g))
    m = torch.rand(n, t, generator=g) < 0.7
    m[:, 0] = True
    return x, m


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_threaded_blocks_match_naive_and_restore_threads(two_threads, dtype):
    img, im = _tokens(23, 7, 16, 0)
    txt, tm = _tokens(31, 5, 16, 1)
    ref = naive_fine_grained_scores(img, im, txt, tm)
    with torch.no_grad():
        s = fine_grained_scores(img, im, txt, tm, compute_dtype=dtype, memory_budget_mb=0.01)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert torch.allclose(s.double(), ref, atol=tol)
    assert torch.get_num_threads() == 2


def test_threaded_equals_single_thread_under_inference_mode(two_threads):
    img, im = _tokens(19, 6, 12, 2)
    txt, tm = _tokens(17, 4, 12, 3)
    with torch.inference_mode():
        multi = fine_grained_scores(img, im, txt, tm, memory_budget_mb=0.01)
    torch.set_num_threads(1)
    with torch.no_grad():
        single = fine_grained_scores(img, im, txt, tm, memory_budget_mb=0.01)
    assert torch.allclose(multi, single, atol=1e-6)
