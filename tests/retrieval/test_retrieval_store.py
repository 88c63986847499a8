"""An index folder: what counts as one, and what an --overwrite may replace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from picoalign.retrieval.store import FORMAT, check_index_folder, holds_index


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize(
    ("name", "content"),
    [("manifest.json", '{"name": "my web app"}'), ("tokens.safetensors", "junk")],
)
def test_a_users_file_with_an_index_name_is_not_an_index(
    tmp_path: Path, overwrite: bool, name: str, content: str
) -> None:
    """The adversarial test: `index --out web` on a folder with a web app's manifest.json said
    "holds a gallery index; pass --overwrite", and --overwrite replaced the user's file."""
    (tmp_path / name).write_text(content)
    assert not holds_index(tmp_path)
    with pytest.raises(ValueError, match=rf"does not write \({name}; their names are an index"):
        check_index_folder(tmp_path, overwrite=overwrite)


def test_an_index_is_a_manifest_of_picoaligns_format(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"format": FORMAT, "keys": []}))
    assert holds_index(tmp_path)
    with pytest.raises(ValueError, match="holds a gallery index; pass --overwrite"):
        check_index_folder(tmp_path, overwrite=False)
    check_index_folder(tmp_path, overwrite=True)
    (tmp_path / "manifest.json").write_bytes(b"\xff not json")
    assert not holds_index(tmp_path)
