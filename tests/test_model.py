"""PicoAligner: heads, scoring rule per method, PICO state, save/load (tiny dims, CPU)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from picoalign.core.heads import LinearHead, MLPHead
from picoalign.core.pico import PICOConfig
from picoalign.core.similarity import fine_grained_scores, global_scores, l2_normalize
from picoalign.data.base import DataError
from picoalign.model import ModelConfig, PicoAligner

# tiny tensors: one intra-op thread avoids thread hand-offs that dominate on a loaded CPU
pytestmark = pytest.mark.usefixtures("torch_single_thread")

C_V, C_T, D = 10, 7, 8


def make_model(method: str = "pico", head: str = "mlp", seed: int = 0, **pico) -> PicoAligner:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        image_encoder="random-conv",
        text_encoder="hash-text",
        image_dim=C_V,
        text_dim=C_T,
        embed_dim=D,
        head=head,
        method=method,
        pico=PICOConfig(**pico),
    )
    model = PicoAligner(cfg)
    if head == "mlp":  # the MLP branch starts at zero: make it count in these tests
        for h in (model.image_head, model.text_head):
            torch.nn.init.normal_(h.mlp[2].weight, std=0.3)
    return model


def raw_batch(n_img: int = 5, n_txt: int = 7, seed: int = 1):
    """Backbone features with ragged masks and large garbage in the padding positions."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n_img, 6, C_V, generator=g)
    txt = torch.randn(n_txt, 4, C_T, generator=g)
    im = torch.arange(6) < torch.randint(1, 7, (n_img, 1), generator=g)
    tm = torch.arange(4) < torch.randint(1, 5, (n_txt, 1), generator=g)
    im[0], tm[0] = True, True
    img[~im] = 50.0
    txt[~tm] = -50.0
    return img, im, txt, tm


def embedded(model: PicoAligner, seed: int = 1, n_img: int = 5, n_txt: int = 7):
    img, im, txt, tm = raw_batch(n_img, n_txt, seed)
    with torch.no_grad():
        return (*model.embed_images(img, im), *model.embed_texts(txt, tm))


def activate_pico(model: PicoAligner, steps: int = 4) -> None:
    """Run PICO updates (warm-up 0) on matched pairs so p and the bank are non-trivial."""
    for s in range(steps):
        img, im, txt, tm = embedded(model, seed=10 + s, n_img=6, n_txt=6)
        model.after_step(img, im, txt, tm, torch.arange(6))


# ---------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, word", [({"method": "fancy"}, "method"), ({"head": "transformer"}, "head")]
)
def test_model_config_rejects_bad_method_and_head(kwargs, word) -> None:
    with pytest.raises(ValueError, match=word):
        ModelConfig(**kwargs)


def test_model_config_syncs_pico_dim_and_accepts_dict() -> None:
    cfg = ModelConfig(embed_dim=24, pico={"tau": 0.5})
    assert isinstance(cfg.pico, PICOConfig)
    assert cfg.pico.dim == 24 and cfg.pico.tau == 0.5
    assert ModelConfig(**json.loads(json.dumps(cfg.to_dict()))) == cfg


# ---------------------------------------------------------------------------------- heads


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_heads_shape_unit_norm_and_zero_padding(head: str) -> None:
    model = make_model("baseline", head)
    assert isinstance(model.image_head, LinearHead if head == "linear" else MLPHead)
    img, im, txt, tm = raw_batch()
    (ei, eim), (et, etm) = model.embed_images(img, im), model.embed_texts(txt, tm)
    assert torch.equal(eim, im) and torch.equal(etm, tm)  # fine-grained: every token scored
    assert ei.shape == (5, 6, D) and et.shape == (7, 4, D)
    assert ei.dtype == torch.float32 and et.dtype == torch.float32
    torch.testing.assert_close(ei[im].norm(dim=-1), torch.ones(int(im.sum())))
    torch.testing.assert_close(et[tm].norm(dim=-1), torch.ones(int(tm.sum())))
    assert torch.all(ei[~im] == 0) and torch.all(et[~tm] == 0)
    # a real token's embedding does not depend on what sits in the padding positions
    img2 = torch.where(im.unsqueeze(-1), img, torch.zeros_like(img))
    torch.testing.assert_close(model.embed_images(img2, im)[0], ei)
    # half-precision inputs (the feature cache stores float16) are accepted
    torch.testing.assert_close(model.embed_images(img.half(), im)[0], ei, atol=2e-3, rtol=0)


