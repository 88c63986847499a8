"""File formats on tiny fixtures built here: jsonl, Karpathy JSON, LAPS, precomputed features."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from picoalign.data import DataError, jsonl, karpathy, laps, precomp, seeded_split
from picoalign.data.base import DataProblems


def write_png(path: Path, color: tuple[int, int, int] = (255, 0, 0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), color).save(path)
    return path


def write_jsonl(path: Path, lines: list[str | dict | bytes]) -> Path:
    out = b""
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        out += (line if isinstance(line, bytes) else line.encode()) + b"\n"
    path.write_bytes(out)
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    for name in ("a", "b", "c"):
        write_png(tmp_path / "imgs" / f"{name}.png")
    return tmp_path


# --------------------------------------------------------------------------- jsonl


def test_jsonl_happy_path(images: Path) -> None:
    absolute = str(images / "imgs" / "c.png")
    p = write_jsonl(
        images / "data.jsonl",
        [
            {"image": "imgs/a.png", "captions": ["a red  square", "red"], "split": "train"},
            "",
            "   ",
            {"image": "./imgs/b.png", "captions": ["b"], "group": "squares"},
            {"image": absolute, "caption": "c", "split": "dev"},
        ],
    )
    ds = jsonl(p, default_split="seeded")
    assert [it.key for it in ds.items] == ["imgs/a.png", "imgs/b.png", absolute]
    a, b, c = ds.items
    assert a.captions == ("a red square", "red") and a.split == "train"
    assert b.group == "squares" and b.split == seeded_split("squares", 0)
    assert c.split == "val" and c.captions == ("c",)
    assert ds.n_captions == 4 and ds.root == images
    assert ds.load(a).mode == "RGB"


def test_jsonl_seeded_split_is_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    lines = []
    for i in range(40):
        write_png(tmp_path / f"{i}.png")
        lines.append({"image": f"{i}.png", "captions": [f"image {i}"]})
    p = write_jsonl(tmp_path / "d.jsonl", lines)
    s0 = [it.split for it in jsonl(p, seed=0, default_split="seeded").items]
    assert s0 == [it.split for it in jsonl(p, seed=0, default_split="seeded").items]
    assert s0 != [it.split for it in jsonl(p, seed=1, default_split="seeded").items]
    assert s0 == [seeded_split(f"{i}.png", 0) for i in range(40)]
    assert (
        jsonl(p, seed=0, default_split="seeded").fingerprint
        != jsonl(p, seed=1, default_split="seeded").fingerprint
    )


BAD_LINES = [
    ('{"image": "imgs/a.png", "captions": ["x"]', "invalid JSON"),
    ('["imgs/a.png"]', "expected a JSON object"),
    ('{"captions": ["x"]}', 'missing key "image"'),
    ('{"image": "imgs/a.png"}', 'missing key "captions"'),
    ('{"image": 3, "captions": ["x"]}', '"image" must be'),
    ('{"image": "imgs/a.png", "captions": "x"}', "non-empty list"),
    ('{"image": "imgs/a.png", "captions": []}', r"non-empty list of strings \(got an empty list\)"),
    ('{"image": "imgs/a.png", "captions": ["ok", 5]}', r"\[1\] must be a string"),
    ('{"image": "imgs/a.png", "captions": ["ok", "  "]}', r"\[1\] is empty"),
    ('{"image": "imgs/missing.png", "captions": ["x"]}', "image file not found"),
    ('{"image": "../../etc/passwd", "captions": ["x"]}', "escapes the dataset root.*absolute"),
    ('{"image": "imgs/../../x.png", "captions": ["x"]}', "escapes the dataset root"),
    ('{"image": "imgs/a.png", "captions": ["x"], "split": "tain"}', "split must be one of"),
    ('{"image": "imgs", "captions": ["x"]}', "not a file"),
    (b'{"image": "imgs/a.png", "captions": ["caf\xe9"]}', "not valid UTF-8"),
    # json keeps the last of two equal keys: a training image went into the test set
    (
        '{"image": "imgs/a.png", "captions": ["x"], "split": "train", "split": "test"}',
        'key "split" given twice',
    ),
]


@pytest.mark.parametrize("line,why", BAD_LINES)
def test_jsonl_bad_line_names_file_and_line(images: Path, line: str | bytes, why: str) -> None:
    good = {"image": "imgs/b.png", "captions": ["fine"]}
    p = write_jsonl(images / "data.jsonl", [good, "", line])
    with pytest.raises(DataError, match=rf"data\.jsonl line 3: .*{why}"):
        jsonl(p, default_split="train")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(captions=st.lists(st.text(min_size=1).filter(str.strip), min_size=1, max_size=4))
def test_jsonl_any_unicode_caption_roundtrips(tmp_path_factory, captions: list[str]) -> None:
    d = tmp_path_factory.mktemp("uni")
    write_png(d / "a.png")
    rec = {"image": "a.png", "captions": captions}
    (d / "d.jsonl").write_text(json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf-8")
    assert jsonl(d / "d.jsonl", default_split="train").items[0].captions == tuple(
        " ".join(c.split()) for c in captions
    )


def test_jsonl_duplicate_image(images: Path) -> None:
    rec = {"image": "imgs/a.png", "captions": ["x"]}
    p = write_jsonl(images / "data.jsonl", [rec, {**rec, "image": "./imgs/a.png"}])
    with pytest.raises(DataError, match=r"data\.jsonl line 2: duplicate image.*line 1"):
        jsonl(p, default_split="train")


def test_jsonl_one_caption_per_line_is_merged_per_image(images: Path) -> None:
    """The walkthrough's report: a JSONL made from a CSV, one line per (image, caption) with
    "caption", was refused line by line as duplicates, and --skip-bad then dropped half."""
    a, b = "imgs/a.png", "imgs/b.png"
    lines = [
        {"image": a, "caption": "a red one", "split": "train"},
        {"image": b, "caption": "a blue one", "split": "test"},
        {"image": a, "caption": "red, again", "split": "train"},
    ]
    ds = jsonl(write_jsonl(images / "data.jsonl", lines))
    assert [(it.key, it.captions, it.split) for it in ds.items] == [
        (a, ("a red one", "red, again"), "train"), (b, ("a blue one",), "test"),
    ]  # fmt: skip
    leak = [*lines, {"image": b, "caption": "blue", "split": "train"}]
    with pytest.raises(DataError, match=r"line 4: image 'imgs/b.png' is split 'test'.*line 2"):
        jsonl(write_jsonl(images / "leak.jsonl", leak))
    mixed = [{"image": a, "captions": ["x"], "split": "train"}, lines[0]]
    with pytest.raises(DataError, match=r'line 2: duplicate image .*captions in "captions"'):
        jsonl(write_jsonl(images / "mixed.jsonl", mixed))
    both = [{"image": a, "caption": "x", "captions": ["y"], "split": "train"}]
    with pytest.raises(DataError, match=r'both "caption" and "captions"'):
        jsonl(write_jsonl(images / "both.jsonl", both))


def test_jsonl_messages_name_a_misspelt_key_and_a_null_line(images: Path) -> None:
    """The walkthrough's report: "imag" gave 'missing key "image"' without naming the key the
    line did have, and a null line was "got NoneType"."""
    lines = [{"imag": "imgs/a.png", "captions": ["x"], "split": "train"}, b"null",
             {"image": "imgs/b.png", "captons": ["x"], "split": "train", "id": 7},
             {"image": "imgs/c.png", "captions": ["x"], "split": "train", "id": 8}]  # fmt: skip
    ds = jsonl(write_jsonl(images / "data.jsonl", lines), skip_bad=True)
    whys = [why for _, why in ds.skipped]
    assert whys[0] == "missing key \"image\" (the line has unknown key 'imag': a typo?)"
    assert whys[1] == "expected a JSON object, got null"
    assert whys[2].startswith('missing key "captions"') and "'captons'" in whys[2]
    assert [it.key for it in ds.items] == ["imgs/c.png"]  # extra keys ("id"): fine


def test_jsonl_skip_bad_collects(images: Path) -> None:
    lines = [line for line, _ in BAD_LINES] + [{"image": "imgs/a.png", "captions": ["ok"]}]
    ds = jsonl(write_jsonl(images / "data.jsonl", lines), skip_bad=True, default_split="train")
    assert [it.key for it in ds.items] == ["imgs/a.png"]
    assert len(ds.skipped) == len(BAD_LINES)
    for n, ((where, why), (_, expected)) in enumerate(zip(ds.skipped, BAD_LINES, strict=True)):
        assert where.endswith(f"data.jsonl line {n + 1}")
        assert re.search(expected, why), (why, expected)


def test_jsonl_all_bad_or_empty(images: Path) -> None:
    with pytest.raises(DataError, match=r"data\.jsonl: no usable items.*1 bad"):
        jsonl(write_jsonl(images / "data.jsonl", ["{oops"]), skip_bad=True)
    with pytest.raises(DataError, match="no usable items"):
        jsonl(write_jsonl(images / "data.jsonl", ["", ""]))
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        jsonl(images / "nope.jsonl")


def test_jsonl_decoding_is_lazy_and_errors_name_the_line(images: Path) -> None:
    (images / "imgs" / "broken.png").write_bytes(b"")
    p = write_jsonl(
        images / "data.jsonl",
        [
            {"image": "imgs/a.png", "captions": ["a"]},
            {"image": "imgs/broken.png", "captions": ["b"]},
        ],
    )
    ds = jsonl(p, default_split="train")  # builds: the zero-byte file exists
    with pytest.raises(DataError, match=r"data\.jsonl line 2: image .*broken\.png: empty file"):
        ds.load(ds.items[1])


def test_jsonl_root_option(tmp_path: Path) -> None:
    write_png(tmp_path / "root" / "x.png")
    (tmp_path / "meta").mkdir()
    p = write_jsonl(tmp_path / "meta" / "d.jsonl", [{"image": "x.png", "captions": ["x"]}])
    assert len(jsonl(p, root=tmp_path / "root", default_split="train")) == 1
    with pytest.raises(DataError, match="image file not found"):
        jsonl(p, default_split="train")


def test_split_view_keeps_fields(images: Path) -> None:
    p = write_jsonl(
        images / "data.jsonl",
        [{"image": f"imgs/{n}.png", "captions": [n], "split": "test"} for n in "abc"],
    )
    ds = jsonl(p, default_split="train")
    test = ds.split("test")
    assert len(test) == 3 and len(ds.split("train")) == 0 and test.root == ds.root
    assert test.fingerprint != ds.fingerprint and test.load(test.items[0]).size == (4, 4)


def test_datasets_pickle_for_worker_processes(images: Path) -> None:
    p = write_jsonl(images / "data.jsonl", [{"image": "imgs/a.png", "captions": ["a"]}])
    ds = pickle.loads(pickle.dumps(jsonl(p, default_split="train")))
    assert ds.load(ds.items[0]).size == (4, 4)


# --------------------------------------------------------------------------- Karpathy


def test_karpathy(images: Path) -> None:
    data = {
        "images": [
            {
                "filename": "a.png",
                "filepath": "imgs",
                "split": "train",
                "imgid": 0,
                "sentences": [{"raw": "A red square."}, {"raw": "Red."}],
            },
            {
                "filename": "b.png",
                "filepath": "imgs",
                "split": "restval",
                "sentences": [{"tokens": ["a", "b"]}],
            },
            {
                "filename": "c.png",
                "filepath": "imgs",
                "split": "test",
                "sentences": [{"raw": "c"}],
            },
        ]
    }
    p = images / "dataset_flickr30k.json"
    p.write_text(json.dumps(data))
    ds = karpathy(p, images)
    assert [(it.key, it.split) for it in ds.items] == [
        ("imgs/a.png", "train"),
        ("imgs/b.png", "train"),
        ("imgs/c.png", "test"),
    ]
    assert ds.items[0].captions == ("A red square.", "Red.") and ds.items[1].captions == ("a b",)
    assert ds.load(ds.items[2]).mode == "RGB"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(data).encode())  # a Windows editor's BOM
    assert [it.key for it in karpathy(p, images).items] == [it.key for it in ds.items]

    data["images"][1]["sentences"] = [{"raw": " "}]
    p.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"dataset_flickr30k\.json images\[1\]: .*is empty"):
        karpathy(p, images)
    ds = karpathy(p, images, skip_bad=True)
    assert len(ds) == 2 and ds.skipped[0][0].endswith("images[1]")
    # a blank "raw" with tokens reads the tokens, as a missing "raw" does (the walkthrough)
    data["images"][1]["sentences"] = [{"raw": "", "tokens": ["a", "b"]}, {"raw": " ", "tokens": []}]
    p.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"images\[1\]: .*is empty"):  # the second one
        karpathy(p, images)
    data["images"][1]["sentences"] = [{"raw": "", "tokens": ["a", "b"]}]
    p.write_text(json.dumps(data))
    assert karpathy(p, images).items[1].captions == ("a b",)
    data["images"][1] = {"filename": "zz.png", "split": "val", "sentences": [{"raw": "z"}]}
    p.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"images\[1\]: image file not found"):
        karpathy(p, images)
    assert len(karpathy(p, images, check_files=False)) == 3
    p.write_text("{not json")
    with pytest.raises(DataError, match=r"dataset_flickr30k\.json: not a readable"):
        karpathy(p, images)
    p.write_text('{"images": [], "images": []}')  # json keeps the last, without a word
    with pytest.raises(DataError, match=r'key "images" given twice in one object'):
        karpathy(p, images)


# --------------------------------------------------------------------------- LAPS


def make_laps(root: Path, per_caption_ids: bool) -> Path:
    d = root / "f30k"
    (d / "precomp").mkdir(parents=True)
    for i in range(4):
        write_png(root / "imgs" / f"{i}.jpg")
    (d / "id_mapping.json").write_text(json.dumps({str(100 + i): f"{i}.jpg" for i in range(4)}))
    splits = {"train": [100, 101], "dev": [102], "test": [103]}
    for split, ids in splits.items():
        caps = [f"image {i} caption {k}" for i in ids for k in range(5)]
        id_lines = [i for i in ids for _ in range(5)] if per_caption_ids else ids
        (d / "precomp" / f"{split}_caps.txt").write_text("\n".join(caps) + "\n")
        (d / "precomp" / f"{split}_ids.txt").write_text("\n".join(map(str, id_lines)) + "\n")
    return d


@pytest.mark.parametrize("per_caption_ids", [False, True])
def test_laps(tmp_path: Path, per_caption_ids: bool) -> None:
    d = make_laps(tmp_path, per_caption_ids)
    ds = laps(d, tmp_path / "imgs")
    assert [(it.key, it.split) for it in ds.items] == [
        ("0.jpg", "train"),
        ("1.jpg", "train"),
        ("2.jpg", "val"),
        ("3.jpg", "test"),
    ]
    assert ds.items[1].captions == tuple(f"image 101 caption {k}" for k in range(5))
    assert ds.load(ds.items[0]).size == (4, 4)


def test_laps_errors(tmp_path: Path) -> None:
    d = make_laps(tmp_path, False)
    caps = d / "precomp" / "dev_caps.txt"
    caps.write_text("a\nb\n\nd\ne\n")
    with pytest.raises(DataError, match=r"dev_caps\.txt line 3: empty caption"):
        laps(d, tmp_path / "imgs")
    ds = laps(d, tmp_path / "imgs", skip_bad=True)
    assert next(it for it in ds.items if it.split == "val").captions == ("a", "b", "d", "e")
    caps.write_bytes(b"a\nb\nc\xff\nd\ne\n")
    with pytest.raises(DataError, match=r"dev_caps\.txt line 3: not valid UTF-8"):
        laps(d, tmp_path / "imgs")
    caps.write_text("a\nb\nc\n")
    (d / "precomp" / "dev_ids.txt").write_text("102\n999\n")
    with pytest.raises(DataError, match=r"dev_caps\.txt: 3 captions do not fit 2 ids"):
        laps(d, tmp_path / "imgs")
    caps.write_text("")  # 0 % 2 is 0: an empty caption file dropped the split silently
    with pytest.raises(DataError, match=r"dev_caps\.txt: 0 captions do not fit 2 ids"):
        laps(d, tmp_path / "imgs")
    caps.write_text("a\nb\n")
    with pytest.raises(DataError, match=r"dev_ids\.txt line 2: image id '999' is not in"):
        laps(d, tmp_path / "imgs")
    (d / "id_mapping.json").unlink()
    with pytest.raises(DataError, match=r"no id_mapping\.json"):
        laps(d, tmp_path / "imgs")
    with pytest.raises(DataError, match="no split files"):
        laps(tmp_path / "imgs", tmp_path / "imgs")


# --------------------------------------------------------------------------- precomp


def test_precomp_npy(tmp_path: Path) -> None:
    feats = np.arange(3 * 4 * 2, dtype=np.float32).reshape(3, 4, 2)
    np.save(tmp_path / "train_ims.npy", feats)
    (tmp_path / "train_caps.txt").write_text("\n".join(f"c{i}" for i in range(15)) + "\n")
    np.save(tmp_path / "testall_ims.npy", feats[:1, :, :])
    (tmp_path / "testall_caps.txt").write_text("only\n")
    with pytest.warns(UserWarning, match=r"testall_caps.txt has 1 per row of testall_ims.npy"):
        ds = precomp(tmp_path)  # 5 captions per row in train, 1 in test: said, and read
    assert [it.key for it in ds.items] == ["train:0", "train:1", "train:2", "test:0"]
    assert ds.items[1].captions == ("c5", "c6", "c7", "c8", "c9")
    assert ds.items[3].source == "precomp:test:0" and ds.items[3].split == "test"
    tokens, mask = ds.image_features(["train:2", "test:0"])
    assert tokens.dtype == np.float32 and tokens.shape == (2, 4, 2) and mask.all()
    np.testing.assert_array_equal(tokens[0], feats[2])
    test = ds.split("test")  # the view keeps the features
    np.testing.assert_array_equal(test.image_features(["test:0"])[0][0], feats[0])
    with pytest.raises(DataError, match="precomputed features have no image"):
        ds.load(ds.items[0])
    with pytest.raises(DataError, match="not a precomputed-feature key"):
        ds.image_features(["dog.png"])
    assert pickle.loads(pickle.dumps(ds.features)).shape("train") == (3, 4, 2)
    (tmp_path / "train_caps.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match=r"train_caps\.txt: 2 captions do not fit 3 feature rows"):
        precomp(tmp_path)


def test_precomp_safetensors_with_mask_and_padding(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    d = tmp_path / "coco" / "precomp"
    d.mkdir(parents=True)
    tokens = np.ones((2, 3, 4), np.float32)
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.uint8)
    save_file({"images": tokens, "mask": mask}, str(d / "train_ims.safetensors"))
    (d / "train_caps.txt").write_text("x\ny\n")
    save_file({"images": np.ones((1, 5, 4), np.float32)}, str(d / "dev_ims.safetensors"))
    (d / "dev_caps.txt").write_text("z\n")
    ds = precomp(tmp_path / "coco")
    assert [(it.key, it.captions) for it in ds.items] == [
        ("train:0", ("x",)),
        ("train:1", ("y",)),
        ("val:0", ("z",)),
    ]
    t, m = ds.image_features(["train:1", "val:0"])
    assert t.shape == (2, 5, 4)
    assert m.tolist() == [[True, False, False, False, False], [True] * 5]
    save_file({"feats": tokens}, str(d / "train_ims.safetensors"))
    with pytest.raises(DataError, match=r"train_ims\.safetensors: no 'images' tensor"):
        precomp(tmp_path / "coco")


def _scan_folder(root: Path, rows: int = 4, per: int = 5, width: int = 6) -> Path:
    """A SCAN-style folder: train/dev/test ``_ims.npy`` (rows x 3 x width, distinct rows)
    and ``_caps.txt`` with ``per`` captions per row."""
    root.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(0)
    for split in ("train", "dev", "test"):
        np.save(root / f"{split}_ims.npy", gen.standard_normal((rows, 3, width), np.float32))
        caps = [f"{split} {r} {k}" for r in range(rows) for k in range(per)]
        (root / f"{split}_caps.txt").write_text("\n".join(caps) + "\n")
    return root


def test_precomp_refuses_each_image_saved_once_per_caption(tmp_path: Path) -> None:
    """The walkthrough: VSE++'s "redundant" files repeat each image per caption; read as
    they are, copies were each other's negatives and text-to-image R@1 fell to 0."""
    d = _scan_folder(tmp_path / "d")
    feats = np.load(d / "test_ims.npy")
    np.save(d / "test_ims.npy", np.repeat(feats, 5, axis=0))  # 20 rows for 20 captions
    with pytest.raises(
        DataError, match=r"test_ims.npy: rows 0-4 are identical, and so are rows 5-9.*a\[::5\]"
    ):
        precomp(d)
    two_alike = np.concatenate([feats[:1], feats[:1], feats[1:]])  # one duplicate image
    (d / "test_caps.txt").write_text("".join(f"c{i}\n" for i in range(5)))
    np.save(d / "test_ims.npy", two_alike)
    with pytest.warns(UserWarning, match="captions per feature row"):
        assert len(precomp(d).items) == 4 + 4 + 5  # rows 0, 1 alike but row 2 differs: kept


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_precomp_the_printed_fix_for_repeated_rows_works(tmp_path: Path, suffix: str) -> None:
    """The re-test: the printed command was np.load's, which cannot read a .safetensors file."""
    import re
    import subprocess
    import sys

    from safetensors.numpy import save_file

    d = _scan_folder(tmp_path / "d")
    feats = np.load(d / "test_ims.npy")
    (d / "test_ims.npy").unlink()
    repeated = np.repeat(feats, 5, axis=0)
    if suffix == ".npy":
        np.save(d / "test_ims.npy", repeated)
    else:
        save_file({"images": repeated}, str(d / "test_ims.safetensors"))
    with pytest.raises(DataError, match="keep the first row of each 5") as e:
        precomp(d)
    command = re.search(r'python -c "(.*)", then put', str(e.value)).group(1)
    subprocess.run([sys.executable, "-c", command], cwd=d, check=True)
    (d / f"test_ims_dedup{suffix}").replace(d / f"test_ims{suffix}")
    (d / "test_caps.txt").write_text("".join(f"t {i}\n" for i in range(20)))  # 5 a row
    ds = precomp(d)
    np.testing.assert_array_equal(ds.image_features(["test:3"])[0][0], feats[3])


