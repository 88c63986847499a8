"""``hf:NAME_OR_PATH`` encoders, tested offline with tiny random models saved to tmp_path."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from picoalign.encoders import HFImageEncoder, HFTextEncoder, create_image_encoder
from picoalign.encoders import create_text_encoder as make_text

transformers = pytest.importorskip("transformers")

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "on", "the", "dog"]
TINY = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("vit")
    cfg = transformers.ViTConfig(**TINY, intermediate_size=32, image_size=32, patch_size=8)
    transformers.ViTModel(cfg).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "ViTImageProcessor",
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.25, 0.25, 0.25],
                "size": {"height": 32, "width": 32},
            }
        )
    )
    return str(path)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("bert")
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizer(vocab=str(vocab)).save_pretrained(path)
    cfg = transformers.BertConfig(
        vocab_size=len(VOCAB), intermediate_size=32, max_position_embeddings=64, **TINY
    )
    transformers.BertModel(cfg).save_pretrained(path)
    return str(path)


def _images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (40 + 4 * i, 30), (50 * i, 0, 0)) for i in range(n)]


def test_hf_vit_drops_cls_and_reads_preprocessor(tiny_vit):
    enc = create_image_encoder(f"hf:{tiny_vit}")
    assert isinstance(enc, HFImageEncoder)
    assert enc.dim == 16 and enc.image_size == 32
    assert enc.mean == (0.5, 0.5, 0.5) and enc.std == (0.25, 0.25, 0.25)
    px = enc.preprocess(_images(3))
    assert px.shape == (3, 3, 32, 32)
    tok, mask = enc(px)
    assert tok.shape == (3, 16, 16) and mask.all()  # 4x4 patches, CLS dropped
    full = enc.model(pixel_values=px).last_hidden_state
    assert torch.allclose(tok, full[:, 1:], atol=1e-6)
    assert tiny_vit in enc.cache_key and "transformers=" in enc.cache_key


def test_hf_vit_without_preprocessor_uses_imagenet_defaults(tiny_vit, tmp_path):
    model = transformers.AutoModel.from_pretrained(tiny_vit)
    model.save_pretrained(tmp_path)  # no preprocessor_config.json
    enc = HFImageEncoder(str(tmp_path), drop_prefix=0)
    assert enc.mean == (0.485, 0.456, 0.406) and enc.image_size == 32
    assert enc(enc.preprocess(_images(1)))[0].shape == (1, 17, 16)  # explicit: keep CLS


def test_hf_conv_model_flattens_feature_map(tmp_path):
    cfg = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 12], depths=[1, 1], layer_type="basic"
    )
    transformers.ResNetModel(cfg).save_pretrained(tmp_path)
    enc = create_image_encoder(f"hf:{tmp_path}", image_size=64)
    tok, mask = enc(enc.preprocess(_images(2)))
    assert enc.dim == 12 and tok.shape[0] == 2 and tok.shape[2] == 12 and mask.all()


def test_hf_bert_text_mask_drops_special_keeps_unk(tiny_bert):
    enc = make_text(f"hf:{tiny_bert}", max_length=8)
    assert isinstance(enc, HFTextEncoder) and enc.dim == 16
    batch = enc.tokenize(["a red zebra", "the dog", ""])
    tok, mask = enc(**batch)
    assert tok.shape == (3, 5, 16)
    assert mask.tolist() == [
        [False, True, True, True, False],  # [CLS] a red [UNK] [SEP]
        [False, True, True, False, False],  # [CLS] the dog [SEP] [PAD]
        [True, False, False, False, False],  # empty caption keeps [CLS]
    ]
    keep = make_text(f"hf:{tiny_bert}", drop_special=False)
    assert keep(**keep.tokenize(["a red zebra", "the dog"]))[1].sum() == 9
    long = enc(**enc.tokenize(["a " * 50]))[0]
    assert long.shape[1] == 8  # truncated at max_length


def test_hf_text_is_finetunable(tiny_bert):
    enc = make_text(f"hf:{tiny_bert}")
    enc.train()
    tok, mask = enc(**enc.tokenize(["a red circle", "the dog"]))
    (tok * mask.unsqueeze(-1)).sum().backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_hf_text_model_is_not_an_image_encoder(tiny_bert):
    with pytest.raises(ValueError, match="not a vision model"):
        create_image_encoder(f"hf:{tiny_bert}")


def test_hf_dual_tower_checkpoint_serves_both_sides(tmp_path):
    text = dict(TINY, intermediate_size=32, vocab_size=len(VOCAB), max_position_embeddings=32)
    text.update(bos_token_id=2, eos_token_id=3, pad_token_id=0)
    vision = dict(TINY, intermediate_size=32, image_size=32, patch_size=8)
    cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)
    transformers.CLIPModel(cfg).save_pretrained(tmp_path)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizer(vocab=str(vocab)).save_pretrained(tmp_path)
    img = create_image_encoder(f"hf:{tmp_path}")
    assert img(img.preprocess(_images(2)))[0].shape == (2, 16, 16)
    txt = make_text(f"hf:{tmp_path}")
    tok, mask = txt(**txt.tokenize(["a dog", "the red circle"]))
    assert tok.shape == (2, 5, 16) and mask.sum(1).tolist() == [2, 3]


@pytest.mark.parametrize("given", ["/nonexistent/model", "./no/such", "~/no-such-model-dir"])
def test_a_local_model_path_that_is_not_there_is_named(given: str) -> None:
    """The user report: `--text-encoder hf:/nonexistent/path` gave transformers' "Repo id
    must be in the form 'repo_name'..."."""
    import re

    from picoalign.encoders.hf import check_local_path

    with pytest.raises(FileNotFoundError, match=rf"hf:{re.escape(given)}: no such folder"):
        check_local_path(given)
    check_local_path("sentence-transformers/all-MiniLM-L6-v2")  # a hub name: not checked here