# ---------------------------------------------------------------------------------- scoring


def test_global_method_scores_pooled_cosine() -> None:
    model = make_model("global")  # the legacy spelling of method baseline, scorer global
    assert (model.config.method, model.config.scorer) == ("baseline", "global")
    raw_img, raw_im, raw_txt, raw_tm = raw_batch()
    with torch.no_grad():  # the heads' token embeddings, before the scorer pools them
        vi = l2_normalize(model.image_head(raw_img)) * raw_im.unsqueeze(-1)
        vt = l2_normalize(model.text_head(raw_txt)) * raw_tm.unsqueeze(-1)
    expect = global_scores(vi, raw_im, vt, raw_tm)
    img, im, txt, tm = embedded(model)
    assert img.shape == (5, 1, D) and bool(im.all())  # one pooled token per sample
    torch.testing.assert_close(model.scores(img, im, txt, tm), expect)
    torch.testing.assert_close(model.training_scores(img, im, txt, tm, torch.arange(5)), expect)
    assert model.eval_weights is None


def test_baseline_method_is_plain_fine_grained() -> None:
    model = make_model("baseline")
    img, im, txt, tm = embedded(model)
    expect = fine_grained_scores(img, im, txt, tm)
    torch.testing.assert_close(model.scores(img, im, txt, tm), expect)
    torch.testing.assert_close(model.training_scores(img, im, txt, tm, torch.arange(5)), expect)
    assert model.eval_weights is None
    before = {k: v.clone() for k, v in model.pico.state_dict().items()}
    activate_pico(model)  # after_step is a no-op for the baseline
    assert all(torch.equal(v, model.pico.state_dict()[k]) for k, v in before.items())


def test_pico_weighted_global_reading_uses_pico_weights() -> None:
    model = make_model("pico", eval_score="weighted", reading="global", warmup_steps=0)
    activate_pico(model)
    w = model.pico.weights
    assert model.pico.active and not torch.allclose(w, torch.ones(D))  # p is informative
    assert model.eval_weights is not None and torch.equal(model.eval_weights, w)
    img, im, txt, tm = embedded(model)
    got = model.scores(img, im, txt, tm)
    torch.testing.assert_close(got, fine_grained_scores(img, im, txt, tm, w))
    assert not torch.allclose(got, fine_grained_scores(img, im, txt, tm))
    # training uses the weighted score too (train_score="weighted" by default)
    train = model.training_scores(img[:5], im[:5], txt[:5], tm[:5], torch.arange(5))
    torch.testing.assert_close(train, fine_grained_scores(img[:5], im[:5], txt[:5], tm[:5], w))


def test_pico_plain_eval_and_warmup_use_unweighted_scores() -> None:
    plain = make_model("pico", eval_score="plain", warmup_steps=0)
    activate_pico(plain)
    assert plain.eval_weights is None
    img, im, txt, tm = embedded(plain)
    expect = fine_grained_scores(img, im, txt, tm)
    torch.testing.assert_close(plain.scores(img, im, txt, tm), expect)
    # during warm-up p ≡ 1 whatever eval_score says
    warm = make_model("pico", eval_score="weighted", warmup_steps=100)
    activate_pico(warm)
    assert not warm.pico.active and torch.equal(warm.pico.weights, torch.ones(D))
    img, im, txt, tm = embedded(warm)
    torch.testing.assert_close(warm.scores(img, im, txt, tm), fine_grained_scores(img, im, txt, tm))


def test_pico_pair_reading_has_no_global_eval_weights() -> None:
    model = make_model("pico", eval_score="weighted", reading="pair", warmup_steps=0)
    activate_pico(model)
    assert model.eval_weights is None  # pair reading: weights depend on the pair
    img, im, txt, tm = embedded(model)
    s = model.scores(img, im, txt, tm)
    assert s.shape == (5, 7) and torch.isfinite(s).all()
    assert not torch.allclose(s, fine_grained_scores(img, im, txt, tm))


def test_after_step_updates_pico_state() -> None:
    model = make_model("pico", warmup_steps=0, bank_size=3)
    activate_pico(model, steps=4)
    assert int(model.pico.steps) == 4 and int(model.pico.bank_len) == 3
    assert not torch.equal(model.pico.p, torch.ones(D))


