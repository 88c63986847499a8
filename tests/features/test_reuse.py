"""Rows another cache file holds are copied, not encoded: a gallery grown by one image
encodes one; anything that could make a copied row wrong (an edited file, another encoder,
another math path, a built-in dataset) encodes instead."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from picoalign.data import load_dataset
from picoalign.encoders import HashTextEncoder, RandomConvEncoder
from picoalign.features import cache as C
from picoalign.features import encode as F
from picoalign.features.encode import encode_dataset
from picoalign.features.reuse import assemble
from picoalign.features.store import TokenFeatures, read_safetensors


class Counted:
    """Counts the images (or captions) an encoder is given, batch by batch."""

    def __init__(self, encoder, texts: bool = False) -> None:
        self.n = 0
        inner = encoder.forward

        def forward(*args, **kwargs):
            batch = kwargs["input_ids"] if texts else args[0]
            self.n += len(batch)
            return inner(*args, **kwargs)

        encoder.forward = forward


def draw(folder: Path, names: list[str], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        pixels = rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)


def write_jsonl(path: Path, rows: list[tuple[str, list[str]]]) -> None:
    lines = [
        json.dumps({"image": img, "captions": caps, "split": ["train", "val", "test"][i % 3]})
        for i, (img, caps) in enumerate(rows)
    ]
    path.write_text("\n".join(lines) + "\n")


def encode(spec: str, cache: Path, img=None, txt=None, reuse: bool = True, **kw):
    img = img or RandomConvEncoder()
    txt = txt or HashTextEncoder()
    ds = load_dataset(spec)
    return encode_dataset(
        ds, img, txt, cache_dir=cache, batch_size=4, progress=False, reuse_rows=reuse, **kw
    )


def encode_counted(spec: str, cache: Path, img=None, **kw):
    """``encode`` with a RandomConvEncoder (or ``img``) counted: (features, images encoded)."""
    img = img or RandomConvEncoder()
    seen = Counted(img)
    fs = encode(spec, cache, img=img, **kw)
    return fs, seen.n


def assert_images_as_fresh(fs, spec: str, tmp_path: Path) -> None:
    """``fs``'s image features equal a full encode of ``spec`` (no reuse, its own cache) up to
    fp16 rounding."""
    fresh = encode(spec, tmp_path / "other-cache", reuse=False)
    torch.testing.assert_close(fs.images.tokens, fresh.images.tokens, rtol=0, atol=1e-3)


@pytest.fixture
def gallery(tmp_path: Path) -> Path:
    draw(tmp_path / "photos", [f"p{i:02d}.png" for i in range(10)])
    return tmp_path / "photos"


def test_an_image_added_to_a_gallery_is_the_only_one_encoded(gallery, tmp_path) -> None:
    cache = tmp_path / "cache"
    first = encode(f"folder:{gallery}", cache)
    draw(gallery, ["p04b.png"], seed=1)  # sorts into the middle: every later row moves
    grown, n = encode_counted(f"folder:{gallery}", cache)
    assert n == 1
    fresh = encode(f"folder:{gallery}", tmp_path / "other-cache", reuse=False)
    assert grown.image_keys == fresh.image_keys
    assert torch.equal(grown.images.mask, fresh.images.mask)
    torch.testing.assert_close(grown.images.tokens, fresh.images.tokens, rtol=0, atol=1e-3)
    old = {k: i for i, k in enumerate(first.image_keys)}
    for row, key in enumerate(grown.image_keys):
        if key in old:  # copied rows are the earlier file's bits
            assert torch.equal(grown.images.tokens[row], first.images.tokens[old[key]])
    # the new file records what it did, and is a plain cache hit next time
    path = Path(grown.meta["image_cache"])
    _, meta = read_safetensors(path)
    assert meta["reused"] == 10 and len(meta["row_ids"]) == 11
    again, n = encode_counted(f"folder:{gallery}", cache)
    assert n == 0 and torch.equal(again.images.tokens, grown.images.tokens)


def test_the_same_images_under_another_data_file_encode_nothing(
    gallery, tmp_path, monkeypatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.chdir(tmp_path)  # a relative folder, as users type it (the walkthrough's)
    encode("folder:photos", cache)
    data = tmp_path / "photos.jsonl"
    write_jsonl(data, [(str(gallery / f"p{i:02d}.png"), [f"photo {i}"]) for i in range(10)])
    fs, n = encode_counted(f"jsonl:{data}", cache)
    assert n == 0 and fs.n_images == 10


def test_an_edited_or_touched_image_is_encoded_again(gallery, tmp_path) -> None:
    cache = tmp_path / "cache"
    encode(f"folder:{gallery}", cache)
    draw(gallery, ["p03.png"], seed=7)  # new pixels under the same name
    st = (gallery / "p05.png").stat()
    os.utime(gallery / "p05.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched
    fs, n = encode_counted(f"folder:{gallery}", cache)
    assert n == 2
    assert_images_as_fresh(fs, f"folder:{gallery}", tmp_path)


def test_no_rows_from_another_encoder_or_math_path_nor_for_built_in_data(
    gallery, tmp_path, monkeypatch
) -> None:
    cache = tmp_path / "cache"
    encode(f"folder:{gallery}", cache)
    draw(gallery, ["p10.png"], seed=1)
    other = RandomConvEncoder(dim=16, seed=1)  # another encoder: its own files only
    _, n = encode_counted(f"folder:{gallery}", cache, img=other)
    assert n == 11
    monkeypatch.setattr(C, "mkl_branch", lambda: "another,path")
    draw(gallery, ["p11.png"], seed=2)
    _, n = encode_counted(f"folder:{gallery}", cache)
    assert n == 12  # rows rounded on another MKL path are not mixed into this file
    draw(gallery, ["p12.png"], seed=3)
    _, n = encode_counted(f"folder:{gallery}", cache, reuse=False)  # as for a built-in dataset
    assert n == 13


def test_an_edited_caption_is_the_only_caption_encoded(gallery, tmp_path) -> None:
    cache = tmp_path / "cache"
    data = tmp_path / "photos.jsonl"
    rows = [(str(gallery / f"p{i:02d}.png"), [f"photo {i}", f"a picture {i}"]) for i in range(10)]
    write_jsonl(data, rows)
    encode(f"jsonl:{data}", cache)
    rows[4] = (rows[4][0], ["photo 4", "a much longer picture caption of number four"])
    write_jsonl(data, rows)
    img, txt = RandomConvEncoder(), HashTextEncoder()
    images, texts = Counted(img), Counted(txt, texts=True)
    fs = encode(f"jsonl:{data}", cache, img=img, txt=txt)
    assert (images.n, texts.n) == (0, 1)
    fresh = encode(f"jsonl:{data}", tmp_path / "other-cache", reuse=False)
    assert fs.texts.tokens.shape == fresh.texts.tokens.shape  # no wider than a fresh encode
    assert torch.equal(fs.texts.mask, fresh.texts.mask)
    real = fs.texts.mask  # what padding slots hold is the encoder's affair: masked everywhere
    torch.testing.assert_close(fs.texts.tokens[real], fresh.texts.tokens[real], rtol=0, atol=1e-3)


def test_a_stopped_partial_encode_resumes_its_own_chunks(gallery, tmp_path, monkeypatch):
    monkeypatch.setattr(F, "CHUNK_BATCHES", 1)  # 4 images a chunk
    cache = tmp_path / "cache"
    encode(f"folder:{gallery}", cache)
    draw(gallery, [f"q{i}.png" for i in range(6)], seed=5)  # 6 new: two chunks of work

    class Stop(Exception):
        pass

    img = RandomConvEncoder()
    inner = img.forward
    calls = {"n": 0}

    def stopping(*args, **kwargs):
        if calls["n"] == 1:
            raise Stop
        calls["n"] += 1
        return inner(*args, **kwargs)

    img.forward = stopping
    with pytest.raises(Stop):
        encode(f"folder:{gallery}", cache, img=img)
    _, n = encode_counted(f"folder:{gallery}", cache)
    assert n == 2  # the stored chunk of 4 kept; the last 2 encoded


def test_assemble_keeps_an_encoders_fixed_width_and_trims_reused_padding() -> None:
    def feats(n: int, width: int, real: int) -> TokenFeatures:
        mask = torch.zeros(n, width, dtype=torch.bool)
        mask[:, :real] = True
        return TokenFeatures(torch.ones(n, width, 2, dtype=torch.float16) * mask[..., None], mask)

    out = assemble(3, [([0], feats(1, 8, 3))], [([1, 2], feats(2, 12, 5))], dim=2)
    assert out.tokens.shape == (3, 8, 2) and out.mask.sum(1).tolist() == [3, 5, 5]
    out = assemble(2, [], [([0, 1], feats(2, 12, 5))], dim=2)
    assert out.tokens.shape == (2, 5, 2)


def test_files_swapped_by_renames_get_their_own_features(tmp_path) -> None:
    """The gallery walkthrough: two BMPs of one size and time (as an unpacked archive leaves
    them) swapped by renames kept the folder's fingerprint, and the cache served each the
    other's features: search ranked a car as "a dog". The inode tells them apart."""
    folder = tmp_path / "shots"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.bmp", "b.bmp"):
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(folder / name)
        os.utime(folder / name, ns=(10**18, 10**18))
    assert (folder / "a.bmp").stat().st_size == (folder / "b.bmp").stat().st_size
    cache = tmp_path / "cache"
    before = encode(f"folder:{folder}", cache)
    (folder / "a.bmp").rename(folder / "t.bmp")
    (folder / "b.bmp").rename(folder / "a.bmp")
    (folder / "t.bmp").rename(folder / "b.bmp")
    after = encode(f"folder:{folder}", cache)
    assert after.meta["fingerprint"] != before.meta["fingerprint"]
    assert torch.equal(after.images.tokens[0], before.images.tokens[1])  # a.bmp is old b.bmp
    assert torch.equal(after.images.tokens[1], before.images.tokens[0])