def test_precomp_warns_when_a_split_has_other_captions_per_row(tmp_path: Path) -> None:
    """A test file short by whole rows (16 lines for 4 rows of 5) was read as 4 per row and
    paired every image but the first with the wrong captions, without a word."""
    d = _scan_folder(tmp_path / "d")
    lines = (d / "test_caps.txt").read_text().splitlines()[:16]
    (d / "test_caps.txt").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"test_caps.txt has 4 per row of test_ims.npy"):
        precomp(d)


def test_precomp_names_each_file_when_the_splits_differ_in_width(tmp_path: Path) -> None:
    d = _scan_folder(tmp_path / "d")
    np.save(d / "test_ims.npy", np.load(d / "test_ims.npy").transpose(0, 2, 1).copy())
    with pytest.raises(DataError, match=r"differ in channel count.*test_ims.npy is 4 x 6 x 3"):
        precomp(d)


@pytest.mark.parametrize(
    ("value", "said"), [(np.nan, "row 2 holds NaN or Inf"), (1e5, "row 2 holds values up to 1e")]
)
def test_precomp_names_the_file_and_row_of_bad_values(tmp_path: Path, value, said) -> None:
    d = _scan_folder(tmp_path / "d")
    feats = np.load(d / "train_ims.npy")
    feats[2, 1, 0] = value
    np.save(d / "train_ims.npy", feats)
    ds = precomp(d)
    ds.image_features(["train:1"])  # the other rows read
    with pytest.raises(DataError, match=rf"train_ims.npy: {said}"):
        ds.image_features(["train:2"])