# ---------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize(
    "method, pico",
    [
        ("baseline", {}),
        ("pico", {"warmup_steps": 0, "eval_score": "weighted"}),
        ("pico", {"warmup_steps": 0, "eval_score": "weighted", "reading": "pair"}),
    ],
)
def test_save_load_round_trip_is_bit_exact(tmp_path: Path, method: str, pico: dict) -> None:
    model = make_model(method, **pico)
    if method == "pico":
        activate_pico(model)
        if pico.get("reading") == "pair":  # moves the pair_scale buffer too
            img, im, txt, tm = embedded(model, n_img=6, n_txt=6)
            model.training_scores(img, im, txt, tm, torch.arange(6))
            assert float(model.pico.pair_scale) != 1.0
    model.save(tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["config.json", "model.safetensors"]  # no temp files left
    loaded = PicoAligner.load(tmp_path / "m")
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    img, im, txt, tm = raw_batch()
    ea, eb = embedded(model), embedded(loaded)
    for x, y in zip(ea, eb, strict=True):
        assert torch.equal(x, y)
    assert torch.equal(model.scores(*ea), loaded.scores(*eb))


def test_load_missing_folder_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing}: checkpoint not found")):
        PicoAligner.load(missing)


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"no_such_option": 1}),
        json.dumps({"method": "fancy"}),
        json.dumps({"pico": 5}),
        json.dumps({"image_dim": "1280"}),  # the re-test's: a raw TypeError from torch
        json.dumps({"text_dim": 0}),
    ],
)
def test_load_bad_config_json_names_the_file(tmp_path: Path, text: str) -> None:
    make_model("baseline").save(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "m" / "config.json"))):
        PicoAligner.load(tmp_path / "m")


def test_a_users_own_loop_gets_its_inputs_checked_and_the_training_loop_skips_it() -> None:
    """The re-test: README offers the model for "your own loop" and says the calls check
    their inputs, but training_scores / after_step hard-coded validate=False, so 8 images
    against 4 captions failed in torch's words."""
    model = make_model("pico", warmup_steps=0)
    img, im, txt, tm = embedded(model, n_img=8, n_txt=4)
    with pytest.raises(ValueError, match="got 8 images and 4 captions"):
        model.training_scores(img, im, txt, tm, torch.arange(8))
    with pytest.raises(ValueError):
        model.after_step(img, im, txt, tm, torch.arange(8))
    img, im, txt, tm = embedded(model, n_img=4, n_txt=4)
    checked = model.training_scores(img, im, txt, tm, torch.arange(4))
    unchecked = model.training_scores(img, im, txt, tm, torch.arange(4), validate=False)
    assert torch.equal(checked, unchecked)


