"""``PicoAligner``: the one object a user holds — heads, scorer, method and PICO state.

Backbones (EfficientNet-Lite0, MiniLM, ViT/BERT via ``hf:``) produce token features; the
aligner projects them to a shared D-dimensional space with one head per modality, reduces them
to the token sets its **scorer** scores (``fine_grained``: every patch and word; ``global``:
the mean; ``gpo``: VSE∞'s learnt pooling — :mod:`picoalign.core.scorers`) and scores them with
its **method**, independent of the scorer:

- ``baseline`` — the scorer's plain score, p ≡ 1;
- ``pico``     — PICO's training and scoring rules on that scorer (see ``PICOConfig``).

All scoring decisions are made in one place, :meth:`PicoAligner.scores` /
:meth:`PicoAligner.training_scores`. ``save(dir)``/``PicoAligner.load(dir)`` round-trip through
safetensors + ``config.json``; loading never executes code. Backbones are built lazily and only
when raw images or texts are encoded (training on cached features never loads them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from picoalign.config.model import METHODS, RULES, ModelConfig
from picoalign.core.heads import HEADS
from picoalign.core.pico import PICO
from picoalign.core.scorers import create_scorer
from picoalign.core.similarity import DEFAULT_BUDGET_MB, fine_grained_scores, l2_normalize, pad_cat
from picoalign.inputs import (
    as_image,
    channel_stats,
    check_batch_size,
    check_texts,
    eval_mode,
    sliceable,
)

__all__ = ["METHODS", "RULES", "ModelConfig", "PicoAligner"]  # ModelConfig: picoalign.config.model


class PicoAligner(nn.Module):
    """Projection heads + scoring rule + PICO state. See the module docstring."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        c = self.config
        self.image_head = HEADS[c.head](c.image_dim, c.embed_dim)
        self.text_head = HEADS[c.head](c.text_dim, c.embed_dim)
        self.scorer = create_scorer(c.scorer, c.embed_dim)
        self.pico = PICO(c.pico)  # buffers always present: one state-dict layout
        self._backbones: dict[str, nn.Module] = {}  # lazily built, never saved
        # optimiser steps that trained these weights (after_step counts; None: unknown)
        self.trained_steps: int | None = 0
        if c.standardize:  # per-channel statistics of the backbone features (fit_standardization)
            for side, dim in (("image", c.image_dim), ("text", c.text_dim)):
                self.register_buffer(f"{side}_mean", torch.zeros(dim))
                self.register_buffer(f"{side}_std", torch.ones(dim))
        if c.trains_text:  # a real submodule: trained, saved and loaded with the heads
            self.text_backbone = c.make_text_encoder()
        if c.finetune_image:
            from picoalign.encoders import create_image_encoder

            self.image_backbone = create_image_encoder(c.image_encoder)

    @classmethod
    def from_encoders(
        cls, image_encoder: str = "efficientnet-lite0", text_encoder: str = "minilm", **options: Any
    ) -> PicoAligner:
        """A new model whose heads fit its encoders: ``image_dim``/``text_dim`` are read
        from the encoders, as ``train`` reads them from the features (a ``ModelConfig``
        built by hand keeps the defaults, 1280 and 384). ``options``: ModelConfig's others."""
        from picoalign.encoders import create_image_encoder

        probe = ModelConfig(image_encoder=image_encoder, text_encoder=text_encoder, **options)
        img, txt = create_image_encoder(image_encoder), probe.make_text_encoder()
        if not img.dim:  # the precomputed encoder learns its width from the data
            raise ValueError(f"image encoder {image_encoder!r} has no width before its data")
        for side, enc in (("image", img), ("text", txt)):
            given = options.get(f"{side}_dim")
            if given is not None and given != enc.dim:  # was silently replaced
                raise ValueError(
                    f"{side}_dim={given}, but the {side} encoder "
                    f"{getattr(probe, f'{side}_encoder')!r} gives {enc.dim}: leave it out "
                    "(from_encoders reads it)"
                )
        model = cls(replace(probe, image_dim=img.dim, text_dim=txt.dim))
        if not probe.finetune_image:  # the frozen ones just built, kept (a trained one is
            model._backbones["image"] = img.eval()  # the model's own submodule)
        if not probe.trains_text:
            model._backbones["text"] = txt.eval()
        return model

    def train(self, mode: bool = True) -> PicoAligner:
        """As ``nn.Module.train``, but a fine-tuned image backbone keeps its BatchNorm layers
        in eval mode: statistics from small (per-GPU) batches of captions' images would drift
        from the pretrained ones, which is what breaks small-batch CNN fine-tuning."""
        super().train(mode)
        if mode and self.config.finetune_image:
            for m in self.image_backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # -- projection -------------------------------------------------------------------
    def embed_images(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Backbone image tokens (N, T, C) and mask → the scored token set and its mask:
        unit-norm D tokens (padding rows zeroed) reduced by the scorer (one token each for a
        pooled scorer)."""
        x = self._dropped("image", self._standardized("image", self._input("image", tokens)))
        return self.scorer(l2_normalize(self.image_head(x)) * mask.unsqueeze(-1), mask)

    def embed_texts(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """As :meth:`embed_images`, for word tokens."""
        x = self._dropped("text", self._standardized("text", self._input("text", tokens)))
        return self.scorer(l2_normalize(self.text_head(x)) * mask.unsqueeze(-1), mask)

    def _input(self, side: str, tokens: Tensor) -> Tensor:
        """Backbone tokens in the head's dtype (``model.double()`` or ``.to(bfloat16)`` work),
        refused with the fix when their width is not the head's: in Python, ModelConfig's
        ``image_dim``/``text_dim`` are not read from the encoders (``train`` sets them)."""
        want = getattr(self.config, f"{side}_dim")
        if tokens.shape[-1] != want:
            encoder = getattr(self.config, f"{side}_encoder")
            raise ValueError(
                f"{side} tokens are {tokens.shape[-1]} wide but this model's {side} head takes "
                f"{want} (ModelConfig.{side}_dim); for the {side} encoder {encoder!r}, build "
                f"the model with PicoAligner.from_encoders(...), which reads the widths, or "
                f"ModelConfig({side}_dim={tokens.shape[-1]}, ...)"
            )
        return tokens.to(getattr(self, f"{side}_head").proj.weight.dtype)

    def _standardized(self, side: str, x: Tensor) -> Tensor:
        if not self.config.standardize:
            return x
        return (x - getattr(self, f"{side}_mean")) / getattr(self, f"{side}_std")

    def _dropped(self, side: str, x: Tensor) -> Tensor:
        # only when on: a dropout of 0 would still draw from the RNG and change every run
        p = getattr(self.config, f"{side}_dropout")
        return nn.functional.dropout(x, p) if self.training and p > 0 else x

    @torch.no_grad()
    def fit_standardization(self, images: Any, texts: Any, chunk: int = 1024) -> None:
        """Set the per-channel mean and std of the real tokens of cached backbone features
        (``TokenFeatures`` of the training split), in float64 chunk by chunk."""
        if not self.config.standardize:
            raise ValueError("fit_standardization needs a model with standardize=True")
        for side, feats in (("image", images), ("text", texts)):
            mean, std = channel_stats(feats.tokens, feats.mask, chunk, side)
            getattr(self, f"{side}_mean").copy_(mean)
            getattr(self, f"{side}_std").copy_(std)

    def forward(
        self,
        img_tokens: Tensor,
        img_mask: Tensor,
        txt_tokens: Tensor,
        txt_mask: Tensor,
        captions: Sequence[str] | None = None,
        pixels: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The training forward: embed one batch of both modalities.

        Returns ``(img, img_mask, txt, txt_mask)``. With ``captions`` (text fine-tuning) the
        text tokens come from the trainable backbone instead of the cached ``txt_tokens``;
        with ``pixels`` (image fine-tuning) likewise for the images.
        Kept as ``forward`` so DDP can wrap the model and hook its gradients.
        """
        if captions is not None:
            txt_tokens, txt_mask = self.text_tokens(captions)
        if pixels is not None:
            img_tokens, img_mask = self.image_backbone(pixels)
        return (*self.embed_images(img_tokens, img_mask), *self.embed_texts(txt_tokens, txt_mask))

    # -- scoring: the one place that decides how a pair is scored ------------------------
    def training_scores(
        self,
        img: Tensor,
        img_mask: Tensor,
        txt: Tensor,
        txt_mask: Tensor,
        image_ids: Tensor,
        *,
        validate: bool = True,
    ) -> Tensor:
        """In-batch (B, B) scores of embedded tokens, for the loss (the training rule);
        ``validate=False`` skips the input checks and their host syncs (as the loop does)."""
        if self.config.method == "pico":
            s = self.pico.training_scores(
                img, img_mask, txt, txt_mask, image_ids, validate=validate
            )
        else:
            s = fine_grained_scores(img, img_mask, txt, txt_mask, validate=validate)
        return s * self.scorer.scale

    @torch.no_grad()
    def scores(
        self,
        img: Tensor,
        img_mask: Tensor,
        txt: Tensor,
        txt_mask: Tensor,
        *,
        rule: str | None = None,
        memory_budget_mb: float = DEFAULT_BUDGET_MB,
        compute_dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Evaluation scores (N_img, N_txt) of embedded tokens.

        ``rule``: ``"plain"`` (p ≡ 1), ``"weighted"`` (PICO's weighting, for a PICO model) or
        ``"raw"`` (reading A's p without renormalisation); None = the model's own
        (``pico.eval_score`` for PICO, plain otherwise). Passing the rule here, rather than
        editing the config, is how a study scores one model several ways.
        """
        self.config.check_rule(rule)
        if rule is None:
            rule = self.config.eval_rule
        for name, x in (("img", img), ("txt", txt)):  # tokens of another model, or raw ones
            if isinstance(x, Tensor) and x.dim() == 3 and x.shape[-1] != self.config.embed_dim:
                raise ValueError(
                    f"{name} tokens are {x.shape[-1]} wide, this model's embedding space "
                    f"{self.config.embed_dim}: score what encode_images/encode_texts return"
                )
        img, txt = img.float(), txt.float()
        if rule != "plain":
            s = self.pico.scores(
                img,
                img_mask,
                txt,
                txt_mask,
                rule=rule,
                memory_budget_mb=memory_budget_mb,
                compute_dtype=compute_dtype,
            )
        else:
            s = fine_grained_scores(
                img,
                img_mask,
                txt,
                txt_mask,
                memory_budget_mb=memory_budget_mb,
                compute_dtype=compute_dtype,
            )
        return s * self.scorer.scale

    @property
    def eval_weights(self) -> Tensor | None:
        """Column weights used at test time by the global reading (None = plain score)."""
        c = self.config
        if c.method != "pico" or c.pico.eval_score == "plain" or c.pico.reading != "global":
            return None
        return self.pico.weights

    @torch.no_grad()
    def after_step(
        self,
        img: Tensor,
        img_mask: Tensor,
        txt: Tensor,
        txt_mask: Tensor,
        image_ids: Tensor,
        feedback: tuple[Tensor, ...] | None = None,
        *,
        validate: bool = True,
    ) -> None:
        """Call after each optimiser step: PICO's iterative construction (no-op otherwise).
        ``validate``: as for :meth:`training_scores`. Counts the step (:attr:`trained_steps`:
        an index or evaluation of a model with none warns that its heads are random)."""
        if self.trained_steps is not None:
            self.trained_steps += 1
        if self.config.method == "pico":
            self.pico.update(
                img, img_mask, txt, txt_mask, image_ids, feedback=feedback, validate=validate
            )

    # -- raw inputs -------------------------------------------------------------------
    def backbone(self, kind: str) -> nn.Module:
        """The image or text backbone: the trained submodule when fine-tuned, else the frozen
        one built on first use from the registry, on the heads' device (a model moved to a
        GPU ran its frozen ViT/BERT on the CPU, silently)."""
        if kind == "text" and self.config.trains_text:
            return self.text_backbone
        if kind == "image" and self.config.finetune_image:
            return self.image_backbone
        if kind not in self._backbones:
            from picoalign.encoders import create_image_encoder

            c = self.config
            enc = create_image_encoder(c.image_encoder) if kind == "image" else None
            self._backbones[kind] = (enc or c.make_text_encoder()).eval()
        enc = self._backbones[kind]
        if enc.device != self._device:  # not a submodule: model.to(...) moved only the heads
            enc.to(self._device)
        return enc

    def image_pixels(self, images: Sequence[Image.Image]) -> Tensor:
        """Backbone input of PIL images, on the backbone's device."""
        enc = self.backbone("image")
        return enc.preprocess(list(images)).to(enc.device)

    @property
    def _device(self) -> torch.device:
        return self.image_head.proj.weight.device

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """As ``nn.Module.load_state_dict``; the weights come from elsewhere, so the count of
        steps that trained them is unknown (None: no "never trained" warning)."""
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.trained_steps = None
        return out

    @torch.no_grad()
    def encode_images(
        self, images: Sequence[Image.Image | str | Path], batch_size: int = 32
    ) -> tuple[Tensor, Tensor]:
        """PIL images or paths → embedded tokens (N, T, D) and mask, ready for ``scores``.

        ``images`` may be any sequence that slices (a lazy one is read batch by batch).
        """
        if isinstance(images, (str, Path, Image.Image)):  # one image, not a sequence of them
            images = [images]
        images = sliceable(images)
        check_batch_size(batch_size)
        enc = self.backbone("image")
        if getattr(enc, "from_features", None) is not None:
            raise ValueError(
                "this model was trained on precomputed image features (image encoder "
                "'precomputed'): it has no backbone to read image files; embed (N, T, C) "
                "features with embed_images(tokens, mask), or search its index by text"
            )
        toks, masks = [], []
        with eval_mode(self):
            for i in range(0, len(images), batch_size):
                batch = [as_image(x, i + j) for j, x in enumerate(images[i : i + batch_size])]
                t, m = enc(self.image_pixels(batch))
                t, m = self.embed_images(t.to(self._device), m.to(self._device))
                toks.append(t)
                masks.append(m)
        return pad_cat(toks, masks, dim=self.config.embed_dim, device=self._device)

    def text_tokens(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Backbone word tokens of raw captions, with gradient when fine-tuning."""
        enc = self.backbone("text")
        batch = {k: v.to(enc.device) for k, v in enc.tokenize(enc.prepare(captions)).items()}
        t, m = enc(**batch)
        return t.to(self._device), m.to(self._device)

    @torch.no_grad()
    def encode_texts(
        self, texts: str | Sequence[str], batch_size: int = 64
    ) -> tuple[Tensor, Tensor]:
        """Captions (or one caption) → embedded tokens (N, T, D) and mask, for ``scores``."""
        texts = [texts] if isinstance(texts, str) else sliceable(texts)
        check_batch_size(batch_size)
        check_texts(texts)
        toks, masks = [], []
        with eval_mode(self):
            for i in range(0, len(texts), batch_size):
                t, m = self.embed_texts(*self.text_tokens(texts[i : i + batch_size]))
                toks.append(t)
                masks.append(m)
        return pad_cat(toks, masks, dim=self.config.embed_dim, device=self._device)

    # -- persistence ------------------------------------------------------------------
    def save(self, directory: str | Path, *, overwrite: bool = False) -> None:
        """Write ``model.safetensors`` (with :attr:`trained_steps`) and ``config.json`` into a
        new or empty folder, or over a saved model with ``overwrite=True``, both written before
        either is replaced (:func:`picoalign.checkpoint.write_model`; ``~``: the home folder)."""
        from picoalign.checkpoint import write_model

        write_model(
            directory, self.state_dict(), self.config, self.trained_steps, overwrite=overwrite
        )

    @classmethod
    def load(cls, directory: str | Path) -> PicoAligner:
        """Load a saved model folder, or a training run folder (its ``best/`` model, as the
        CLI accepts), in eval mode; raises ``FileNotFoundError``/``ValueError`` naming the
        path."""
        from picoalign.checkpoint import read_model

        cfg, state, steps = read_model(directory)
        model = cls(cfg)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:  # missing, unexpected or misshapen tensors
            from picoalign.checkpoint import model_folder

            path = model_folder(directory) / "model.safetensors"
            raise ValueError(f"{path}: cannot load the model weights ({e})") from e
        model.trained_steps = steps
        # in eval mode, as a loaded model is used: with text_dropout / image_dropout a model in
        # training mode encodes the same caption differently on every call (.train() to train)
        return model.eval()
