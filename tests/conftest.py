"""Shared pytest fixtures. Each owner keeps their fixtures in a delimited block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

# ============================================================================================
# BEGIN method-core fixtures (test_similarity / estimators / feedback / losses / adaptive /
# pico). Factories only: each returns a function so a test chooses its own sizes and seed.
# ============================================================================================


def _ragged_mask(n: int, length: int, gen: torch.Generator, full_first: bool) -> torch.Tensor:
    """(n, length) bool with every row holding 1..length real tokens at the front."""
    lens = torch.randint(1, length + 1, (n,), generator=gen)
    if full_first and n:
        lens[0] = length  # at least one full row, so no block is all-padding by accident
    return torch.arange(length).unsqueeze(0) < lens.unsqueeze(1)


@pytest.fixture
def torch_single_thread():
    """Run a test with one intra-op thread (restored after). The method-core tests use tiny
    tensors, for which thread hand-offs dominate and, on a loaded machine, cost 100×."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_tokens():
    """Factory: random L2-normalised token batches with ragged masks.

    ``make_tokens(n_img, n_v, n_txt, n_t, d, seed=0, dtype=torch.float32, garbage_pad=True)``
    returns ``(img, img_mask, txt, txt_mask)``. Padding positions hold arbitrary finite
    values (not zeros) when ``garbage_pad`` so that a masking mistake changes the result.
    """

    def make(
        n_img: int,
        n_v: int,
        n_txt: int,
        n_t: int,
        d: int,
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        garbage_pad: bool = True,
    ):
        gen = torch.Generator().manual_seed(seed)
        img = torch.randn(n_img, n_v, d, generator=gen, dtype=torch.float64)
        txt = torch.randn(n_txt, n_t, d, generator=gen, dtype=torch.float64)
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        img_mask = _ragged_mask(n_img, n_v, gen, full_first=True)
        txt_mask = _ragged_mask(n_txt, n_t, gen, full_first=True)
        if garbage_pad:  # padded tokens: large-ish finite junk that would dominate a max
            img = torch.where(img_mask.unsqueeze(-1), img, 3.0 * img.abs())
            txt = torch.where(txt_mask.unsqueeze(-1), txt, 3.0 * txt.abs())
        return img.to(dtype), img_mask, txt.to(dtype), txt_mask

    return make


@pytest.fixture
def make_semantic_batch():
    """Factory: matched pairs where some columns carry a shared signal and the rest noise.

    ``make_semantic_batch(b, n_v=6, n_t=5, d=32, seed=0, noise=0.3, style_scale=1.0,
    signal=True, semantic=None)`` returns ``(img, img_mask, txt, txt_mask, semantic)``.
    ``semantic`` is a (d,) bool mask of the signal columns (a random half unless given).
    On a semantic column every token of pair b is z_bd + noise (z shared by the pair's
    image and caption); on a style column every token is independent N(0, style_scale²).
    With ``signal=False`` every column is independent noise (the coin-flip case).
    Tokens are L2-normalised and masks ragged (>= 1 real token per row).
    """

    def make(
        b: int,
        n_v: int = 6,
        n_t: int = 5,
        d: int = 32,
        *,
        seed: int = 0,
        noise: float = 0.3,
        style_scale: float = 1.0,
        signal: bool = True,
        semantic: torch.Tensor | None = None,
    ):
        gen = torch.Generator().manual_seed(seed)
        if semantic is None:
            semantic = torch.zeros(d, dtype=torch.bool)
            semantic[torch.randperm(d, generator=gen)[: d // 2]] = True
        img = style_scale * torch.randn(b, n_v, d, generator=gen)
        txt = style_scale * torch.randn(b, n_t, d, generator=gen)
        if signal:
            k = int(semantic.sum())
            z = torch.randn(b, 1, k, generator=gen)
            img[..., semantic] = z + noise * torch.randn(b, n_v, k, generator=gen)
            txt[..., semantic] = z + noise * torch.randn(b, n_t, k, generator=gen)
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        img_mask = _ragged_mask(b, n_v, gen, full_first=False)
        txt_mask = _ragged_mask(b, n_t, gen, full_first=False)
        return img, img_mask, txt, txt_mask, semantic

    return make


@pytest.fixture
def auc():
    """Factory: ``auc(scores, labels)`` = P(score of a positive > score of a negative),
    ties counting one half (Mann–Whitney rank formula with average ranks)."""

    def compute(scores: torch.Tensor, labels: torch.Tensor) -> float:
        s = scores.double().flatten()
        y = labels.bool().flatten()
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        assert n_pos and n_neg, "AUC needs both classes"
        # average rank of each value (1-based): ties share the mean of their ranks
        less = (s.unsqueeze(0) < s.unsqueeze(1)).sum(1).double()
        equal = (s.unsqueeze(0) == s.unsqueeze(1)).sum(1).double()
        ranks = less + (equal + 1) / 2
        return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))

    return compute


