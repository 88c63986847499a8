"""Hostile input through the CLI: every bad file, image, caption or path gives one clear error
line (or, with ``--skip-bad``, a reported skip) — never a traceback, never a half-written run.

Each case is a small valid JSONL dataset plus one bad entry, trained on with the test encoders.
"""

from __future__ import annotations

import io
import json
import random
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_runner import run_cli

ENCODERS = ["--image-encoder", "random-conv", "--text-encoder", "hash-text"]


def _png_bomb(path: Path, side: int = 20_000) -> None:
    """A real 20000×20000 greyscale PNG of a few hundred kB: the IHDR claims 400 MP and the
    zlib stream inflates to 400 MB of zeros (written by hand: PIL would need the pixels)."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + one byte per pixel
    idat = b"".join(raw.compress(row) for _ in range(side)) + raw.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _write_bad_image(kind: str, path: Path) -> None:
    good = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(good, format="PNG")
    data = good.getvalue()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt":
        rng = random.Random(0)
        path.write_bytes(data[:16] + bytes(rng.randrange(256) for _ in range(400)))
    elif kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "not-an-image":
        path.write_text("hello, I am a text file named .png\n")
    elif kind == "bomb":
        _png_bomb(path)
    else:
        raise AssertionError(kind)


def _write_odd_mode(kind: str, path: Path) -> None:
    """Valid images in modes a naive ``Image.open(...).convert`` path gets wrong or crashes on."""
    grad = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    if kind == "cmyk-jpeg":
        Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, format="JPEG")
    elif kind == "16-bit-png":
        Image.fromarray((grad * 65535).astype(np.uint16)).save(path, format="PNG")
    elif kind == "palette-alpha-png":
        img = Image.new("P", (32, 32), 1)
        img.putpalette([255, 255, 255, 255, 0, 0] + [0] * 762)
        img.info["transparency"] = 1
        img.save(path, format="PNG", transparency=1)
    elif kind == "la-png":
        Image.new("LA", (32, 32), (40, 128)).save(path, format="PNG")
    else:
        raise AssertionError(kind)


@pytest.fixture
def dataset(tmp_path: Path, write_jsonl_dataset):
    """A valid 12-image dataset; returns (jsonl path, list of its lines)."""
    path = write_jsonl_dataset(tmp_path / "data", n=12)
    return path, path.read_text().splitlines()


def _train(data: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(
        "train",
        "--data",
        f"jsonl:{data}",
        *ENCODERS,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--no-progress",
        "--set",
        "model.embed_dim=8",
        "--out",
        str(out),
        *extra,
    )


def _assert_one_line_error(rc: int, out: str, err: str, *expect: str) -> None:
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("picoalign: error: "), err
    for e in expect:
        assert e in lines[0], lines[0]


def _assert_nothing_written(out: Path, tmp: Path) -> None:
    assert not (out / "last").exists() and not (out / "best").exists()
    assert not [p for p in tmp.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PICOALIGN_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------- bad image files


@pytest.mark.parametrize(
    ("kind", "expect"),
    [
        ("truncated", "bad.png"),
        ("corrupt", "bad.png"),
        ("zero-byte", "empty file"),
        ("not-an-image", "bad.png"),
        ("bomb", "bad.png"),
    ],
)
def test_bad_image_file_is_a_clear_error_or_a_reported_skip(
    kind: str, expect: str, dataset, tmp_path: Path
) -> None:
    path, lines = dataset
    _write_bad_image(kind, path.parent / "bad.png")
    bad = {"image": "bad.png", "captions": ["a broken picture"], "split": "train"}
    path.write_text("\n".join([*lines, json.dumps(bad)]) + "\n")

    rc, out, err = _train(path, tmp_path / "run")
    _assert_one_line_error(rc, out, err, expect)
    _assert_nothing_written(tmp_path / "run", tmp_path)

    rc, out, err = _train(path, tmp_path / "run", "--skip-bad")
    assert rc == 0, err
    assert "skipped 1 bad entry" in out and "bad.png" in out
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_png_bomb_is_refused_before_decoding(dataset, tmp_path: Path) -> None:
    import tracemalloc

    from picoalign.data.base import DataError
    from picoalign.data.images import load_image

    _png_bomb(tmp_path / "bomb.png")
    tracemalloc.start()
    with pytest.raises(DataError, match=r"bomb\.png"):
        load_image(tmp_path / "bomb.png")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * 2**20  # 400 MB of pixels were never allocated


@pytest.mark.parametrize("kind", ["cmyk-jpeg", "16-bit-png", "palette-alpha-png", "la-png"])
def test_unusual_image_modes_train_without_skips(kind: str, dataset, tmp_path: Path) -> None:
    path, lines = dataset
    name = "odd.jpg" if kind.endswith("jpeg") else "odd.png"
    _write_odd_mode(kind, path.parent / name)
    odd = {"image": name, "captions": ["an odd picture"], "split": "train"}
    path.write_text("\n".join([*lines, json.dumps(odd)]) + "\n")
    rc, out, err = _train(path, tmp_path / "run")
    assert rc == 0, err
    assert "skipped" not in out


# ----------------------------------------------------------------- bad JSONL and captions


BAD_LINES: dict[str, tuple[bytes, str]] = {
    "not-json": (b"{not json", "line 13"),
    "non-utf8": (b'{"image": "img0.png", "captions": ["caf\xe9"]}', "line 13"),
    "empty-caption": (b'{"image": "img1.png", "captions": [""]}', "line 13"),
    "blank-caption": (b'{"image": "img1.png", "captions": ["   "]}', "line 13"),
    "no-captions": (b'{"image": "img2.png", "captions": []}', "line 13"),
    "captions-not-a-list": (b'{"image": "img2.png", "captions": "a cat"}', "line 13"),
    "no-image-key": (b'{"captions": ["a cat"]}', "line 13"),
    "array-line": (b'["img0.png", "a cat"]', "line 13"),
    "bad-split": (b'{"image": "img0.png", "captions": ["x"], "split": "holdout"}', "line 13"),
    "path-escape": (b'{"image": "../../etc/passwd", "captions": ["x"]}', "escapes"),
    "missing-file": (b'{"image": "nope.png", "captions": ["x"]}', "nope.png"),
    "directory": (b'{"image": ".", "captions": ["x"]}', "line 13"),
    "nul-bytes": (b'{"image": "img0.png\\u0000", "captions": ["x"]}', "line 13"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_jsonl_line_is_a_clear_error_or_a_reported_skip(
    case: str, dataset, tmp_path: Path
) -> None:
    path, lines = dataset
    line, expect = BAD_LINES[case]
    path.write_bytes("\n".join(lines).encode() + b"\n" + line + b"\n")

    rc, out, err = _train(path, tmp_path / "run")
    _assert_one_line_error(rc, out, err, "data.jsonl" if expect.startswith("line") else "", expect)
    _assert_nothing_written(tmp_path / "run", tmp_path)

    rc, out, err = _train(path, tmp_path / "run", "--skip-bad")
    assert rc == 0, err
    assert "skipped 1 bad entry" in out


def test_a_file_of_only_bad_lines_is_an_error_even_with_skip_bad(dataset, tmp_path: Path) -> None:
    path, _ = dataset
    path.write_bytes(b"{not json\n\xff\xfe\n[]\n")
    rc, out, err = _train(path, tmp_path / "run", "--skip-bad")
    _assert_one_line_error(rc, out, err, "no usable items")
    _assert_nothing_written(tmp_path / "run", tmp_path)


def test_empty_and_binary_dataset_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"")
    rc, out, err = _train(tmp_path / "empty.jsonl", tmp_path / "run")
    _assert_one_line_error(rc, out, err, "empty.jsonl")
    (tmp_path / "random.jsonl").write_bytes(
        bytes(random.Random(1).randrange(256) for _ in range(999))
    )
    rc, out, err = _train(tmp_path / "random.jsonl", tmp_path / "run")
    _assert_one_line_error(rc, out, err, "random.jsonl")
    _assert_nothing_written(tmp_path / "run", tmp_path)


# ------------------------------------------------------------ corrupt checkpoints, indexes


@pytest.fixture
def trained_run(dataset, tmp_path: Path) -> Path:
    path, _ = dataset
    rc, _, err = _train(path, tmp_path / "run")
    assert rc == 0, err
    return tmp_path / "run"


@pytest.mark.parametrize(
    ("damage", "expect"),
    [
        ("truncate-weights", "model.safetensors"),
        ("garbage-weights", "model.safetensors"),
        ("garbage-config", "config.json"),
        ("config-not-an-object", "config.json"),
        ("config-unknown-method", "config.json"),
    ],
)
def test_damaged_checkpoint_is_a_clear_error(
    damage: str, expect: str, trained_run: Path, dataset
) -> None:
    best = trained_run / "best"
    weights, config = best / "model.safetensors", best / "config.json"
    if damage == "truncate-weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "garbage-weights":
        weights.write_bytes(b"\x00" * 8 + b"garbage")
    elif damage == "garbage-config":
        config.write_text("{oops")
    elif damage == "config-not-an-object":
        config.write_text("[1, 2]")
    else:
        config.write_text(json.dumps({**json.loads(config.read_text()), "method": "magic"}))
    path, _ = dataset
    rc, out, err = run_cli("evaluate", "--checkpoint", str(trained_run), "--data", f"jsonl:{path}")
    _assert_one_line_error(rc, out, err, expect)


def test_resume_from_a_damaged_state_is_a_clear_error(trained_run: Path, dataset) -> None:
    path, _ = dataset
    (trained_run / "last" / "state.pt").write_bytes(b"PK\x03\x04 not a zip")
    rc, out, err = _train(path, trained_run, "--resume", "--epochs", "2")
    _assert_one_line_error(rc, out, err, "state.pt")


def test_damaged_index_is_a_clear_error(trained_run: Path, dataset, tmp_path: Path) -> None:
    path, _ = dataset
    index = tmp_path / "index"
    rc, _, err = run_cli(
        "index", "--checkpoint", str(trained_run), "--data", f"jsonl:{path}", "--out", str(index)
    )
    assert rc == 0, err
    manifest = next(index.glob("*.json"))
    manifest.write_text("{broken")
    rc, out, err = run_cli("search", "--index", str(index), "--text", "a red circle")
    _assert_one_line_error(rc, out, err, manifest.name)
