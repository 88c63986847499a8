"""An index folder: what counts as one, and what an --overwrite may replace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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


def _nan_in_padding(t: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = t.clone()
    t[1, 3] = float("nan")
    return t, m & (torch.arange(4) < 3)


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda t, m: (t * float("nan"), m), "row 0 holds NaN or Inf"),
        (_nan_in_padding, "row 1 holds NaN"),  # padding is pooled too: the row was lost
        (lambda t, m: (t[:0], m[:0]), "nothing to index"),
        (lambda t, m: (t[:, 0], m[:, 0]), "must be a 3-D float tensor"),
        (lambda t, m: (t, m[:2]), "mask must be a bool tensor of shape"),
        (lambda t, m: (t, m.float()), "mask must be a bool tensor"),
        (lambda t, m: (t, m & torch.tensor([False, True, True])[:, None]), "row 0 has no real"),
    ],
)
def test_embeddings_of_an_index_are_checked_by_name(edit, says) -> None:
    """The API walkthrough: NaN embeddings made an index that matched nothing ([[]]), and an
    empty one or a wrong shape failed in a bare faiss AssertionError or an unpacking error."""
    from picoalign.retrieval.index import GalleryIndex

    tokens, mask = torch.randn(3, 4, 8), torch.ones(3, 4, dtype=torch.bool)
    GalleryIndex.from_embeddings(tokens, mask)  # well-formed: fine
    with pytest.raises(ValueError, match=says):
        GalleryIndex.from_embeddings(*edit(tokens, mask))


def test_queries_of_another_width_are_refused_by_name() -> None:
    from picoalign.retrieval.index import GalleryIndex

    index = GalleryIndex.from_embeddings(torch.randn(3, 4, 8), torch.ones(3, 4, dtype=torch.bool))
    q, qm = torch.randn(1, 2, 16), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"this index holds D=8: embed them with the model"):
        index.search_tokens(q, qm, lambda *a, **k: None, k=2)


def test_pooled_embeddings_given_are_checked_and_k_may_be_a_numpy_integer() -> None:
    """The re-test: NaN or misshapen ``pooled`` made an index that found nothing or failed in
    a bare faiss assertion; ``k=np.int64(3)`` (from an array) was refused."""
    import numpy as np

    from picoalign.retrieval.index import GalleryIndex

    tokens, mask = torch.randn(3, 4, 8), torch.ones(3, 4, dtype=torch.bool)
    for pooled in (torch.full((3, 8), float("nan")), torch.zeros(3, 5)):
        with pytest.raises(ValueError, match=r"pooled must be a finite \(3, 8\) tensor"):
            GalleryIndex.from_embeddings(tokens, mask, pooled=pooled)
    index = GalleryIndex.from_embeddings(tokens, mask)
    q, qm = tokens[:1], mask[:1]

    def plain(img, im, txt, tm, **_):
        return torch.einsum("ntd,mtd->nm", img, txt)

    hits = index.search_tokens(q, qm, plain, k=np.int64(3), candidates=torch.tensor(3))
    assert len(hits[0]) == 3
