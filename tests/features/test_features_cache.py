"""The frozen-feature cache: hits, partial rebuilds, version checks, atomic writes, I/O."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from picoalign.encoders import HashTextEncoder, RandomConvEncoder
from picoalign.features import cache as C
from picoalign.features import encode as F
from picoalign.features.encode import (
    FeatureSet,
    TokenFeatures,
    encode_dataset,
    load_features,
    load_token_features,
    save_features,
)


def counting(encoder):
    """Wrap ``encoder.forward`` to count calls (instance attribute shadows the method)."""
    calls = {"n": 0}
    inner = encoder.forward

    def forward(*args, **kwargs):
        calls["n"] += 1
        return inner(*args, **kwargs)

    encoder.forward = forward
    return calls


def _encode(ds, img, txt, cache_dir, **kw):
    return encode_dataset(ds, img, txt, cache_dir=cache_dir, batch_size=3, progress=False, **kw)


def _files(cache_dir):
    return sorted(p.name for p in (cache_dir / "features").iterdir())


def test_layout_and_padding(toy_dataset, tmp_path):
    fs = _encode(toy_dataset, RandomConvEncoder(), HashTextEncoder(), tmp_path)
    n_cap = toy_dataset.n_captions
    assert fs.images.tokens.shape == (7, 16, 32) and fs.images.tokens.dtype == torch.float16
    assert fs.texts.tokens.shape[0] == n_cap and fs.texts.mask.dtype == torch.bool
    # global max T = the longest caption; shorter ones padded with mask False
    assert fs.texts.tokens.shape[1] == max(len(c.split()) for c in fs.captions) == 11
    assert fs.texts.mask.sum(1).tolist() == [len(c.split()) for c in fs.captions]
    assert fs.captions == [c for it in toy_dataset.items for c in it.captions]
    assert fs.caption_image.tolist() == [
        i for i, it in enumerate(toy_dataset.items) for _ in it.captions
    ]
    assert fs.image_keys == [it.key for it in toy_dataset.items]
    assert fs.image_splits[:3] == ["train", "val", "test"]
    # identical to encoding the caption alone (batching/padding changes nothing)
    enc = HashTextEncoder()
    alone = enc(**enc.tokenize([fs.captions[0]]))[0].half()
    assert torch.equal(fs.texts.tokens[0, : alone.shape[1]], alone[0])


def test_second_call_hits_cache(toy_dataset, tmp_path):
    img, txt = RandomConvEncoder(), HashTextEncoder()
    first = _encode(toy_dataset, img, txt, tmp_path)
    n_img, n_txt = counting(img), counting(txt)
    second = _encode(toy_dataset, img, txt, tmp_path)
    assert n_img["n"] == 0 and n_txt["n"] == 0
    assert torch.equal(first.images.tokens, second.images.tokens)
    assert torch.equal(first.texts.mask, second.texts.mask)
    assert second.meta["image_cache"].endswith(".safetensors")
    assert len(_files(tmp_path)) == 2  # images and texts cached separately


def test_new_text_encoder_reencodes_text_only(toy_dataset, tmp_path):
    img = RandomConvEncoder()
    _encode(toy_dataset, img, HashTextEncoder(seed=0), tmp_path)
    n_img = counting(img)
    txt2 = HashTextEncoder(seed=1)
    n_txt = counting(txt2)
    fs = _encode(toy_dataset, img, txt2, tmp_path)
    assert n_img["n"] == 0 and n_txt["n"] > 0
    assert fs.meta["text_cache_key"] == txt2.cache_key
    assert len(_files(tmp_path)) == 3


def test_changed_weights_are_not_served_stale_features(toy_dataset, tmp_path):
    img, txt = RandomConvEncoder(), HashTextEncoder()
    _encode(toy_dataset, img, txt, tmp_path)
    key = txt.cache_config
    assert txt.cache_config == key  # memoised digest, stable while weights are unchanged
    opt = torch.optim.SGD(txt.parameters(), lr=0.1)
    tok, _ = txt(**txt.tokenize(["a red circle"]))
    tok.sum().backward()
    opt.step()  # "fine-tuning" modifies the weights in place
    assert txt.cache_config != key
    n_img, n_txt = counting(img), counting(txt)
    _encode(toy_dataset, img, txt, tmp_path)
    assert n_img["n"] == 0 and n_txt["n"] > 0


def test_other_dataset_content_is_not_served(make_toy, tmp_path):
    img, txt = RandomConvEncoder(), HashTextEncoder()
    _encode(make_toy(7), img, txt, tmp_path)
    n_img = counting(img)
    fs = _encode(make_toy(5), img, txt, tmp_path)
    assert n_img["n"] > 0 and fs.n_images == 5


def test_version_mismatch_rebuilds_in_place(toy_dataset, tmp_path, monkeypatch, caplog):
    img, txt = RandomConvEncoder(), HashTextEncoder()
    _encode(toy_dataset, img, txt, tmp_path)
    before = _files(tmp_path)
    real = RandomConvEncoder.versions
    monkeypatch.setattr(
        RandomConvEncoder, "versions", lambda self: {**real(self), "torch": "0.0.1"}
    )
    n_img, n_txt = counting(img), counting(txt)
    with caplog.at_level(logging.WARNING, logger="picoalign.features.cache"):
        fs = _encode(toy_dataset, img, txt, tmp_path)
    assert n_img["n"] > 0 and n_txt["n"] == 0
    assert "cache_key" in caplog.text and "versions" in caplog.text
    assert _files(tmp_path) == before  # same file, rewritten
    _, meta = C.read_safetensors(tmp_path / "features" / before[0])
    stored = [m for m in (C.read_safetensors(tmp_path / "features" / f)[1] for f in before)]
    assert any(m["versions"]["torch"] == "0.0.1" for m in stored), meta
    assert fs.meta["image_cache_key"].endswith("torch=0.0.1")
    n_img["n"] = 0
    _encode(toy_dataset, img, txt, tmp_path)  # now a hit again
    assert n_img["n"] == 0


def test_corrupt_cache_is_rebuilt(toy_dataset, tmp_path):
    img, txt = RandomConvEncoder(), HashTextEncoder()
    fs = _encode(toy_dataset, img, txt, tmp_path)
    path = fs.meta["image_cache"]
    with open(path, "r+b") as f:
        f.truncate(100)
    n_img = counting(img)
    again = _encode(toy_dataset, img, txt, tmp_path)
    assert n_img["n"] > 0 and torch.equal(again.images.tokens, fs.images.tokens)


def test_failed_write_leaves_no_temp_file(toy_dataset, tmp_path, monkeypatch):
    def half_written(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt  # as if the run were killed mid-write

    monkeypatch.setattr("picoalign.fileio.save_file", half_written)
    with pytest.raises(KeyboardInterrupt):
        _encode(toy_dataset, RandomConvEncoder(), HashTextEncoder(), tmp_path)
    assert _files(tmp_path) == []
    monkeypatch.undo()
    _encode(toy_dataset, RandomConvEncoder(), HashTextEncoder(), tmp_path)
    assert not [f for f in _files(tmp_path) if f.endswith(".tmp")]


def test_no_cache_and_env_default(toy_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("PICOALIGN_CACHE", str(tmp_path / "env"))
    assert F.default_cache_dir() == tmp_path / "env"
    fs = encode_dataset(toy_dataset, "random-conv", "hash-text", cache_dir=False, progress=False)
    assert fs.meta["image_cache"] is None and not (tmp_path / "env").exists()
    encode_dataset(toy_dataset, "random-conv", "hash-text", progress=False)
    assert len(list((tmp_path / "env" / "features").iterdir())) == 2


def test_encoder_mode_is_restored(toy_dataset):
    img = RandomConvEncoder().train()
    fs = _encode(toy_dataset, img, HashTextEncoder(), False)
    assert img.training and not fs.images.tokens.requires_grad
    assert not torch.is_inference(next(img.parameters()))


def test_precomputed_dataset_goes_through_features(toy_dataset, tmp_path):
    rng = np.random.default_rng(0)
    table = {
        it.key: rng.standard_normal((2 + i % 2, 6)).astype(np.float32)
        for i, it in enumerate(toy_dataset.items)
    }

    def features(keys):
        rows = [table[k] for k in keys]
        out = np.zeros((len(rows), 3, 6), np.float32)
        mask = np.zeros((len(rows), 3), bool)
        for i, r in enumerate(rows):
            out[i, : len(r)], mask[i, : len(r)] = r, True
        return out, mask

    def no_image(item):
        raise AssertionError("precomputed datasets have no images")

    ds = replace(toy_dataset, load=no_image, features=features)
    fs = _encode(ds, "precomputed", HashTextEncoder(), tmp_path)
    assert fs.images.tokens.shape == (7, 3, 6) and fs.images.mask.sum().item() == 7 * 2 + 3
    assert torch.allclose(fs.images.tokens[1, :3].float(), torch.from_numpy(table["k1"]), atol=1e-2)
    assert fs.meta["image_cache"] is None  # already on disk: not cached again
    with pytest.raises(ValueError, match="use the 'precomputed' image encoder"):
        _encode(ds, RandomConvEncoder(), HashTextEncoder(), False)


def test_subset_and_split_remap_captions(toy_dataset):
    fs = _encode(toy_dataset, RandomConvEncoder(), HashTextEncoder(), False)
    sub = fs.subset([5, 1])
    assert sub.image_keys == ["k5", "k1"]
    assert sub.captions == list(toy_dataset.items[5].captions + toy_dataset.items[1].captions)
    assert sub.caption_image.tolist() == [0, 0, 0, 1, 1]
    assert torch.equal(sub.images.tokens[0], fs.images.tokens[5])
    assert torch.equal(sub.texts.tokens[3], fs.texts.tokens[fs.captions.index(sub.captions[3])])
    test = fs.split("test")
    assert test.image_keys == ["k2", "k5"] and set(test.image_splits) == {"test"}
    mask = torch.zeros(fs.n_images, dtype=torch.bool)
    mask[[0, 2]] = True
    assert fs.subset(mask).image_keys == ["k0", "k2"]


def test_save_load_featureset_roundtrip(toy_dataset, tmp_path):
    fs = _encode(toy_dataset, RandomConvEncoder(), HashTextEncoder(), False)
    save_features(fs, tmp_path / "fs.safetensors")
    back = load_features(tmp_path / "fs.safetensors")
    assert isinstance(back, FeatureSet)
    assert torch.equal(back.images.tokens, fs.images.tokens)
    assert torch.equal(back.texts.mask, fs.texts.mask)
    assert torch.equal(back.caption_image, fs.caption_image)
    assert back.captions == fs.captions and back.image_groups == fs.image_groups
    assert back.meta["text_encoder"] == "hash-text"


def test_load_user_token_features(tmp_path):
    arr = np.random.default_rng(0).standard_normal((4, 3, 8)).astype(np.float32)
    arr[1, 2] = 0  # padding row
    np.save(tmp_path / "t.npy", arr)
    tf = load_token_features(tmp_path / "t.npy")
    assert isinstance(tf, TokenFeatures) and tf.tokens.dtype == torch.float16
    assert tf.mask.sum().item() == 11
    np.savez(tmp_path / "g.npz", tokens=arr[:, 0], mask=np.ones((4, 1), bool))
    assert load_token_features(tmp_path / "g.npz").tokens.shape == (4, 1, 8)
    with pytest.raises(ValueError, match=r"expected \.npy"):
        load_token_features(tmp_path / "t.txt")
    pooled = tf.pooled()
    assert pooled.shape == (4, 8) and pooled.dtype == torch.float32


# ------------------------------------------------------------------ chunked writes, resume


class Stop(Exception):
    """Stands for a run stopped during encoding (Ctrl-C, a lost machine)."""


def stopping_after(encoder, n_calls: int):
    """Make ``encoder.forward`` raise after ``n_calls`` calls; returns the call counter."""
    calls = {"n": 0, "stop": n_calls}
    inner = encoder.forward

    def forward(*args, **kwargs):
        if calls["n"] >= calls["stop"]:
            raise Stop
        calls["n"] += 1
        return inner(*args, **kwargs)

    encoder.forward = forward
    return calls


def test_stopped_encoding_resumes_with_only_the_missing_chunks(toy_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(F, "CHUNK_BATCHES", 1)  # one batch (3 images) per chunk: 3 chunks
    ref = _encode(toy_dataset, RandomConvEncoder(), HashTextEncoder(), False)

    img = RandomConvEncoder()
    calls = stopping_after(img, 2)  # two chunks stored, the third batch "crashes"
    with pytest.raises(Stop):
        _encode(toy_dataset, img, HashTextEncoder(), tmp_path)
    (parts,) = [p for p in (tmp_path / "features").iterdir() if p.name.endswith(".parts")]
    assert sorted(p.name for p in parts.iterdir()) == [
        "000000000-000000003.safetensors",
        "000000003-000000006.safetensors",
    ]
    assert not [p for p in tmp_path.rglob("*.tmp")]

    img = RandomConvEncoder()
    calls = counting(img)
    fs = _encode(toy_dataset, img, HashTextEncoder(), tmp_path)
    assert calls["n"] == 1  # only the last chunk (item 6) was encoded again
    assert torch.equal(fs.images.tokens, ref.images.tokens)
    assert torch.equal(fs.images.mask, ref.images.mask)
    assert torch.equal(fs.texts.tokens, ref.texts.tokens)
    # joined into the one cache file; the chunks are gone; the next run is a plain hit
    assert not parts.exists() and not any(
        p.name.endswith(".parts") for p in (tmp_path / "features").iterdir()
    )
    calls = counting(img := RandomConvEncoder())
    again = _encode(toy_dataset, img, HashTextEncoder(), tmp_path)
    assert calls["n"] == 0 and torch.equal(again.images.tokens, ref.images.tokens)


def test_chunks_of_other_content_are_not_reused(toy_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(F, "CHUNK_BATCHES", 1)
    img = RandomConvEncoder()
    stopping_after(img, 2)
    with pytest.raises(Stop):
        _encode(toy_dataset, img, HashTextEncoder(), tmp_path)
    # same file name (same fingerprint), other item keys: every chunk's metadata differs
    items = [replace(it, key=it.key + "-renamed") for it in toy_dataset.items]
    calls = counting(img := RandomConvEncoder())
    _encode(replace(toy_dataset, items=items), img, HashTextEncoder(), tmp_path)
    assert calls["n"] == 3  # 7 images in batches of 3: all encoded, no stale chunk trusted


def test_cache_reports_the_math_mode_it_was_encoded_in(toy_dataset, tmp_path, monkeypatch):
    """A cache keeps the math mode of the process that built it, and a hit reports that mode,
    not the reader's: rows trained on it are bit-identical to others only on the same cache
    (docs/results.md, "Rounding"). Only the env is changed here; MKL reads it at start."""
    monkeypatch.delenv("MKL_CBWR", raising=False)
    first = _encode(toy_dataset, RandomConvEncoder(), HashTextEncoder(), tmp_path)
    assert (first.meta["image_math"], first.meta["text_math"]) == ("native", "native")
    monkeypatch.setenv("MKL_CBWR", "AVX2,STRICT")
    img, txt = RandomConvEncoder(), HashTextEncoder()
    n_img, n_txt = counting(img), counting(txt)
    hit = _encode(toy_dataset, img, txt, tmp_path)
    assert n_img["n"] == 0 and n_txt["n"] == 0  # the mode is reported, not part of the key
    assert (hit.meta["image_math"], hit.meta["text_math"]) == ("native", "native")
    uncached = _encode(toy_dataset, RandomConvEncoder(), HashTextEncoder(), False)
    assert uncached.meta["image_math"] == "avx2-strict"


def test_chunks_stored_in_another_math_mode_are_recomputed(toy_dataset, tmp_path, monkeypatch):
    """A stopped encoding resumed under another math mode starts over, so that one cache file
    holds features of one mode."""
    monkeypatch.setattr(F, "CHUNK_BATCHES", 1)
    monkeypatch.delenv("MKL_CBWR", raising=False)
    img = RandomConvEncoder()
    stopping_after(img, 2)
    with pytest.raises(Stop):
        _encode(toy_dataset, img, HashTextEncoder(), tmp_path)
    monkeypatch.setenv("MKL_CBWR", "AVX2,STRICT")
    img = RandomConvEncoder()
    calls = counting(img)
    fs = _encode(toy_dataset, img, HashTextEncoder(), tmp_path)
    assert calls["n"] == 3  # all three chunks again, none of the native ones reused
    assert fs.meta["image_math"] == "avx2-strict"


def test_a_cache_hit_draws_no_progress_bar(toy_dataset, tmp_path, capsys):
    """A bar is drawn for what is encoded; a hit used to leave a stuck ``0/N`` bar behind."""
    img, txt = RandomConvEncoder(), HashTextEncoder()
    encode_dataset(toy_dataset, img, txt, cache_dir=tmp_path, batch_size=3, progress=True)
    first = capsys.readouterr().err
    assert "images [" in first and "texts [" in first  # encoded: both bars shown
    encode_dataset(toy_dataset, img, txt, cache_dir=tmp_path, batch_size=3, progress=True)
    second = capsys.readouterr().err
    assert "images [" not in second and "texts [" not in second


def test_cache_reports_the_mkl_path_it_was_encoded_on(toy_dataset, tmp_path, monkeypatch):
    """The same math mode rounds differently on an AMD CPU (MKL ignores its AVX2 request
    there), so a cache records the path MKL really ran; a hit reports the builder's path, and
    chunks stored on another path are recomputed, as for another math mode."""
    monkeypatch.setattr(F, "CHUNK_BATCHES", 1)
    monkeypatch.setattr(C, "mkl_branch", lambda: "avx2,strict")
    img = RandomConvEncoder()
    stopping_after(img, 2)
    with pytest.raises(Stop):
        _encode(toy_dataset, img, HashTextEncoder(), tmp_path)
    monkeypatch.setattr(C, "mkl_branch", lambda: "auto,strict")
    calls = counting(img := RandomConvEncoder())
    built = _encode(toy_dataset, img, HashTextEncoder(), tmp_path)
    assert calls["n"] == 3  # no chunk of the other path reused
    assert (built.meta["image_mkl"], built.meta["text_mkl"]) == ("auto,strict", "auto,strict")
    monkeypatch.setattr(C, "mkl_branch", lambda: "avx2,strict")
    calls = counting(img := RandomConvEncoder())
    hit = _encode(toy_dataset, img, HashTextEncoder(), tmp_path)
    assert calls["n"] == 0 and hit.meta["image_mkl"] == "auto,strict"  # reported, not keyed


@pytest.mark.parametrize(
    ("device", "says"),
    [("gpu", "device 'gpu': not a device"), ("meta", "the meta device holds no data")]
    + ([] if torch.cuda.is_available() else [("cuda", "CUDA is not available")]),
)
def test_a_device_the_encoders_cannot_use_is_refused_before_the_data_loads(
    tmp_path, device, says
) -> None:
    """The API walkthrough: ``dataset_features(device="cuda")`` on a machine without CUDA
    failed mid-encode in torch's "Torch not compiled with CUDA enabled" assertion."""
    from picoalign.features import dataset_features

    with pytest.raises(ValueError, match=says):
        dataset_features(f"jsonl:{tmp_path / 'missing.jsonl'}", device=device)