def test_precomp_a_row_whose_mask_marks_no_token_is_a_bad_record(tmp_path: Path) -> None:
    """Caught only at the first training step before, as "image 16" (its batch position)."""
    from safetensors.numpy import save_file

    d = _scan_folder(tmp_path / "d")
    feats = np.load(d / "train_ims.npy")
    (d / "train_ims.npy").unlink()
    mask = np.ones(feats.shape[:2], np.uint8)
    mask[3] = 0
    save_file({"images": feats, "mask": mask}, str(d / "train_ims.safetensors"))
    with pytest.raises(DataProblems) as e:
        precomp(d)
    assert [(w.endswith("train_ims.safetensors: row 3"), y) for w, y in e.value.problems] == [
        (True, "its mask marks no real token")
    ]
    kept = precomp(d, skip_bad=True)
    assert [it.key for it in kept.items if it.split == "train"] == ["train:0", "train:1", "train:2"]


def test_precomp_a_split_file_without_its_partner_is_named(tmp_path: Path) -> None:
    """The walkthrough: a misnamed train_caps.txt said only "split 'train' is empty", and a
    misnamed test_caps.txt went unnoticed until evaluate."""
    d = _scan_folder(tmp_path / "d")
    (d / "test_caps.txt").rename(d / "test_captions.txt")
    with pytest.raises(
        DataError, match=r"d/test_ims.npy: its partner is missing: no test_caps.txt"
    ):
        precomp(d)
    (d / "test_captions.txt").rename(d / "test_caps.txt")
    (d / "train_ims.npy").rename(d / "train_feats.npy")
    with pytest.raises(
        DataError, match=r"train_caps.txt: its partner is missing: no train_ims.npy or train_ims.s"
    ):
        precomp(d)


