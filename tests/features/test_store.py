"""``FeatureSet.batch``: the rows the training loop feeds the model."""

from __future__ import annotations

import torch


def test_batch_pairs_each_caption_with_its_image_in_fp32(make_feature_set) -> None:
    fs = make_feature_set(n=10, captions=3)
    idx = torch.tensor([7, 0, 29])  # captions of images 2, 0 and 9
    img_t, img_m, txt_t, txt_m, ids = fs.batch(idx, torch.device("cpu"))
    assert ids.tolist() == [2, 0, 9]
    assert img_t.dtype == txt_t.dtype == torch.float32  # the cache holds float16
    assert torch.equal(img_t, fs.images.tokens[[2, 0, 9]].float())
    assert torch.equal(img_m, fs.images.mask[[2, 0, 9]])
    assert torch.equal(txt_t, fs.texts.tokens[idx].float())
    assert torch.equal(txt_m, fs.texts.mask[idx])


def test_digest_is_the_bits_of_every_feature_tensor(make_feature_set) -> None:
    """Same features, same digest; one changed token value, mask entry or caption-to-image
    link, another digest (what tells one machine's encoders from another's)."""
    a, b = make_feature_set(n=8, captions=2), make_feature_set(n=8, captions=2)
    assert a.digest() == b.digest()
    b.images.tokens[3, 0, 1] += 1
    assert a.digest() != b.digest()
    c = make_feature_set(n=8, captions=2)
    c.texts.mask[0, -1] = ~c.texts.mask[0, -1]
    assert a.digest() != c.digest()
    d = make_feature_set(n=8, captions=2)
    d.caption_image[[0, 2]] = d.caption_image[[2, 0]]
    assert a.digest() != d.digest()


def test_math_mode_is_the_mode_both_parts_were_cached_in(make_feature_set) -> None:
    """One mode when images and captions agree, ``mixed`` when they do not, ``unknown`` for
    features that no cache recorded."""
    fs = make_feature_set(n=4, captions=1)
    assert fs.math_mode() == "unknown"
    fs.meta.update(image_math="native", text_math="native")
    assert fs.math_mode() == "native"
    fs.meta["text_math"] = "avx2-strict"
    assert fs.math_mode() == "mixed"
