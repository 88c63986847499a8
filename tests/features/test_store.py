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