def test_precomp_corrupt_npy(tmp_path: Path) -> None:
    (tmp_path / "train_ims.npy").write_bytes(b"garbage")
    (tmp_path / "train_caps.txt").write_text("x\n")
    with pytest.raises(DataError, match=r"train_ims\.npy: cannot read features"):
        precomp(tmp_path)


def test_image_dataset_has_no_features(images: Path) -> None:
    p = write_jsonl(images / "data.jsonl", [{"image": "imgs/a.png", "captions": ["a"]}])
    with pytest.raises(DataError, match="has images, not precomputed features"):
        jsonl(p, default_split="train").image_features(["imgs/a.png"])


def test_a_missing_image_folder_is_one_line(images: Path) -> None:
    """The walkthrough's report: a Karpathy spec whose IMAGE_ROOT does not exist listed
    twenty "image file not found" lines and a summary."""
    p = images / "k.json"
    rec = {"filename": "a.png", "split": "train", "sentences": [{"raw": "a"}]}
    p.write_text(json.dumps({"images": [rec]}))
    with pytest.raises(DataError, match=r"^image folder .*nowhere: no such folder \(IMAGE_ROOT"):
        karpathy(p, images / "nowhere")
    with pytest.raises(DataError, match=r"is a file, not a folder"):
        karpathy(p, p)


