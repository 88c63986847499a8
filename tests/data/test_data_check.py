"""Data is checked whole before any work (issue 14): every bad line and image at once, a
required split, a carved val split, large images, and the data flags of every command."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_runner import run_cli
from picoalign.data import DataError
from picoalign.data.base import DataProblems, Item
from picoalign.data.check import carve_val, prepare_dataset
from picoalign.data.images import _reduce, load_image, probe_image

ENCODERS = ["--image-encoder", "random-conv", "--text-encoder", "hash-text"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PICOALIGN_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_data(root: Path, splits: list[str | None], extra: list[str] = ()) -> Path:
    """``len(splits)`` 16x16 images, two captions each; a None split omits the key."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, split in enumerate(splits):
        Image.new("RGB", (16, 16), (20 * i % 255, 100, 200)).save(root / f"img{i}.png")
        rec = {"image": f"img{i}.png", "captions": [f"picture {i}", f"image number {i}"]}
        if split is not None:
            rec["split"] = split
        lines.append(json.dumps(rec))
    path = root / "data.jsonl"
    path.write_text("\n".join([*lines, *extra]) + "\n")
    return path


def train(data: str, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(
        "train", "--data", data, *ENCODERS, "--epochs", "1", "--batch-size", "4",
        "--no-progress", "--set", "model.embed_dim=8", "--out", str(out), *extra,
    )  # fmt: skip


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("picoalign: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == lines[0]
    return lines[0]


# ----------------------------------------------------------------- all problems at once

SPLITS = ["train"] * 8 + ["val", "val", "test", "test"]


def test_every_bad_line_and_image_is_reported_at_once(tmp_path: Path) -> None:
    bad = [
        "{not json",  # line 13
        json.dumps({"image": "img0.png", "captions": []}),  # line 14
        json.dumps({"image": "nope.png", "captions": ["x"], "split": "train"}),  # line 15
        json.dumps({"image": "cut.png", "captions": ["x"], "split": "train"}),  # line 16
    ]
    path = write_data(tmp_path / "d", SPLITS, bad)
    good = tmp_path / "d" / "img1.png"
    (tmp_path / "d" / "cut.png").write_bytes(good.read_bytes()[:60])  # a cut download
    with pytest.raises(DataProblems) as e:
        prepare_dataset(f"jsonl:{path}")
    wheres = [w for w, _ in e.value.problems]
    assert wheres == [f"{path} line {n}" for n in (13, 14, 15, 16)]
    assert "cut.png" in e.value.problems[3][1]  # the image header check found the 4th
    summary = str(e.value).splitlines()[0]
    assert summary.startswith("4 bad entries, first") and "line 13" in summary
    assert summary.endswith("--skip-bad to drop and list them")

    rc, out, err = train(f"jsonl:{path}", tmp_path / "run")
    assert rc == 2
    line = one_error_line(err)
    assert "4 bad entries" in line and "--skip-bad" in line
    for n in (13, 14, 15, 16):  # each listed, with file and line, above the error
        assert f"data.jsonl line {n}:" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # no work

    rc, out, err = train(f"jsonl:{path}", tmp_path / "run", "--skip-bad")
    assert rc == 0, err
    assert "skipped 4 bad entries" in out and "cut.png" in out
    assert json.loads((tmp_path / "run" / "data.json").read_text())["data"]["skipped"] == 4


def test_single_problem_is_one_line_with_the_hint(tmp_path: Path) -> None:
    path = write_data(tmp_path / "d", SPLITS, ["{oops"])
    _, _, err = train(f"jsonl:{path}", tmp_path / "run")
    line = one_error_line(err)
    assert err.strip() == line  # nothing else on stderr
    assert "data.jsonl line 13: invalid JSON" in line and line.endswith("--skip-bad to drop it)")


@pytest.mark.parametrize("command", ["evaluate", "index"])
def test_evaluate_and_index_accept_the_data_flags(tmp_path: Path, command: str) -> None:
    path = write_data(tmp_path / "d", SPLITS, ["{oops"])
    assert train(f"jsonl:{path}", tmp_path / "run", "--skip-bad")[0] == 0
    extra = ["--out", str(tmp_path / "gallery")] if command == "index" else []
    argv = [command, "--checkpoint", str(tmp_path / "run"), "--data", f"jsonl:{path}", *extra]
    rc, out, err = run_cli(*argv, "--no-progress" if command == "index" else "--json")
    assert rc == 2 and "line 13" in one_error_line(err)
    rc, out, err = run_cli(*argv, "--skip-bad", "--max-image-pixels", "50M")
    assert rc == 0, err
    assert "skipped 1 bad entry" in out


def test_max_image_pixels_flag_refuses_before_work(tmp_path: Path) -> None:
    path = write_data(tmp_path / "d", SPLITS)
    _, _, err = train(f"jsonl:{path}", tmp_path / "run", "--max-image-pixels", "100")
    line = one_error_line(err)
    assert "12 bad entries" in line and "too large" in line and "--max-image-pixels" in line
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------------ missing split


def test_missing_split_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = write_data(tmp_path / "d", ["train", None, "test", "val"])
    with pytest.raises(DataError, match=r'data\.jsonl line 2: missing key "split".*train'):
        prepare_dataset(f"jsonl:{path}")
    ds = prepare_dataset(f"jsonl:{path}:default-split=train")
    assert [it.split for it in ds.items] == ["train", "train", "test", "val"]
    with pytest.raises(ValueError, match="not an option of jsonl"):
        prepare_dataset(f"jsonl:{path}:all-train=yes")


@pytest.mark.filterwarnings("ignore:that is .* of train")  # a small carve
def test_a_file_without_any_split_gets_one_message_naming_both_fixes(tmp_path: Path) -> None:
    path = write_data(tmp_path / "d", [None] * 5)
    with pytest.raises(DataError) as e:
        prepare_dataset(f"jsonl:{path}")
    msg = str(e.value)
    assert msg.startswith(f'{path}: none of its 5 lines has a "split" key') and "line 1" not in msg
    assert f"jsonl:{path}:default-split=seeded" in msg and "default-split=train" in msg
    with pytest.raises(DataError, match="none of its 5 lines"):  # --skip-bad would drop them all
        prepare_dataset(f"jsonl:{path}", skip_bad=True)
    assert prepare_dataset(f"jsonl:{path}:default-split=seeded").items


def test_a_file_without_splits_and_other_problems_lists_both(tmp_path: Path) -> None:
    path = write_data(tmp_path / "d", [None] * 4)
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(DataError) as e:
        prepare_dataset(f"jsonl:{path}")
    lines = str(e.value).splitlines()
    assert "2 bad entries" in lines[0] and "none of its 4 lines" in lines[0]
    assert "line 5: invalid JSON" in lines[2]


# ------------------------------------------------------------------------- no val split


@pytest.mark.filterwarnings("ignore:that is .* of train")  # a small carve
def test_no_val_split_is_carved_from_train_by_group(tmp_path: Path) -> None:
    path = write_data(tmp_path / "d", ["train"] * 30 + ["test"] * 4)
    notes: list[str] = []
    ds = prepare_dataset(f"jsonl:{path}", seed=3, report=notes.append)
    val = [it for it in ds.items if it.split == "val"]
    assert 0 < len(val) < 30 and sum(it.split == "test" for it in ds.items) == 4
    assert ds.notes["val"]["images"] == len(val) and ds.notes["val"]["seed"] == 3
    assert any("no val split: carved" in n for n in notes)
    again = prepare_dataset(f"jsonl:{path}", seed=3, report=notes.append)
    assert [it.split for it in again.items] == [it.split for it in ds.items]  # seeded
    assert again.fingerprint == ds.fingerprint != ds.notes["source_fingerprint"]
    # a caller of the test split alone (index --split test) is not told of it, and the data
    # it gets is the same (the carve still decides the fingerprint and the splits)
    quiet: list[str] = []
    test_only = prepare_dataset(f"jsonl:{path}", seed=3, report=quiet.append, need_splits=("test",))
    assert quiet == [] and test_only.fingerprint == ds.fingerprint


def test_carve_keeps_groups_whole_and_leaves_some_train() -> None:
    from picoalign.data.base import ImageCaptionDataset

    items = [Item(f"k{i}", ("c",), "train", f"g{i % 3}") for i in range(9)]
    ds = carve_val(ImageCaptionDataset("t", items, lambda it: None, "fp"), fraction=0.1)
    by_group = {}
    for it in ds.items:
        by_group.setdefault(it.group, set()).add(it.split)
    assert all(len(s) == 1 for s in by_group.values())  # no group straddles train/val
    assert {"train", "val"} == set().union(*by_group.values())


def test_train_and_test_only_trains_and_records_the_carve(tmp_path: Path) -> None:
    path = write_data(tmp_path / "d", ["train"] * 10 + ["test"] * 3)
    rc, out, err = train(f"jsonl:{path}", tmp_path / "run")
    assert rc == 0, err
    assert "no val split: carved" in out
    meta = json.loads((tmp_path / "run" / "data.json").read_text())
    assert meta["data"]["val"]["carved_from"] == "train" and meta["data"]["val"]["images"] >= 1
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_strict_splits_refuse_before_any_work(tmp_path: Path) -> None:
    path = write_data(tmp_path / "d", ["train"] * 10 + ["test"] * 3)
    _, _, err = train(f"jsonl:{path}:val=strict", tmp_path / "run")
    line = one_error_line(err)
    assert "split 'val' is empty" in line and "val=strict" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    # an explicitly chosen eval split that exists is fine under strict
    rc, _, err = train(f"jsonl:{path}:val=strict", tmp_path / "run", "--set", "eval_split=test")
    assert rc == 0, err


def test_empty_test_split_is_an_early_error_for_evaluate(tmp_path: Path) -> None:
    path = write_data(tmp_path / "d", ["train"] * 8 + ["val"] * 2)
    assert train(f"jsonl:{path}", tmp_path / "run")[0] == 0
    _, _, err = run_cli("evaluate", "--checkpoint", str(tmp_path / "run"), "--json")
    assert "split 'test' is empty" in one_error_line(err)


def test_empty_eval_split_given_to_train_directly_is_an_error(tmp_path: Path) -> None:
    from picoalign.config import load_config
    from picoalign.features import dataset_features
    from picoalign.training.loop import train as train_fn

    path = write_data(tmp_path / "d", ["train"] * 6 + ["test"] * 2)
    fs = dataset_features(f"jsonl:{path}:val=strict", "random-conv", "hash-text", progress=False)
    cfg = load_config(None, {"out": str(tmp_path / "run"), "epochs": 1, "progress": False})
    with pytest.raises(ValueError, match=r"val split .* is empty"):
        train_fn(cfg, fs)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------- large images


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_168_megapixel_clip_art_loads_downscaled(tmp_path: Path) -> None:
    p = tmp_path / "clipart.png"
    im = Image.new("1", (12000, 14000), 1)
    im.paste(0, (0, 0, 6000, 14000))  # left half black
    im.save(p, optimize=True)
    assert p.stat().st_size < 2_000_000  # tiny on disk, 168 MP in the header
    probe_image(p)  # not refused, not decoded
    img = load_image(p)
    assert img.mode == "RGB" and 1024 <= max(img.size) < 2048
    assert img.getpixel((10, 10)) == (0, 0, 0) and img.getpixel((img.width - 10, 10)) == (
        255,
        255,
        255,
    )
    with pytest.raises(DataError, match=r"clipart\.png.*too large.*--max-image-pixels"):
        load_image(p, max_pixels=100_000_000)


def test_large_jpeg_decodes_at_reduced_scale(tmp_path: Path) -> None:
    p = tmp_path / "photo.jpg"
    Image.new("RGB", (4800, 3200), (200, 30, 30)).save(p, quality=50)
    img = load_image(p)
    assert 1024 <= max(img.size) < 2048 and img.size[0] / img.size[1] == pytest.approx(1.5, 0.01)
    assert load_image(p, decode_side=None).size == (4800, 3200)
    (tmp_path / "cut.jpg").write_bytes(p.read_bytes()[:2000])
    with pytest.raises(DataError, match=r"cut\.jpg.*truncated or corrupt"):
        probe_image(tmp_path / "cut.jpg")


def test_band_reduction_equals_whole_reduction(monkeypatch) -> None:
    import picoalign.data.images as images

    im = Image.new("P", (37, 53))
    im.putpalette([(i * 7) % 256 for i in range(768)])
    im.putdata([(x * 13 + y * 7) % 256 for y in range(53) for x in range(37)])
    monkeypatch.setattr(images, "BAND_ROWS", 8)
    whole = im.convert("RGB").reduce(3)
    assert np.array_equal(np.asarray(_reduce(im, 3)), np.asarray(whole))


@pytest.mark.parametrize("command", ["evaluate", "index"])
def test_without_data_evaluate_and_index_read_it_as_the_run_did(tmp_path: Path, command) -> None:
    """The user report: a run trained with --skip-bad could not be evaluated on its own data
    without repeating the flag (and with only one of two flags repeated, other data)."""
    path = write_data(tmp_path / "d", SPLITS, ["{oops"])
    assert train(f"jsonl:{path}", tmp_path / "run", "--skip-bad")[0] == 0
    extra = ["--out", str(tmp_path / "gallery"), "--no-progress"] if command == "index" else []
    rc, out, err = run_cli(command, str(tmp_path / "run"), *extra)
    assert rc == 0, err
    assert "skipped 1 bad entry" in out + err


def test_load_image_of_a_folder_says_so(tmp_path: Path) -> None:
    """Not Pillow's IsADirectoryError reported as a truncated or corrupt image."""
    with pytest.raises(DataError, match=r"^line 3: image .* is a folder, not an image file$"):
        load_image(tmp_path, where="line 3")


def test_the_carve_reports_the_share_it_took_and_warns_when_far_from_the_ask() -> None:
    """The walkthrough's report: "carved 12 images (… 3 of 6 groups, 10%)" moved two thirds
    of train: the 10% was the share asked for, not the one taken."""
    from picoalign.data.base import ImageCaptionDataset

    items = [Item(f"k{i}", ("c",), "train", f"g{i % 3}") for i in range(9)]
    notes: list[str] = []
    with pytest.warns(UserWarning, match=r"of train, not the 10% asked for") as caught:
        ds = carve_val(ImageCaptionDataset("t", items, lambda it: None, "fp"), fraction=0.1,
                       report=notes.append)  # fmt: skip
    taken = sum(it.split == "val" for it in ds.items)
    assert f"carved {taken} of 9 train images ({taken / 9:.0%}" in notes[0]
    assert str(caught[0].message).startswith(f"that is {taken / 9:.0%} of train")
    many = [Item(f"k{i}", ("c",), "train", f"g{i}") for i in range(400)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 400 groups: close to the ask, no warning
        carve_val(ImageCaptionDataset("t", many, lambda it: None, "fp"), fraction=0.1)


def test_many_problems_of_one_kind_are_counted_not_repeated() -> None:
    """The walkthrough's report: a 3,000-line file of image paths without captions printed
    3,000 lines of the same message before its one-line error."""
    from picoalign.data.base import DataProblems

    problems = [(f"d.jsonl line {i}", 'missing key "captions"') for i in range(1, 3001)]
    problems += [(f"d.jsonl line {i}", f"image file not found: /x/{i}.png") for i in (3001, 3002)]
    lines = DataProblems(problems).listing(first=20)
    assert len(lines) == 22
    assert lines[20] == '  ... and 2980 more like d.jsonl line 21: missing key "captions"'
    assert lines[21] == "  ... and 2 more like d.jsonl line 3001: image file not found: /x/3001.png"
    assert len(DataProblems(problems[:5]).listing()) == 5


def test_leaks_between_splits_are_caught(tmp_path: Path) -> None:
    """The walkthrough's reports: one file named once relatively and once absolutely, in train
    and in test, was not a duplicate; a group (what must stay in one split) spread over train
    and test passed without a word."""
    path = write_data(tmp_path / "d", ["train"] * 5 + ["val", "test", "test"])
    same = {"image": str(tmp_path / "d" / "img0.png"), "captions": ["x"], "split": "test"}
    path.write_text(path.read_text() + json.dumps(same) + "\n")
    with pytest.raises(DataError, match=r"line 9: duplicate image .*the same file as .*line 1"):
        prepare_dataset(f"jsonl:{path}")
    lines = [json.loads(x) for x in path.read_text().splitlines()[:8]]
    for rec in lines:
        rec["group"] = "shapes" if rec["image"] in ("img0.png", "img7.png") else rec["image"]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.warns(UserWarning, match="1 group has items in more than one split") as w:
        prepare_dataset(f"jsonl:{path}", need_splits=("train", "val"))
    assert "'shapes': test, train" in str(w[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # evaluate/index read the data too: not theirs to say
        prepare_dataset(f"jsonl:{path}", need_splits=("test",))


def _png_with_broken_data(path: Path) -> None:
    """A PNG whose chunks and checksums are intact but whose deflate stream is not: the
    header check (``verify``) passes it, decoding fails."""
    import struct
    import zlib

    Image.new("RGB", (16, 16), (200, 0, 0)).save(path)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"IDAT")
    length = struct.unpack(">I", raw[at - 4 : at])[0]
    start = at + 4
    for i in range(start + 2, start + length):  # keep the zlib header, break the stream
        raw[i] ^= 0x5A
    crc = zlib.crc32(bytes(raw[at : start + length])) & 0xFFFFFFFF
    raw[start + length : start + length + 4] = struct.pack(">I", crc)
    path.write_bytes(bytes(raw))


def test_skip_bad_skips_an_image_whose_header_is_intact_but_data_is_not(tmp_path: Path) -> None:
    """The walkthrough's report: a PNG with valid checksums over broken data passed the data
    check, then failed encoding with or without --skip-bad, and nothing said what to do."""
    data = write_data(tmp_path / "d", ["train"] * 6 + ["val", "test"])
    _png_with_broken_data(tmp_path / "d" / "img2.png")
    probe_image(tmp_path / "d" / "img2.png")  # the header check passes it
    with pytest.raises(DataError, match="truncated or corrupt"):
        probe_image(tmp_path / "d" / "img2.png", decode=True)
    rc, _, err = train(f"jsonl:{data}", tmp_path / "run")
    line = one_error_line(err)
    assert "line 3" in line and "pass --skip-bad, or remove the entry" in line
    assert not (tmp_path / "run").exists()
    rc, out, err = train(f"jsonl:{data}", tmp_path / "run", "--skip-bad")
    assert rc == 0, err
    assert "skipped 1 bad entry" in out and "line 3" in out