# ============================================================================================
# END method-core fixtures
# ============================================================================================


# ============================================================================================
# BEGIN pipeline fixtures (test_model / config / train / cli / demo / checkpoint).
# ============================================================================================


@pytest.fixture(scope="session")
def make_feature_set():
    """Factory: a synthetic :class:`~picoalign.features.encode.FeatureSet` with a planted signal.

    ``make_feature_set(n=60, captions=2, n_v=6, c_v=16, n_t=5, c_t=12, k=8, noise=0.9,
    seed=0)``: image ``i`` has a latent ``z_i`` (k dims); each of its tokens is ``z_i @ A``
    plus noise and each token of its captions ``z_i @ B`` plus noise, so linear heads can
    learn to align them. Masks are ragged (padding stored as zeros, like the cache), tokens
    are float16 (like the cache), splits are the first half train, a quarter val, the rest
    test.
    """
    from picoalign.features.encode import FeatureSet, TokenFeatures

    def make(
        n: int = 60,
        captions: int = 2,
        n_v: int = 6,
        c_v: int = 16,
        n_t: int = 5,
        c_t: int = 12,
        k: int = 8,
        *,
        noise: float = 0.9,
        seed: int = 0,
    ) -> FeatureSet:
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, k, generator=gen)
        a, b = torch.randn(k, c_v, generator=gen), torch.randn(k, c_t, generator=gen)
        img = (z @ a).unsqueeze(1) + noise * torch.randn(n, n_v, c_v, generator=gen)
        zt = z.repeat_interleave(captions, 0)
        txt = (zt @ b).unsqueeze(1) + noise * torch.randn(n * captions, n_t, c_t, generator=gen)
        img_mask = torch.arange(n_v) < torch.randint(3, n_v + 1, (n, 1), generator=gen)
        txt_mask = torch.arange(n_t) < torch.randint(2, n_t + 1, (n * captions, 1), generator=gen)
        img, txt = img * img_mask.unsqueeze(-1), txt * txt_mask.unsqueeze(-1)
        n_train, n_val = n // 2, n // 4
        splits = ["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val)
        return FeatureSet(
            images=TokenFeatures(img.half(), img_mask),
            texts=TokenFeatures(txt.half(), txt_mask),
            caption_image=torch.arange(n).repeat_interleave(captions),
            image_keys=[f"img{i}" for i in range(n)],
            captions=[f"caption {j} of image {j // captions}" for j in range(n * captions)],
            meta={"dataset": "synthetic"},
            image_splits=splits,
            image_groups=[f"g{i}" for i in range(n)],
        )

    return make


COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "bar"]


def _write_jsonl_dataset(root: Path, n: int = 24) -> Path:
    """``n`` 32x32 drawings, 2 captions each; explicit splits 16 train / 4 val / 4 test."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        color, shape = COLORS[i % len(COLORS)], SHAPES[i % len(SHAPES)]
        img = Image.new("RGB", (32, 32), "white")
        d = ImageDraw.Draw(img)
        box = (4 + i % 5, 4, 26, 28 - i % 4)
        if shape == "circle":
            d.ellipse(box, fill=color)
        elif shape == "triangle":
            d.polygon([(box[0], box[3]), (box[2], box[3]), (16, box[1])], fill=color)
        elif shape == "bar":
            d.rectangle((box[0], 12, box[2], 20), fill=color)
        else:
            d.rectangle(box, fill=color)
        img.save(root / f"img{i}.png")
        split = ("train", "train", "train", "train", "val", "test")[i % 6]
        caps = [f"a {color} {shape}", f"picture {i}: {shape} in {color}"]
        lines.append(json.dumps({"image": f"img{i}.png", "captions": caps, "split": split}))
    path = root / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def write_jsonl_dataset():
    """Function ``write(root, n=24) -> path``: ``n`` 32×32 drawings with 2 captions each in a
    ``data.jsonl`` (explicit splits 16 train / 4 val / 4 test for n=24), for the test encoders."""
    return _write_jsonl_dataset


# ============================================================================================
# END pipeline fixtures
# ============================================================================================