def _no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    import socket

    calls: list[tuple] = []

    def refuse(address: tuple, timeout: float | None = None) -> None:
        calls.append(address)
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return calls


def test_an_uncached_hub_name_offline_fails_at_once_and_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The walkthrough's report: offline, a hub name took about 50 s of transformers' retries
    to fail, with advice about the internet connection. The check fails before transformers
    is asked, and names the way out."""
    from picoalign.encoders import hf

    calls = _no_network(monkeypatch)
    monkeypatch.setattr(hf, "_hub_cached", lambda name: False)
    monkeypatch.setattr(hf, "_transformers", lambda: pytest.fail("transformers was asked"))
    for make in (HFTextEncoder, HFImageEncoder):
        with pytest.raises(OSError, match=r"hf:acme/model: not in the local Hugging Face cache"):
            make("acme/model")
    assert calls and calls[0][0] == "huggingface.co"
    with pytest.raises(OSError, match=r"cannot be reached: Name or service not known.*hf download"):
        hf.check_hub_name("acme/model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls.clear()
    with pytest.raises(OSError, match=r"HF_HUB_OFFLINE is set"):
        hf.check_hub_name("acme/model")
    assert not calls  # offline: no connection tried


def test_hub_check_passes_cached_names_local_folders_and_proxied_machines(
    monkeypatch: pytest.MonkeyPatch, tiny_vit: str
) -> None:
    from picoalign.encoders import hf

    calls = _no_network(monkeypatch)
    hf.check_hub_name(tiny_vit)  # a local folder
    monkeypatch.setattr(hf, "_hub_cached", lambda name: True)
    hf.check_hub_name("acme/model")  # cached
    monkeypatch.setattr(hf, "_hub_cached", lambda name: False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    hf.check_hub_name("acme/model")  # a direct connection says nothing behind a proxy
    assert not calls
    assert not hf._hub_cached("picoalign-tests/surely-not-cached")


def test_a_checkpoint_without_its_pooler_keeps_one_cache_key(tmp_path) -> None:
    """The walkthrough's report: a model saved without its pooler (add_pooling_layer=False)
    got a random pooler on every load; its weights are in the cache key, so every command
    encoded the whole dataset again."""
    vit_cfg = transformers.ViTConfig(**TINY, intermediate_size=32, image_size=32, patch_size=8)
    transformers.ViTModel(vit_cfg, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    bert = tmp_path / "bert"
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizer(vocab=str(tmp_path / "vocab.txt")).save_pretrained(bert)
    cfg = transformers.BertConfig(vocab_size=len(VOCAB), intermediate_size=32, **TINY)
    transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(bert)
    for make, path in ((create_image_encoder, tmp_path / "vit"), (make_text, bert)):
        first, second = make(f"hf:{path}"), make(f"hf:{path}")
        assert first.model.pooler is None
        assert first.cache_key == second.cache_key


def test_a_folder_that_is_not_the_right_model_is_named(tiny_vit, tiny_bert, tmp_path) -> None:
    """The walkthrough's report: a ViT folder as the text encoder, or a folder with no
    config.json, said "Couldn't instantiate the backend tokenizer" or "Should have a
    model_type key"; a folder without tokenizer files trained at chance on all-[UNK] text."""
    with pytest.raises(ValueError, match=r"is not a text model \(ViTConfig\); use it as the image"):
        make_text(f"hf:{tiny_vit}")
    (tmp_path / "empty").mkdir()
    for make in (make_text, create_image_encoder):
        with pytest.raises(FileNotFoundError, match=r"no config\.json: not a Hugging Face model"):
            make(f"hf:{tmp_path / 'empty'}")
    cfg = transformers.BertConfig(vocab_size=len(VOCAB), intermediate_size=32, **TINY)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "notok")  # no tokenizer files
    with pytest.raises(ValueError, match="no usable tokenizer files"):
        make_text(f"hf:{tmp_path / 'notok'}")


def test_an_edited_tokenizer_is_another_cache_key(tiny_bert, tmp_path) -> None:
    """The walkthrough's report: after a broken tokenizer was fixed in place, training read
    the features cached with the broken one (the key held the weights, not the tokenizer)."""
    import shutil

    copy = tmp_path / "bert"
    shutil.copytree(tiny_bert, copy)
    before = make_text(f"hf:{copy}").cache_key
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join([*VOCAB[:5], "dog", "red", *VOCAB[7:]]) + "\n")  # two swapped
    transformers.BertTokenizer(vocab=str(vocab)).save_pretrained(copy)
    assert make_text(f"hf:{copy}").cache_key != before


def test_random_weights_the_features_use_are_warned(tiny_bert, tmp_path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "bert"
    shutil.copytree(tiny_bert, copy)
    weights = load_file(str(copy / "model.safetensors"))
    gone = next(k for k in weights if "attention.self.query.weight" in k)
    del weights[gone]
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=r"1 weights the features use are not in its checkpoint"):
        make_text(f"hf:{copy}")
