"""What search accepts as queries (picoalign.retrieval.queries)."""

from __future__ import annotations

import pytest
from PIL import Image

from picoalign.retrieval.queries import image_queries, text_queries, warn_if_cut


def test_one_query_or_many_and_a_generator_read_once(tmp_path) -> None:
    assert text_queries("a cat") == ["a cat"]
    assert text_queries(q for q in ["a", "b"]) == ["a", "b"]
    photo = tmp_path / "p.png"
    Image.new("RGB", (4, 4)).save(photo)
    assert image_queries(photo) == [photo]
    assert image_queries(str(p) for p in [photo, photo]) == [str(photo)] * 2
    with pytest.raises(ValueError, match="non-empty list"):
        text_queries([])
    with pytest.raises(ValueError, match="non-empty list"):
        text_queries(["a", 3])
    with pytest.raises(ValueError, match="text query 2 is empty"):
        text_queries(["a", "\u200b "])
    with pytest.raises(FileNotFoundError, match="is a folder, not an image"):
        image_queries([tmp_path])
    with pytest.raises(FileNotFoundError, match="image not found"):
        image_queries(tmp_path / "missing.png")


def test_a_query_longer_than_the_encoder_reads_is_warned(recwarn):
    """The user report: a query of 60 words and then "a red circle" was cut at 32 tokens
    without a word (the ranking ignored "a red circle")."""

    class Tokenizer:  # a word per token; "🐶" is outside the vocabulary
        unk_token_id = 0

        def __call__(self, text, truncation=True, add_special_tokens=True):
            ids = [0 if w == "🐶" else 1 for w in text.split()]
            return {"input_ids": [2, *ids, 3] if add_special_tokens else ids}

    class Encoder:  # the parts of HFTextEncoder the warning reads
        max_length = 8
        prepare = staticmethod(lambda texts: [f"an emoji of {t}" for t in texts])
        tokenizer = Tokenizer()

    class Model:
        backbone = staticmethod(lambda kind: Encoder())

    warn_if_cut(Model(), ["a b", "a b c d e"])  # 2 + 3 prompt + 2 special = 7; 10
    messages = [str(w.message) for w in recwarn]
    assert messages == [
        "text query 2 has 10 tokens; the text encoder reads the first 8, so the rest is not "
        "searched"
    ]
    recwarn.clear()  # the gallery walkthrough: "🐶" searched as [UNK], without a word
    warn_if_cut(Model(), ["🐶", "a 🐶", "🐶 🐶"])
    messages = [str(w.message) for w in recwarn]
    assert len(messages) == 2 and messages[0].startswith("text query 1 ('🐶') holds no word")
    assert messages[1].startswith("text query 3 ")