def test_load_corrupt_or_mismatched_weights_names_the_file(tmp_path: Path) -> None:
    make_model("baseline").save(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=re.escape(str(weights))):
        PicoAligner.load(tmp_path / "m")
    # weights of another shape (config says embed_dim=8, weights are 16-dim)
    other = PicoAligner(ModelConfig(image_dim=C_V, text_dim=C_T, embed_dim=16, head="mlp"))
    other.save(tmp_path / "o")
    weights.write_bytes((tmp_path / "o" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=re.escape(str(weights))):
        PicoAligner.load(tmp_path / "m")


@pytest.mark.parametrize("scorer", ["fine_grained", "global", "gpo"])
def test_encode_takes_one_item_or_none_and_scores_them(scorer: str) -> None:
    """encode() just works: a bare caption or image is one item, an empty list no items."""
    from PIL import Image

    torch.manual_seed(0)
    cfg = ModelConfig(image_encoder="random-conv", text_encoder="hash-text", image_dim=32,
                      text_dim=32, embed_dim=16, scorer=scorer)  # fmt: skip
    model = PicoAligner(cfg).eval()
    one, one_m = model.encode_texts("a red circle")
    two, two_m = model.encode_texts(["a red circle", "a blue square"])
    n = int(one_m.sum())
    assert one.shape[0] == 1 and torch.allclose(one[0, :n], two[0, :n], atol=1e-5)
    img, img_m = model.encode_images(Image.new("RGB", (32, 32), (200, 10, 10)))
    assert img.shape[0] == 1
    none, none_m = model.encode_texts([])
    assert none.shape == (0, 0, 16) and none_m.shape == (0, 0) and none_m.dtype == torch.bool
    assert model.scores(img, img_m, none, none_m).shape == (1, 0)
    no_img, no_img_m = model.encode_images([])
    assert model.scores(no_img, no_img_m, two, two_m).shape == (0, 2)


def test_a_fine_tuned_text_backbone_starts_from_what_the_cache_holds(
    tmp_path: Path, write_jsonl_dataset
) -> None:
    """Before any training step, re-encoding the captions (the fine-tuned path of training,
    evaluation and indexes) gives each split's cached caption tokens row for row, with
    several captions per image: captions, cached tokens and caption_image stay paired
    through the splits, so a fine-tuned run starts where a frozen one does."""
    from picoalign.data import load_dataset
    from picoalign.evaluation.evaluate import embed_rows
    from picoalign.features import encode_dataset

    spec = f"jsonl:{write_jsonl_dataset(tmp_path / 'data')}"
    fs = encode_dataset(
        load_dataset(spec), "random-conv", "hash-text", cache_dir=tmp_path / "c", progress=False
    )
    assert len(fs.captions) == 2 * fs.n_images
    cfg = ModelConfig(
        image_encoder="random-conv", text_encoder="hash-text", image_dim=fs.images.dim,
        text_dim=fs.texts.dim, embed_dim=16, finetune_text=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = PicoAligner(cfg).eval()
    for split in ("train", "val", "test"):
        s = fs.split(split)
        live, live_mask = embed_rows(model, s, "captions", slice(None))
        cached, cached_mask = model.embed_texts(s.texts.tokens, s.texts.mask)
        width = live.shape[1]
        assert torch.equal(live_mask, cached_mask[:, :width]), split
        assert not cached_mask[:, width:].any()
        torch.testing.assert_close(live, cached[:, :width], atol=2e-3, rtol=0)  # fp16 cache
    # the check can tell: one caption off (the next image's) is far from the cache
    off, _ = model.encode_texts([*s.captions[2:], *s.captions[:2]])
    w = min(off.shape[1], width)
    assert (off[:, :w] - cached[:, :w]).abs().max() > 0.05


def test_a_loaded_model_is_in_eval_mode_so_dropout_runs_embed_the_same_twice(
    tmp_path: Path,
) -> None:
    """The user report: PicoAligner.load() of a run trained with text_dropout encoded the same
    caption differently on every call (the model came back in training mode)."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        image_encoder="random-conv", text_encoder="hash-text", image_dim=C_V, text_dim=C_T,
        embed_dim=D, text_dropout=0.5, image_dropout=0.5,
    )  # fmt: skip
    PicoAligner(cfg).save(tmp_path / "m")
    loaded = PicoAligner.load(tmp_path / "m")
    assert not loaded.training
    assert all(torch.equal(x, y) for x, y in zip(embedded(loaded), embedded(loaded), strict=True))
    loaded.train()  # and training mode, asked for, does apply the dropout
    assert not all(
        torch.equal(x, y) for x, y in zip(embedded(loaded), embedded(loaded), strict=True)
    )


def test_encode_embeds_in_eval_mode_and_keeps_the_callers_mode(tmp_path: Path) -> None:
    """The API walkthrough: a model in training mode (``from_encoders``, ``train(cfg).model``)
    encoded the same caption and image differently on every call under token dropout, so
    queries searched an index (built in eval mode) with other embeddings each time."""
    torch.manual_seed(0)
    model = PicoAligner.from_encoders(
        "random-conv", "hash-text", embed_dim=D, text_dropout=0.5, image_dropout=0.5
    )
    assert model.training
    photo = tmp_path / "p.png"
    Image.new("RGB", (20, 12), (200, 30, 30)).save(photo)
    for encode, item in ((model.encode_texts, "a red circle"), (model.encode_images, photo)):
        first, again = encode([item]), encode([item])
        assert torch.equal(first[0], again[0])
        model.eval()
        assert torch.equal(encode([item])[0], first[0])  # what eval mode gives
        model.train()
    assert model.training  # the caller's mode is kept


def test_a_pil_image_embeds_as_its_file_does_exif_orientation_included(tmp_path: Path) -> None:
    """A phone photo (EXIF orientation 6) given as a path was turned upright, given as a PIL
    image it was not: the two embeddings differed by 0.27 and search_image missed its match."""
    torch.manual_seed(0)
    model = PicoAligner.from_encoders("random-conv", "hash-text", embed_dim=D)
    im = Image.new("RGB", (40, 20), "white")
    im.paste((200, 0, 0), (0, 0, 10, 20))
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "phone.jpg", exif=exif)
    by_path, _ = model.encode_images([tmp_path / "phone.jpg"])
    with Image.open(tmp_path / "phone.jpg") as opened:
        by_image, _ = model.encode_images([opened])
    assert torch.equal(by_path, by_image)
    noise = Image.effect_noise((400, 300), 80).convert("RGB")  # pixel data past the header
    noise.save(tmp_path / "big.jpg")
    data = (tmp_path / "big.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with Image.open(tmp_path / "cut.jpg") as cut, pytest.raises(DataError, match="image 1: trunc"):
        model.encode_images([tmp_path / "phone.jpg", cut])  # named, not a bare OSError


def test_encode_names_an_item_of_the_wrong_kind(tmp_path: Path) -> None:
    """The user report: encode_texts([None]) and encode_images([array]) failed in the
    tokenizer and in open() with messages that named no item; a folder was "truncated"."""
    import numpy as np

    cfg = ModelConfig(image_encoder="random-conv", text_encoder="hash-text", image_dim=32,
                      text_dim=32, embed_dim=16)  # fmt: skip
    model = PicoAligner(cfg).eval()
    with pytest.raises(TypeError, match=r"texts must be strings: item 1 is NoneType"):
        model.encode_texts(["fine", None])
    with pytest.raises(TypeError, match=r"item 0 is ndarray \(for an array, PIL.Image.fromarray"):
        model.encode_images([np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"image 0: .* is a folder, not an image file"):
        model.encode_images([tmp_path])


def test_encode_checks_batch_size_takes_generators_and_refuses_images_without_a_backbone() -> None:
    """The walkthrough's reports: batch_size=-1 returned no tokens and 0 failed in range();
    a generator had no len(); a model of precomputed features read an image file through a
    backbone its head does not fit (a shape error)."""
    from PIL import Image

    cfg = ModelConfig(image_encoder="random-conv", text_encoder="hash-text", image_dim=32,
                      text_dim=32, embed_dim=16)  # fmt: skip
    model = PicoAligner(cfg).eval()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1"):
            model.encode_texts(["a cat"], batch_size=bad)
        with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1"):
            model.encode_images([Image.new("RGB", (8, 8))], batch_size=bad)
    listed, _ = model.encode_texts(["a cat", "a dog"])
    generated, _ = model.encode_texts(t for t in ["a cat", "a dog"])
    assert torch.equal(listed, generated)
    red = Image.new("RGB", (8, 8), (200, 0, 0))
    assert model.encode_images(iter([red]))[0].shape[0] == 1
    pre = PicoAligner(replace(cfg, image_encoder="precomputed")).eval()
    with pytest.raises(ValueError, match=r"trained on precomputed image features"):
        pre.encode_images([red])


def test_scores_refuse_tokens_of_another_width() -> None:
    """The walkthrough's report: the plain rule scored 128-wide tokens with a 16-wide model
    and returned numbers."""
    cfg = ModelConfig(image_encoder="random-conv", text_encoder="hash-text", image_dim=32,
                      text_dim=32, embed_dim=16)  # fmt: skip
    model = PicoAligner(cfg).eval()
    img, im = model.encode_images([])
    txt, tm = model.encode_texts(["a cat", "a dog"])
    wide = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"txt tokens are 8 wide, this model's embedding space 16"):
        model.scores(torch.randn(1, 3, 16), torch.ones(1, 3, dtype=torch.bool),
                     wide, torch.ones(2, 3, dtype=torch.bool))  # fmt: skip
    assert model.scores(img, im, txt, tm).shape == (0, 2)


def test_encode_says_how_to_fix_a_width_the_config_does_not_match_and_follows_dtype() -> None:
    """The walkthrough's reports: ModelConfig(image_encoder="random-conv") in Python kept
    image_dim=1280 and encoding failed in a matrix product; model.double() failed in
    embed_* (a hard .float())."""
    from PIL import Image

    red = Image.new("RGB", (16, 16), (200, 0, 0))
    wrong = PicoAligner(ModelConfig(image_encoder="random-conv", text_encoder="hash-text")).eval()
    with pytest.raises(ValueError, match=r"image tokens are 32 wide .* ModelConfig\(image_dim=32"):
        wrong.encode_images([red])
    cfg = ModelConfig(image_encoder="random-conv", text_encoder="hash-text", image_dim=32,
                      text_dim=32, embed_dim=16)  # fmt: skip
    model = PicoAligner(cfg).eval().double()
    assert model.encode_texts(["a cat"])[0].dtype == torch.float64
    assert model.encode_images([red])[0].dtype == torch.float64


@pytest.mark.parametrize("scorer", ["fine_grained", "global", "gpo"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_every_scorer_runs_in_a_model_of_another_dtype(scorer: str, dtype: torch.dtype) -> None:
    """The GPU review: PicoAligner(scorer="gpo").to(torch.bfloat16), .half() or .double()
    failed in the GRU ("RNN input dtype (torch.float32) does not match weight dtype")."""
    cfg = ModelConfig(scorer=scorer, image_dim=8, text_dim=8, embed_dim=4)
    model = PicoAligner(cfg).to(dtype)
    gen = torch.Generator().manual_seed(0)
    img, txt = torch.randn(3, 5, 8, generator=gen), torch.randn(3, 4, 8, generator=gen)
    im, tm = torch.ones(3, 5, dtype=torch.bool), torch.ones(3, 4, dtype=torch.bool)
    im[1, 3:] = tm[2, 2:] = False  # ragged: GPO's lengths differ
    ei, et = model.embed_images(img.to(dtype), im), model.embed_texts(txt.to(dtype), tm)
    assert ei[0].dtype == et[0].dtype == dtype
    s = model.training_scores(*ei, *et, torch.arange(3))
    assert s.shape == (3, 3) and torch.isfinite(s).all()
    ref = PicoAligner(cfg)
    ref.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    rf = ref.scores(*ref.embed_images(img.to(dtype).float(), im),
                    *ref.embed_texts(txt.to(dtype).float(), tm))  # fmt: skip
    tol = 1e-5 if dtype == torch.float64 else 0.05  # a low-precision model rounds its heads
    torch.testing.assert_close(model.scores(*ei, *et), rf, atol=tol, rtol=0)


def test_from_encoders_reads_the_widths_and_keeps_the_built_encoders() -> None:
    from PIL import Image

    model = PicoAligner.from_encoders("random-conv", "hash-text", embed_dim=16, scorer="gpo")
    c = model.config
    assert (c.image_dim, c.text_dim, c.embed_dim, c.scorer) == (32, 32, 16, "gpo")
    img, im = model.eval().encode_images([Image.new("RGB", (16, 16), (200, 0, 0))])
    txt, tm = model.encode_texts(["a red square"])
    assert model.scores(img, im, txt, tm).shape == (1, 1)
    with pytest.raises(ValueError, match="has no width before its data"):
        PicoAligner.from_encoders("precomputed", "hash-text")
    # the API walkthrough: a width given by hand was replaced without a word
    with pytest.raises(ValueError, match=r"image_dim=5, but the image encoder 'random-conv'"):
        PicoAligner.from_encoders("random-conv", "hash-text", image_dim=5)
    assert PicoAligner.from_encoders("random-conv", "hash-text", text_dim=32).config.text_dim == 32


def test_save_refuses_a_run_a_data_folder_and_an_existing_model_unless_asked(tmp_path) -> None:
    """The walkthrough's report: model.save("ds") wrote among the user's data files,
    save("runs/x/best") replaced another run's selected model, and save("runs/x") wrote at
    the run's root (load then read best/, not what was just saved); all without a word."""
    model = PicoAligner(ModelConfig(image_dim=8, text_dim=8, embed_dim=4))
    data = tmp_path / "ds"
    data.mkdir()
    (data / "data.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match=r"holds files a saved model does not \(data.jsonl\)"):
        model.save(data)
    assert sorted(p.name for p in data.iterdir()) == ["data.jsonl"]
    run = tmp_path / "run"
    model.save(run / "best")
    (run / "config.yaml").write_text("out: run\n")
    with pytest.raises(ValueError, match=r"holds files a saved model does not \(best, config"):
        model.save(run)
    before = (run / "best" / "model.safetensors").read_bytes()
    other = PicoAligner(ModelConfig(image_dim=8, text_dim=8, embed_dim=4))
    with pytest.raises(ValueError, match="holds a saved model; pass overwrite=True"):
        other.save(run / "best")
    assert (run / "best" / "model.safetensors").read_bytes() == before
    other.save(run / "best", overwrite=True)
    assert (run / "best" / "model.safetensors").read_bytes() != before
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        model.save(tmp_path / "file")


def test_encode_texts_refuses_an_empty_caption() -> None:
    """The walkthrough's report: encode_texts([""]) encoded an empty caption, which the CLI's
    data check refuses."""
    model = PicoAligner.from_encoders("random-conv", "hash-text", embed_dim=8)
    with pytest.raises(ValueError, match=r"texts must not be empty: item 1 is ' '"):
        model.encode_texts(["a red circle", " "])
    assert model.encode_texts([])[0].shape[0] == 0
