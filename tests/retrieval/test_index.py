"""Gallery retrieval: index build/load, model refusal, two-stage vs exhaustive, sheets, CLI."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from picoalign.cli.hits import format_hits
from picoalign.cli.retrieval import add_parsers
from picoalign.data import load_dataset
from picoalign.features.encode import encode_dataset
from picoalign.model import ModelConfig, PicoAligner
from picoalign.retrieval import store as index_store
from picoalign.retrieval.build import build_index
from picoalign.retrieval.index import GalleryIndex, Hit, contact_sheet

COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square"]
QUERIES = ["a red circle", "a blue square on white", "green"]


def _write_dataset(root: Path, n: int = 12) -> str:
    lines = []
    for i in range(n):
        color, shape = COLORS[i % 6], SHAPES[(i // 6) % 2]
        img = Image.new("RGB", (40, 36), "white")
        box = (4 + i % 3, 5, 30 + i % 4, 31)
        draw = ImageDraw.Draw(img)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=color)
        img.save(root / f"img{i}.png")
        caps = [f"a {color} {shape}", f"{shape} number {i} in {color}"]
        split = "test" if i % 3 == 0 else "train"
        lines.append(json.dumps({"image": f"img{i}.png", "captions": caps, "split": split}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return f"jsonl:{root / 'data.jsonl'}"


def _model(seed: int = 0, weighted: bool = True) -> PicoAligner:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        image_encoder="random-conv",
        text_encoder="hash-text",
        image_dim=32,
        text_dim=32,
        embed_dim=16,
        method="pico",
    )
    cfg.pico.reading = "global"  # a global p, so the first stage is weighted too
    cfg.pico.eval_score = "weighted" if weighted else "plain"
    model = PicoAligner(cfg).eval()
    gen = torch.Generator().manual_seed(seed + 100)
    model.pico.p.copy_(torch.rand(16, generator=gen) + 0.05)  # a non-uniform, active p
    model.pico.steps.fill_(1)
    model.trained_steps = 1  # stands for a trained model, as its p does
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval")
    spec = _write_dataset(root)
    model = _model()
    assert model.eval_weights is not None  # PICO-weighted scoring: stage 1 uses the weights
    model.save(root / "ckpt")
    fs = encode_dataset(
        load_dataset(spec), "random-conv", "hash-text", cache_dir=root / "cache", progress=False
    )
    return {"root": root, "spec": spec, "model": model, "fs": fs, "ckpt": root / "ckpt"}


def _build(tiny, out: Path, **kw) -> GalleryIndex:
    kw.setdefault("progress", False)
    return build_index(
        tiny["model"], tiny["fs"], dataset_spec=tiny["spec"], checkpoint=tiny["ckpt"], out=out, **kw
    )


def _rows(hits: list[list[Hit]]) -> list[list[int]]:
    return [[h.row for h in hs] for hs in hits]


def _reference_rows(tiny, index: GalleryIndex, queries: list[str]) -> torch.Tensor:
    """Ranking by model.scores over the whole gallery, computed directly (float32 tokens)."""
    model = tiny["model"]
    q, qm = model.encode_texts(queries)
    scores = model.scores(index.tokens.float(), index.mask, q, qm)  # (N, Q)
    return scores.T.argsort(dim=1, descending=True, stable=True)


# ---------------------------------------------------------------------------- build / load
@pytest.mark.parametrize(
    ("dtype", "first_stage"), [("float16", "flat"), ("bfloat16", "ivf"), ("float16", "hnsw")]
)
def test_build_load_round_trip(tiny, tmp_path, dtype, first_stage):
    out = tmp_path / "idx"
    built = _build(tiny, out, dtype=dtype, first_stage=first_stage)
    assert sorted(p.name for p in out.iterdir()) == [
        "faiss.index",
        "manifest.json",
        "tokens.safetensors",
    ]
    fs, model = tiny["fs"], tiny["model"]
    man = json.loads((out / "manifest.json").read_text())
    assert man["format"] == "picoalign-gallery" and man["format_version"] == 1
    assert man["model"]["model_sha256"] == index_store.file_sha256(
        tiny["ckpt"] / "model.safetensors"
    )
    assert man["model"]["p_sha256"] == index_store.tensors_sha256({"p": model.pico.p.float()})
    assert man["dataset"]["spec"] == tiny["spec"] and man["dataset"]["fingerprint"]
    assert man["keys"] == fs.image_keys
    assert all(Path(s).is_file() for s in man["sources"])
    assert man["dims"] == {"n": 12, "tokens": 16, "embed_dim": 16}
    assert man["dtype"] == dtype and man["first_stage"]["type"] == first_stage
    assert man["checkpoint"] == str(tiny["ckpt"].resolve())

    loaded = GalleryIndex.load(out, model=model, checkpoint=tiny["ckpt"])
    assert loaded.tokens.dtype == index_store.DTYPES[dtype]
    assert torch.equal(loaded.tokens, built.tokens) and torch.equal(loaded.mask, built.mask)
    emb, _ = model.embed_images(fs.images.tokens, fs.images.mask)
    assert torch.allclose(loaded.tokens.float(), emb, atol=1e-2)
    assert loaded.faiss_index.ntotal == 12
    kw = {"k": 5, "candidates": 8}
    assert loaded.search_text(model, QUERIES, **kw) == built.search_text(model, QUERIES, **kw)
    assert loaded.load_model().state_dict().keys() == model.state_dict().keys()


def test_split_gallery_and_overwrite(tiny, tmp_path):
    out = tmp_path / "idx"
    built = _build(tiny, out)
    test = tiny["fs"].split("test")
    kw = {"dataset_spec": tiny["spec"], "checkpoint": tiny["ckpt"], "out": out, "split": "test"}
    # the API walkthrough: a second build (or GalleryIndex.save) replaced an index unasked
    with pytest.raises(ValueError, match=r"holds a gallery index; .*overwrite=True"):
        build_index(tiny["model"], test, progress=False, **kw)
    with pytest.raises(ValueError, match=r"holds a gallery index; .*overwrite=True"):
        built.save(out)
    assert GalleryIndex.load(out).n == 12  # untouched
    index = build_index(tiny["model"], test, progress=False, overwrite=True, **kw)
    assert GalleryIndex.load(out).keys == test.image_keys and index.n == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"does not \(notes\.txt\)"):
        _build(tiny, tmp_path / "other")
    # a file the user put into an index folder: replacing the index would delete it
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"does not \(notes\.txt\)"):
        _build(tiny, out)
    assert (out / "notes.txt").read_text() == "mine" and GalleryIndex.load(out).n == 4


def test_refuses_other_model(tiny, tmp_path):
    out = tmp_path / "idx"
    _build(tiny, out)
    other = _model(seed=1)
    other.save(tmp_path / "other")
    with pytest.raises(ValueError, match="another model"):
        GalleryIndex.load(out, checkpoint=tmp_path / "other")
    with pytest.raises(ValueError, match="weights differ"):
        GalleryIndex.load(out, model=other)
    p_only = _model()
    p_only.pico.p.mul_(2.0)
    with pytest.raises(ValueError, match="PICO's p differs"):
        GalleryIndex.load(out, model=p_only)
    index = GalleryIndex.load(out)  # no model given: opens, then refuses at search time
    with pytest.raises(ValueError, match="another model"):
        index.search_text(other, ["a red circle"])
    with pytest.raises(ValueError, match="differs from checkpoint"):
        build_index(
            other,
            tiny["fs"],
            dataset_spec=tiny["spec"],
            checkpoint=tiny["ckpt"],
            out=tmp_path / "idx2",
            progress=False,
        )
    assert not (tmp_path / "idx2").exists()


def test_a_model_saved_in_bf16_is_indexed_and_searched_by_its_loaded_copy(tiny, tmp_path):
    """The GPU review: a model trained or saved in bf16 could never be indexed: PicoAligner.load
    gives fp32, whose bytes never hash like the bf16 file ("the model differs from
    checkpoint ...: save it before indexing")."""
    low = _model().to(torch.bfloat16)
    low.save(tmp_path / "bf16")
    loaded = PicoAligner.load(tmp_path / "bf16")
    kw = {"dataset_spec": tiny["spec"], "checkpoint": tmp_path / "bf16", "progress": False}
    fs = encode_dataset(load_dataset(tiny["spec"]), "random-conv", "hash-text",
                        cache_dir=tiny["root"] / "cache", progress=False)  # fmt: skip
    index = build_index(loaded, fs, out=tmp_path / "idx", **kw)
    assert GalleryIndex.load(tmp_path / "idx", model=low).n == index.n  # the bf16 original too
    assert index.search_text(loaded, ["a red circle"], k=1)
    other = _model(seed=1).to(torch.bfloat16)  # another model in bf16 is still refused
    with pytest.raises(ValueError, match="weights differ"):
        GalleryIndex.load(tmp_path / "idx", model=other)
    # the API walkthrough: the README's model.to(torch.bfloat16) of an index's own float32
    # checkpoint was refused as "another model ... rebuild it", which could never help
    _build(tiny, tmp_path / "idx32")
    cast = PicoAligner.load(tiny["ckpt"]).to(torch.bfloat16)
    hits = GalleryIndex.load(tmp_path / "idx32").search_text(cast, ["a red circle"], k=3)
    assert [h.key for h in hits[0]] == [
        h.key
        for h in GalleryIndex.load(tmp_path / "idx32").search_text(
            PicoAligner.load(tiny["ckpt"]), ["a red circle"], k=3
        )[0]
    ]
    with pytest.raises(ValueError, match=r"weights differ.*a model in bfloat16 is searched only"):
        GalleryIndex.load(tmp_path / "idx32", model=other)


def test_an_index_of_a_model_never_trained_is_warned(tiny, tmp_path):
    """The serving walkthrough's leftover: ``PicoAligner.from_encoders(...).save(dir)`` then
    ``picoalign index dir`` built and searched an index of random heads without a word."""
    fresh = PicoAligner(tiny["model"].config)
    fresh.save(tmp_path / "fresh")
    kw = {"dataset_spec": tiny["spec"], "progress": False}
    with pytest.warns(UserWarning, match=r"an index of .*fresh of a model that was never trained"):
        build_index(fresh, tiny["fs"], checkpoint=tmp_path / "fresh", out=tmp_path / "a", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a trained model: no word
        _build(tiny, tmp_path / "b")


def test_refuses_missing_or_corrupt(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        GalleryIndex.load(tmp_path / "nope")
    out = tmp_path / "idx"
    _build(tiny, out)
    manifest = out / "manifest.json"
    good = manifest.read_text()
    manifest.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt manifest"):
        GalleryIndex.load(out)
    manifest.write_text(json.dumps({**json.loads(good), "format_version": 99}))
    with pytest.raises(ValueError, match="not supported"):
        GalleryIndex.load(out)
    man = json.loads(good)
    del man["keys"]
    manifest.write_text(json.dumps(man))
    with pytest.raises(ValueError, match="missing keys"):
        GalleryIndex.load(out)
    man = json.loads(good)
    # hand edits and damage (the re-test): each one line, not a KeyError from deep in search
    for edit, says in (
        ({"keys": ["a"]}, "keys must be a list of 12 entries"),
        ({"sources": man["sources"][:-1]}, "sources must be a list of 12"),
        ({"files_sha256": "abc"}, "files_sha256 must give the sha256"),
        ({"dims": {**man["dims"], "n": "12"}}, "dims must hold the integers"),
        ({"first_stage": {"type": "ivf"}}, r"first_stage .* is not one picoalign writes"),
        ({"first_stage": {"type": "ivf", "nlist": 3, "nprobe": 3}}, "disagree"),
        ({"dims": {**man["dims"], "tokens": man["dims"]["tokens"] + 1}}, "disagree"),
    ):
        manifest.write_text(json.dumps({**man, **edit}))
        with pytest.raises(ValueError, match=says):
            GalleryIndex.load(out)
    manifest.write_text(good)
    (out / "tokens.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="its checksum differs"):
        GalleryIndex.load(out)
    with pytest.raises(ValueError, match="corrupt index files"):
        GalleryIndex.load(out, verify=False)
    manifest.unlink()
    with pytest.raises(ValueError, match=r"no manifest\.json"):
        GalleryIndex.load(out)


@pytest.mark.parametrize(
    ("stage", "edit", "says"),
    [
        ("ivf", {"first_stage": {"type": "ivf", "nlist": 3, "nprobe": 0}}, "first_stage"),
        ("ivf", {"first_stage": {"type": "ivf", "nlist": 3, "nprobe": 9}}, "more than its nlist"),
        ("ivf", {"first_stage": {"type": "ivf", "nlist": 99, "nprobe": 3}}, "disagree"),
        ("ivf", {"first_stage": {"type": "ivf", "nlist": 3, "nprobe": True}}, "first_stage"),
        ("hnsw", {"first_stage": {"type": "hnsw", "m": 32, "ef_search": -1}}, "first_stage"),
        ("flat", {"source_stats": ["1:2"]}, "source_stats must be a list of 12"),
        ("flat", {"model": "mine"}, "model must record the weights_sha256"),
        ("flat", {"model": {}}, "model must record the weights_sha256"),
        ("flat", {"checkpoint": 7}, "checkpoint must be the path"),
        ("flat", {"format_version": 0}, "format version 0 is not supported"),
        ("flat", {"dims": {"n": True, "tokens": 1, "embed_dim": 1}}, "dims must hold"),
    ],
)
def test_every_manifest_field_search_reads_is_checked(tiny, tmp_path, stage, edit, says):
    """The second re-test: an IVF nprobe of 0 crashed in faiss, a source_stats list cut
    short, a model or checkpoint of the wrong type ended in tracebacks, and a JSON true
    passed as the integer 1."""
    out = _build(tiny, tmp_path / "idx", first_stage=stage).path
    assert out is not None
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["first_stage"].get("nlist", 3) == 3  # √12 lists: the edits' "nlist": 3
    (out / "manifest.json").write_text(json.dumps({**manifest, **edit}))
    with pytest.raises(ValueError, match=says):
        GalleryIndex.load(out)


def test_damaged_or_swapped_index_files_are_refused_by_name(tiny, tmp_path):
    """The gallery walkthrough: two token rows zeroed (a bad disk) or another model's tokens
    file of the same shape searched with exit 0 and other scores; a flipped byte that made
    a NaN said only "img contains NaN or Inf values", naming no file."""
    from safetensors.torch import load_file, save_file

    out = _build(tiny, tmp_path / "idx").path
    assert out is not None
    tokens = out / "tokens.safetensors"
    arrays = load_file(str(tokens))
    arrays["tokens"][:2] = 0
    save_file(arrays, str(tokens))
    with pytest.raises(ValueError, match=r"tokens\.safetensors: not the file this index wrote"):
        GalleryIndex.load(out)
    assert GalleryIndex.load(out, verify=False).n == arrays["tokens"].shape[0]  # opted out
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["files_sha256"]  # an index from before checksums were recorded
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="records no checksums of its files"):
        GalleryIndex.load(out)  # zeros are finite: only the warning can say
    arrays["tokens"][0, 0, 0] = float("nan")
    save_file(arrays, str(tokens))
    with pytest.raises(ValueError, match=r"tokens\.safetensors: holds NaN or Inf"):
        GalleryIndex.load(out)


def test_interrupted_build_leaves_nothing(tiny, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(index_store, "_write_faiss", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        _build(tiny, tmp_path / "idx")
    assert list(tmp_path.iterdir()) == []  # no index, no temp folder
    monkeypatch.undo()
    first = _build(tiny, tmp_path / "idx")  # an interrupted rebuild keeps the old index
    monkeypatch.setattr(index_store, "atomic_write_safetensors", boom)
    with pytest.raises(RuntimeError):
        _build(tiny, tmp_path / "idx", first_stage="hnsw", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]
    assert GalleryIndex.load(tmp_path / "idx").manifest == first.manifest


# ---------------------------------------------------------------------------- search
@pytest.mark.parametrize("first_stage", ["flat", "ivf", "hnsw"])
def test_all_candidates_equals_exhaustive(tiny, tmp_path, first_stage):
    index = _build(tiny, tmp_path / "idx", first_stage=first_stage)
    model = tiny["model"]
    two = index.search_text(model, QUERIES, k=12, candidates=12)
    full = index.search_text(model, QUERIES, k=12, exhaustive=True)
    assert _rows(two) == _rows(full) == _reference_rows(tiny, index, QUERIES).tolist()
    for a, b in zip(two, full, strict=True):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
        assert [h.key for h in a] == [tiny["fs"].image_keys[h.row] for h in a]
    # exhaustive in many tiny chunks (memory-bounded path) gives the same top-k
    q, qm = model.encode_texts(QUERIES)
    tiny_chunks = index.search_tokens(
        q, qm, model.scores, k=4, exhaustive=True, memory_budget_mb=0.001
    )
    assert _rows(tiny_chunks) == [r[:4] for r in _rows(full)]


def test_flat_first_stage_and_agreement(tiny, tmp_path):
    index = _build(tiny, tmp_path / "idx")
    model = tiny["model"]
    # rerank=False: exact pooled inner product, query pooled embedding weighted by eval_weights
    q, qm = model.encode_texts(QUERIES)
    from picoalign.core.similarity import pool_tokens

    pooled = pool_tokens(q, qm) * model.eval_weights
    ref = (pooled @ index.pooled.T).argsort(dim=1, descending=True)[:, :5]
    stage1 = index.search_text(model, QUERIES, k=5, rerank=False)
    assert _rows(stage1) == ref.tolist()
    # two-stage top-3 agrees with exhaustive top-3 whenever the first stage kept them
    two = index.search_text(model, QUERIES, k=3, candidates=10)
    full = index.search_text(model, QUERIES, k=3, exhaustive=True)
    cand = (pooled @ index.pooled.T).argsort(dim=1, descending=True)[:, :10].tolist()
    for t, f, c in zip(_rows(two), _rows(full), cand, strict=True):
        if set(f) <= set(c):
            assert t == f
    with pytest.raises(ValueError, match=">= 1"):
        index.search_text(model, QUERIES, k=0)
    # one string is one query, and a generator is read once (it searched nothing: [])
    one = index.search_text(model, ["a red circle"], k=3)
    assert index.search_text(model, "a red circle", k=3) == one
    assert index.search_text(model, (q for q in ["a red circle"]), k=3) == one
    with pytest.raises(ValueError, match="non-empty list"):
        index.search_text(model, [])
    with pytest.raises(ValueError, match=r"k must be a whole number >= 1, got 2\.5"):
        index.search_text(model, QUERIES, k=2.5)
    with pytest.raises(ValueError, match="text query 2 is empty"):
        index.search_text(model, ["a red circle", "  "])
    with pytest.raises(ValueError, match="search it by text"):
        index.search_image(model, [tiny["root"] / "img0.png"])


def test_caption_index_search_image(tiny, tmp_path):
    index = _build(tiny, tmp_path / "caps", kind="captions", first_stage="ivf")
    fs, model = tiny["fs"], tiny["model"]
    assert index.n == fs.n_captions and index.manifest["captions"] == fs.captions
    images = [tiny["root"] / "img0.png", Image.open(tiny["root"] / "img4.png")]
    hits = index.search_image(model, images, k=24, candidates=24)
    full = index.search_image(model, images, k=24, exhaustive=True)
    assert _rows(hits) == _rows(full)
    img, im = model.encode_images(images)
    ref = model.scores(img, im, index.tokens.float(), index.mask)
    assert _rows(hits) == ref.argsort(dim=1, descending=True, stable=True).tolist()
    top = hits[0][0]
    assert top.caption == fs.captions[top.row]
    assert top.key == fs.image_keys[int(fs.caption_image[top.row])]
    with pytest.raises(ValueError, match="search it by image"):
        index.search_text(model, ["a red circle"])
    with pytest.raises(FileNotFoundError, match="image not found"):
        index.search_image(model, [tiny["root"] / "missing.png"])
    # one image (PIL or path) is one query, a generator is read once, a folder is named
    assert index.search_image(model, images[1], k=3) == index.search_image(model, images[1:], k=3)
    assert index.search_image(model, (x for x in images), k=3) == index.search_image(
        model, images, k=3
    )
    with pytest.raises(FileNotFoundError, match="is a folder, not an image"):
        index.search_image(model, [tiny["root"]])


def test_contact_sheet(tiny, tmp_path):
    index = _build(tiny, tmp_path / "idx")
    hits = index.search_text(tiny["model"], QUERIES[:2], k=4)
    out = contact_sheet(
        hits, index.image_loader(), tmp_path / "sheet.png", "test", row_labels=QUERIES[:2]
    )
    with Image.open(out) as png:
        png.verify()
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size[0] > 200 and png.size[1] > 150
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "sheet.png"]  # no temp files
    with pytest.raises(ValueError, match="no hits"):
        contact_sheet([], index.image_loader(), tmp_path / "empty.png", "x")


def test_contact_sheet_replaces_only_an_earlier_sheet(tiny, tmp_path):
    index = _build(tiny, tmp_path / "idx")
    hits = index.search_text(tiny["model"], QUERIES[:1], k=2)
    sheet = tmp_path / "sheet.png"
    contact_sheet(hits, index.image_loader(), sheet)
    contact_sheet(hits, index.image_loader(), sheet)  # a re-run updates its own sheet
    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(photo)
    notes = tmp_path / "notes.png"  # a .png name, not an image
    notes.write_text("mine")
    for theirs in (photo, notes):
        before = theirs.read_bytes()
        with pytest.raises(ValueError, match="exists and is not a sheet picoalign wrote"):
            contact_sheet(hits, index.image_loader(), theirs)
        assert theirs.read_bytes() == before
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        contact_sheet(hits, index.image_loader(), tmp_path / "dir.png")
    for name in ("sheet.jpg", "sheet"):  # PNG data under another name: refused, not written
        with pytest.raises(ValueError, match=r"a sheet is a PNG image; give a \.png path"):
            contact_sheet(hits, index.image_loader(), tmp_path / name)
        assert not (tmp_path / name).exists()


def test_format_hits_aligned():
    hits = [Hit(0, "a.png", "/data/a.png", 1.25), Hit(7, "longer_key.png", "", -0.5)]
    lines = format_hits(hits).splitlines()
    assert lines[0].split() == ["rank", "score", "key", "source"]
    assert lines[1].index("a.png") == lines[2].index("longer_key.png") == lines[0].index("key")
    assert lines[1].split()[:2] == ["1", "1.2500"]
    # a newline or tab in a file name stays on its row (shown escaped)
    odd = format_hits([Hit(0, "two\nlines\t.png", "/g/two\nlines\t.png", 0.5)])
    assert len(odd.splitlines()) == 2 and "two\\nlines\\t.png" in odd


# ---------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="picoalign")
    add_parsers(parser.add_subparsers(dest="command"))
    return parser


def test_cli_index_and_search(tiny, tmp_path, monkeypatch, capsys):
    pytest.importorskip("picoalign.features", reason="picoalign.features unavailable")
    monkeypatch.setenv("PICOALIGN_CACHE", str(tmp_path / "cache"))
    parser = _parser()
    out = tmp_path / "idx"
    argv = ["index", "--checkpoint", str(tiny["ckpt"]), "--data", tiny["spec"], "--out", str(out)]
    args = parser.parse_args(
        [*argv, "--first-stage", "hnsw", "--dtype", "bfloat16", "--no-progress"]
    )
    assert args.func(args) == 0
    assert "indexed 12 images" in capsys.readouterr().out

    sheet = tmp_path / "sheet.png"
    argv = ["search", "--index", str(out), "--text", "a red circle", "--text", "blue", "--json"]
    args = parser.parse_args([*argv, "--top-k", "3", "--sheet", str(sheet)])
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["query"] for r in result] == ["a red circle", "blue"]
    assert [h["rank"] for h in result[0]["hits"]] == [1, 2, 3]
    assert set(result[0]["hits"][0]) == {
        "rank",
        "row",
        "key",
        "source",
        "score",
        "score_kind",
        "file",
    }
    assert sheet.is_file()
    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(photo)
    args = parser.parse_args([*argv, "--sheet", str(photo)])
    with pytest.raises(ValueError, match="not a sheet picoalign wrote"):
        args.func(args)  # refused before the search
    assert capsys.readouterr().out == ""

    args = parser.parse_args(["search", "--index", str(out), "--text", "red", "--exhaustive"])
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert table.startswith("query: red") and "rank" in table and "score" in table

    args = parser.parse_args(["search", "--index", str(out), "--image", "x.png"])
    with pytest.raises(ValueError, match="search it by text"):
        args.func(args)
    args = parser.parse_args(["search", "--index", str(tmp_path / "nope"), "--text", "x"])
    with pytest.raises(FileNotFoundError, match="not found"):
        args.func(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["search", "--index", str(out), "--text", "x", "--top-k", "0"])
    assert parser.parse_args(["search", str(out), "--text", "x", "-k", "2"]).top_k == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["search", "--index", str(out), "--text", "x", "--image", "y"])

    # queries after an option: `search INDEX -k 1 "a red circle"` (was "unrecognized
    # arguments"), and queries on both sides of one
    from picoalign.cli.commands import main

    assert main(["search", str(out), "-k", "1", "a red circle", "--json"]) == 0
    assert [r["query"] for r in json.loads(capsys.readouterr().out)] == ["a red circle"]
    assert main(["search", str(out), "red", "-k", "1", "blue", "--json"]) == 0
    assert [r["query"] for r in json.loads(capsys.readouterr().out)] == ["red", "blue"]
    with pytest.raises(SystemExit):  # an unknown option is still an error
        main(["search", str(out), "-k", "1", "red", "--bogus"])
    # the index given both ways, the same folder: not a query (was "give the queries ... not
    # both"); a long query is shown cut in the table, whole in --json
    long = "red " * 100
    assert main(["search", str(out), "--index", str(out), "--text", long, "-k", "1"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0] == f"query: {long[:117]}…"
    assert main(["search", str(out), "--index", str(out), "--text", long, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["query"] == long
    # flags that would be ignored are refused (the index above has an hnsw first stage)
    args = parser.parse_args(["search", str(out), "red", "--exhaustive", "--no-rerank"])
    with pytest.raises(ValueError, match="give one of them"):
        args.func(args)
    args = parser.parse_args(["search", str(out), "red", "--nprobe", "4"])
    with pytest.raises(ValueError, match="has a hnsw first stage; --nprobe applies to an ivf"):
        args.func(args)


@pytest.mark.parametrize("kind", ["captions", "images"])
def test_a_fine_tuned_backbone_is_indexed_by_what_it_computes(tiny, tmp_path, kind):
    """A model whose text (image) backbone was fine-tuned indexes captions (images) through
    that backbone, as evaluation and search do, not through the pretrained backbone's cached
    features: those would rank the gallery by a model that no longer exists."""
    torch.manual_seed(0)
    side = "text" if kind == "captions" else "image"
    cfg = ModelConfig(
        image_encoder="random-conv", text_encoder="hash-text", image_dim=32, text_dim=32,
        embed_dim=16, method="baseline", **{f"finetune_{side}": True},
    )  # fmt: skip
    model = PicoAligner(cfg).eval()
    with torch.no_grad():  # what fine-tuning does: the backbone moves off its pretrained weights
        for p in model.backbone(side).parameters():
            p.add_(torch.randn_like(p))
    model.trained_steps = 1
    model.save(tmp_path / "ckpt")
    fs = tiny["fs"]
    index = build_index(
        model, fs, dataset_spec=tiny["spec"], checkpoint=tmp_path / "ckpt", out=tmp_path / "idx",
        kind=kind, progress=False,
    )  # fmt: skip
    if kind == "captions":
        want, want_mask = model.encode_texts(list(fs.captions))
        stale, _ = model.embed_texts(fs.texts.tokens, fs.texts.mask)
    else:
        want, want_mask = model.encode_images([tiny["root"] / f"img{i}.png" for i in range(12)])
        stale, _ = model.embed_images(fs.images.tokens, fs.images.mask)
    width = want.shape[1]
    assert torch.equal(index.mask[:, :width], want_mask) and not index.mask[:, width:].any()
    torch.testing.assert_close(index.tokens[:, :width].float(), want, atol=2e-3, rtol=0)
    assert (index.tokens[:, :width].float() - stale[:, :width]).abs().max() > 0.1


def test_a_sheet_of_a_moved_dataset_keeps_the_results_and_says_why(tiny, tmp_path, capsys):
    """The user report: with the dataset moved after indexing, `search --sheet` printed only
    `.../data.jsonl: file not found`, and no results."""
    import shutil

    from picoalign.cli.commands import main

    data = Path(tiny["spec"].removeprefix("jsonl:"))
    shutil.copytree(data.parent, tmp_path / "ds")
    out = tmp_path / "idx"
    build_index(
        tiny["model"], tiny["fs"], dataset_spec=f"jsonl:{tmp_path / 'ds' / data.name}",
        checkpoint=tiny["ckpt"], out=out, progress=False,
    )  # fmt: skip
    (tmp_path / "ds").rename(tmp_path / "moved")
    capsys.readouterr()
    sheet = tmp_path / "s.png"
    with pytest.warns(UserWarning, match="2 of the results' image files are no longer"):
        assert main(["search", str(out), "a red circle", "-k", "2", "--sheet", str(sheet)]) == 2
    printed = capsys.readouterr()
    assert printed.out.startswith("query: a red circle") and "rank" in printed.out
    assert "were they moved since it was indexed?" in printed.err
    assert not sheet.exists()


def test_a_second_index_into_the_same_folder_is_refused_while_one_is_written(
    tiny, tmp_path, capsys, monkeypatch
):
    """The user report: two `index` runs into one folder at once both said they succeeded,
    and one silently replaced the other."""
    from picoalign.cli.commands import main
    from picoalign.fileio import folder_lock

    monkeypatch.setenv("PICOALIGN_CACHE", str(tiny["root"] / "cache"))  # not ~/.cache
    out = tmp_path / "idx"
    argv = ["index", str(tiny["ckpt"]), "--data", tiny["spec"], "--out", str(out), "--no-progress"]
    with folder_lock(out, "writing an index into it"):  # as the first index run holds it
        assert main(argv) == 2
        assert "another picoalign process is writing an index into it" in capsys.readouterr().err
        assert not out.exists()
    assert main(argv) == 0 and (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no lock file left


@pytest.mark.parametrize("query", ["\u200b", "\x07", "\u0301", "\ufeff", " \u200b "])
def test_a_query_of_invisible_characters_is_refused(tiny, tmp_path, query):
    """The user report: a zero-width space, a control character, a lone combining mark or a
    BOM was searched, ranking the gallery by the empty caption's special tokens."""
    index = _build(tiny, tmp_path / "idx")
    with pytest.raises(ValueError, match="text query 2 is empty"):
        index.search_text(tiny["model"], ["red", query], k=1)
    assert index.search_text(tiny["model"], ["!?", "é"], k=1)  # punctuation, one letter: fine


def test_fewer_results_than_asked_are_said_and_index_refuses_nprobe_on_flat(
    tiny, tmp_path, monkeypatch, capsys
):
    """The walkthrough's reports: an ivf search with a small --nprobe returned 27 of -k 50
    results with no word; `index --nprobe 4` on a flat first stage was accepted silently."""
    from picoalign.cli.commands import main

    out = tmp_path / "idx"
    _build(tiny, out)
    real = GalleryIndex.search_text
    monkeypatch.setattr(  # as an ivf stage that reaches fewer items than -k
        GalleryIndex, "search_text", lambda self, *a, **kw: [h[:1] for h in real(self, *a, **kw)]
    )
    with pytest.warns(UserWarning, match=r"query 1: 1 results, not 3: the flat first stage"):
        assert main(["search", str(out), "a red circle", "-k", "3"]) == 0
    monkeypatch.setattr(GalleryIndex, "search_text", real)
    rc = main(["index", str(tiny["ckpt"]), "--data", tiny["spec"], "--out", str(tmp_path / "i2"),
               "--nprobe", "4"])  # fmt: skip
    assert rc == 2 and "--nprobe applies to an ivf first stage, not flat" in capsys.readouterr().err
    assert not (tmp_path / "i2").exists()


def test_the_readmes_serving_example_runs(tiny, tmp_path, capsys) -> None:
    """README's "Serving search from Python" block, run on a small index as written."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("Serving search from Python")[1].split("```python\n")[1].split("```")[0]
    out = _build(tiny, tmp_path / "idx").path
    exec(block.replace('"my-index"', repr(str(out))), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 5 and all(len(line.split()) == 3 for line in printed), printed


def test_an_index_built_with_home_paths_records_where_they_are(tiny, tmp_path, monkeypatch):
    """The re-test: ``build_index(checkpoint="~/ck", out="~/idx")`` recorded the checkpoint
    as ``./~/ck`` (not found by load_model), and checked ``out`` before expanding it."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    tiny["model"].save("~/ck")
    kw = {"dataset_spec": tiny["spec"], "progress": False}
    build_index(tiny["model"], tiny["fs"], checkpoint="~/ck", out="~/idx", **kw)
    index = GalleryIndex.load(tmp_path / "home" / "idx")
    assert index.checkpoint == str(tmp_path / "home" / "ck")
    assert index.load_model().trained_steps == 1
    with pytest.raises(ValueError, match="holds a gallery index"):  # refused before any work
        build_index(tiny["model"], tiny["fs"], checkpoint="~/ck", out="~/idx", **kw)
    assert not (tmp_path / "~").exists()