def test_karpathy_messages_name_coco_keys_and_plain_string_sentences(images: Path) -> None:
    """The walkthrough's report: COCO's "file_name" and plain-string sentences were reported
    as a missing "filename" and a missing "raw", with no word of what the record did hold."""
    from picoalign.data.formats import _karpathy_record

    coco = {"file_name": "a.png", "split": "train", "sentences": [{"raw": "x"}]}
    with pytest.raises(DataError, match='it has "file_name", the COCO annotations'):
        _karpathy_record(coco, images / "imgs")
    plain = {"filename": "a.png", "split": "train", "sentences": ["a dog"]}
    with pytest.raises(DataError, match="it is a plain string: Karpathy's are objects"):
        _karpathy_record(plain, images / "imgs")
    climbs = {"filename": "../a.png", "split": "train", "sentences": [{"raw": "x"}]}
    with pytest.raises(DataError, match=r"escapes the dataset root .* \(the image folder\)"):
        _karpathy_record(climbs, images / "imgs")


def test_jsonl_caption_lines_name_what_is_wrong(images: Path) -> None:
    """The re-test's report: a group mismatch said "one split", a caption line without a
    split got a merge error, and typos of "split" and "caption" got no hint."""
    a = "imgs/a.png"
    cases = [
        ([{"image": a, "caption": "x", "split": "train", "group": "g1"},
          {"image": a, "caption": "y", "split": "train", "group": "g2"}],
         r"line 2: image 'imgs/a.png' is group 'g1' at .* but 'g2' here: one image, one group"),
        ([{"image": a, "caption": "x", "split": "train"}, {"image": a, "caption": "y"}],
         r'line 2: missing key "split" \(expected one of'),
        ([{"image": a, "caption": "x", "splt": "train"}],
         r"missing key \"split\" \(the line has unknown key 'splt': a typo\?\)"),
        ([{"image": a, "captoin": "x", "split": "train"}],
         r'missing key "captions" \(a list of strings\) or "caption" \(one string\) '
         r"\(the line has unknown key 'captoin'"),
        ([{"image": a, "caption": ["x"], "split": "train"}],
         r'"caption" must be a non-empty string \(got a list\)'),
    ]  # fmt: skip
    for i, (lines, message) in enumerate(cases):
        with pytest.raises(DataError, match=message):
            jsonl(write_jsonl(images / f"d{i}.jsonl", [*lines, {"image": "imgs/c.png",
                  "captions": ["ok"], "split": "train"}]))  # fmt: skip


def test_a_split_is_read_in_any_case_and_a_wrong_one_lists_every_spelling() -> None:
    """The CLI walkthrough: "Validation" was refused with "must be one of train, val, test",
    although "validation" was accepted, and the message named none of the other spellings."""
    from picoalign.data.records import split_value

    assert [split_value(s) for s in ("Validation", " TEST ", "Dev", "restval")] == [
        "val",
        "test",
        "val",
        "train",
    ]
    with pytest.raises(DataError, match=r"train, val, test \(or dev, valid, validation, restval"):
        split_value("tain")
    with pytest.raises(DataError, match="got 3"):
        split_value(3)
    with pytest.raises(DataError, match=r"got \['train'\]"):  # was "unhashable type"
        split_value(["train"])