def test_a_moved_gallery_folder_encodes_nothing(gallery, tmp_path) -> None:
    cache = tmp_path / "cache"
    encode(f"folder:{gallery}", cache)
    moved = gallery.rename(tmp_path / "moved")
    fs, n = encode_counted(f"folder:{moved}", cache)
    assert n == 0 and fs.n_images == 10


def test_a_donor_gone_before_its_rows_are_read_means_encoding_them(
    gallery, tmp_path, monkeypatch
) -> None:
    """A file found as a donor can be removed before its rows are read (``picoalign cache
    --clear`` from another shell): those rows are encoded instead, not a failed encode."""
    from picoalign.features import reuse

    cache = tmp_path / "cache"
    encode(f"folder:{gallery}", cache)
    draw(gallery, ["p10.png"], seed=1)

    def gone(*args, **kwargs):
        raise FileNotFoundError("the donor file")

    monkeypatch.setattr(reuse, "read_rows", gone)
    fs, n = encode_counted(f"folder:{gallery}", cache)
    assert n == 11
    assert_images_as_fresh(fs, f"folder:{gallery}", tmp_path)


def test_chunks_of_a_stopped_reusing_encode_are_not_read_as_the_datasets_rows(
    gallery, tmp_path, monkeypatch
) -> None:
    """The re-test (high): an encode that reused rows was stopped with two chunks stored,
    whose rows are positions in its to-do list; the donor was then cleared, and the next
    encode, with nothing to reuse, read those chunks as rows 0.. of the dataset: the first
    photos got other photos' features, and the file was kept as a valid cache."""
    monkeypatch.setattr(F, "CHUNK_BATCHES", 1)  # 4 images a chunk
    cache = tmp_path / "cache"
    encode(f"folder:{gallery}", cache)  # the donor: p00..p09
    draw(gallery, [f"q{i:02d}.png" for i in range(12)], seed=3)  # 12 new: three chunks

    img = RandomConvEncoder()
    inner, calls = img.forward, {"n": 0}

    def stopping(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return inner(*args, **kwargs)

    img.forward = stopping
    with pytest.raises(KeyboardInterrupt):
        encode(f"folder:{gallery}", cache, img=img)
    for donor in (cache / "features").glob("*.safetensors"):
        donor.unlink()  # picoalign cache --clear --older-than, or the user's rm
    fs = encode(f"folder:{gallery}", cache)
    assert_images_as_fresh(fs, f"folder:{gallery}", tmp_path)


def test_an_image_row_id_holds_the_device_and_the_change_time(tmp_path, monkeypatch) -> None:
    """The re-test: a gallery deleted and another unpacked elsewhere (sizes and times set by
    the archive) got the freed inodes back, and so the first gallery's features. A new file's
    change time is when it was made; the device tells two disks' inodes apart."""
    from types import SimpleNamespace

    from picoalign.data.base import Item
    from picoalign.features import reuse

    path = tmp_path / "a.png"
    path.write_bytes(b"x")
    same = {"st_dev": 1, "st_ino": 42, "st_size": 1, "st_mtime_ns": 5, "st_ctime_ns": 7}
    ids = []
    for change in ({}, {"st_ctime_ns": 8}, {"st_dev": 2}):  # same inode, size and mtime
        st = SimpleNamespace(**{**same, **change})
        monkeypatch.setattr(Path, "stat", lambda self, *a, _st=st, **k: _st)
        monkeypatch.setattr(Path, "is_file", lambda self: True)
        ids.append(reuse.image_row_ids([Item("a", (), "test", "a", str(path))])[0])
    assert len(set(ids)) == 3


def test_a_file_edited_in_place_with_its_size_and_dates_kept_is_encoded_again(
    gallery, tmp_path
) -> None:
    """The adversarial re-test: a photo rewritten in place keeping its size and dates (what
    `exiftool -P -overwrite_original_in_place` does) kept the folder's fingerprint, and its
    own cache file served the old picture. Only the change time moved: the stored row ids
    say so, and the unchanged rows are copied from that same file."""
    cache = tmp_path / "cache"
    pixels = np.random.default_rng(5).integers(0, 255, (24, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "new.bmp")  # another picture, of the same size
    bmp = gallery / "p03.bmp"
    Image.fromarray(pixels[::-1].copy()).save(bmp)
    encode(f"folder:{gallery}", cache)
    # the BMP rewritten in place: same inode, same size, dates put back
    st = bmp.stat()
    with open(bmp, "r+b") as f:
        f.write((tmp_path / "new.bmp").read_bytes())
    os.utime(bmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (bmp.stat().st_ino, bmp.stat().st_size, bmp.stat().st_mtime_ns) == (
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
    )
    fs, n = encode_counted(f"folder:{gallery}", cache)
    assert n == 1  # only the edited file; the rest from the stale file itself
    assert_images_as_fresh(fs, f"folder:{gallery}", tmp_path)


def test_an_svg_is_never_copied_since_it_may_render_files_it_links_to(tmp_path) -> None:
    """The adversarial re-test: an SVG linking a bitmap (Inkscape's link mode) kept its row
    id when the bitmap was recoloured, and its old render was copied."""
    pytest.importorskip("cairosvg")
    folder = tmp_path / "g"
    folder.mkdir()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(folder / "tex.png")
    (folder / "stamp.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        'width="32" height="32"><image xlink:href="tex.png" width="32" height="32"/></svg>'
    )
    data = tmp_path / "stamps.jsonl"  # a folder: gallery lists no SVGs (not Pillow's); JSONL does
    write_jsonl(
        data, [(str(folder / "stamp.svg"), ["a stamp"]), (str(folder / "tex.png"), ["a tex"])]
    )
    cache = tmp_path / "cache"
    encode(f"jsonl:{data}", cache)
    Image.new("RGB", (32, 32), (0, 0, 255)).save(folder / "tex.png")
    fs, n = encode_counted(f"jsonl:{data}", cache)
    assert n == 2  # the recoloured bitmap, and the SVG that shows it
    assert_images_as_fresh(fs, f"jsonl:{data}", tmp_path)
