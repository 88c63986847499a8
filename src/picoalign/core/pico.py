"""PICO: semantic column probabilities from style prototypes (METHOD.md §3–6).

Functional core first (pure functions, easy to test), then the ``PICO`` module that owns the
state (``p``, the prototype bank) as buffers so it is saved with any model's state dict.

Three lines to add PICO to a PyTorch retrieval model::

    pico = PICO(PICOConfig(dim=512))
    scores = pico.training_scores(img, img_mask, txt, txt_mask, image_ids)  # then your loss
    pico.update(img, img_mask, txt, txt_mask, image_ids)   # after optimizer.step()
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from picoalign.core.adaptive import pair_adaptive_scores, pair_adaptive_training_scores
from picoalign.core.estimators import semantic_probability
from picoalign.core.feedback import feedback_weights, retrieval_score
from picoalign.core.pico_config import PICOConfig
from picoalign.core.precision import outside_autocast
from picoalign.core.similarity import DEFAULT_BUDGET_MB, check_tokens, fine_grained_scores

__all__ = ["PICO", "PICOConfig"]  # PICOConfig: picoalign.core.pico_config


# ---------------------------------------------------------------------------- module
GatherFn = Callable[[Tensor], Tensor]


class PICO(nn.Module):
    """Owns p and the style-prototype bank; scores with them; updates them after each step.

    Buffers (saved in the state dict): ``p`` (D,), ``bank`` (K, D) of style prototypes
    π = 1 − p̃, ``bank_len``/``bank_pos`` (FIFO), ``omega`` and ``gains`` of the last update,
    ``steps`` and ``pair_scale`` (reading B: matched-pair rescaling for weighted scoring).
    """

    def __init__(self, config: PICOConfig | None = None, gather: GatherFn | None = None):
        super().__init__()
        self.config = config or PICOConfig()
        c = self.config
        self.gather = gather  # DDP: all-gather so every rank computes the same statistics
        self.register_buffer("p", torch.ones(c.dim))
        self.register_buffer("bank", torch.zeros(c.bank_size, c.dim))
        self.register_buffer("bank_len", torch.zeros((), dtype=torch.long))
        self.register_buffer("bank_pos", torch.zeros((), dtype=torch.long))
        self.register_buffer("omega", torch.zeros(c.bank_size))
        self.register_buffer("gains", torch.zeros(c.bank_size))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("pair_scale", torch.ones(()))
        self._host: dict[str, tuple[Tensor, int, int]] = {}  # see _count
        for name in ("steps", "bank_len", "bank_pos"):
            self._set_count(name, 0)

    # -- host mirrors of the counters -------------------------------------------------
    def _count(self, name: str) -> int:
        """The integer buffer ``name`` (steps, bank_len, bank_pos) as a Python int, without a
        device sync on every step.

        The counters decide control flow and shapes (warm-up, which bank slots are filled),
        so they are needed on the host; reading a CUDA buffer with ``int()`` would stall the
        GPU at every step. Their values only change through :meth:`_set_count` (which
        records them) or from outside (``load_state_dict``, ``fill_``): the record is keyed
        by the tensor's identity and its in-place version counter, so any outside change is
        noticed and read once (one sync after a checkpoint load, none per step).
        """
        t = getattr(self, name)
        known = self._host.get(name)
        if known is not None and known[0] is t and known[1] == t._version:
            return known[2]
        value = int(t)
        self._host[name] = (t, t._version, value)
        return value

    def _set_count(self, name: str, value: int) -> None:
        t = getattr(self, name)
        t.fill_(value)  # a kernel launch, not a sync
        self._host[name] = (t, t._version, value)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> PICO:
        """``.to(device)`` replaces the buffers: carry the known counter values over."""
        known = {
            n: v[2]
            for n, v in self._host.items()
            if v[0] is getattr(self, n) and v[1] == v[0]._version
        }
        out = super()._apply(fn, recurse)
        for name, value in known.items():
            t = getattr(self, name)
            self._host[name] = (t, t._version, value)
        return out

    # -- weights ----------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """False during warm-up (p ≡ 1: sign statistics of a random model mean nothing)."""
        return self._count("steps") > self.config.warmup_steps

    def as_weights(self, p: Tensor) -> Tensor:
        """The column weights used in scoring: p, renormalised to mean 1 if configured.

        A ``torch.where``, not an ``if`` on the sum: no device sync (same values)."""
        if not self.config.renormalize:
            return p
        total = p.sum()
        return torch.where(total > 1e-6, p * (p.numel() / total), torch.ones_like(p))

    @property
    def weights(self) -> Tensor:
        """Column weights for scoring (all ones during warm-up)."""
        return self.as_weights(self.p) if self.active else torch.ones_like(self.p)

    def _prior(self) -> Tensor:
        return self.weights if self.config.prior == "global" else torch.ones_like(self.p)

    # -- scoring ----------------------------------------------------------------------
    def check(
        self,
        img: Tensor,
        img_mask: Tensor,
        txt: Tensor,
        txt_mask: Tensor,
        image_ids: Tensor | None = None,
        *,
        batch: bool = True,
    ) -> None:
        """The inputs of :meth:`training_scores`, :meth:`update` and :meth:`scores`, checked
        as ``fine_grained_scores`` checks them, and their width against ``dim``. Why: a
        caption with no real token made NaN scores and a NaN loss silently, and a wrong
        ``dim`` failed only at the next update, in a tensor-size message. ``batch``: the
        inputs are a training batch of B matched pairs (img[b], txt[b]), labelled by
        ``image_ids`` (B,)."""
        check_tokens(img, img_mask, txt, txt_mask)
        if img.shape[-1] != self.config.dim:
            raise ValueError(
                f"PICO was built for dim={self.config.dim} (PICOConfig.dim) but the tokens have "
                f"D={img.shape[-1]}"
            )
        if not batch:
            return
        b = img.shape[0]
        if b == 0 or txt.shape[0] != b:
            raise ValueError(
                "a training batch is B >= 1 matched pairs (img[b], txt[b]): got "
                f"{b} images and {txt.shape[0]} captions"
            )
        if image_ids is not None and (
            not isinstance(image_ids, Tensor) or tuple(image_ids.shape) != (b,)
        ):
            got = tuple(image_ids.shape) if isinstance(image_ids, Tensor) else type(image_ids)
            raise ValueError(f"image_ids must be a ({b},) tensor (one per pair), got {got}")

    @outside_autocast
    def training_scores(
        self,
        img: Tensor,
        img_mask: Tensor,
        txt: Tensor,
        txt_mask: Tensor,
        image_ids: Tensor | None = None,
        *,
        validate: bool = True,
    ) -> Tensor:
        """In-batch (B, B) scores for the loss, with the configured training rule.
        ``image_ids`` (B,) marks captions of one image (None: every pair its own image).
        ``validate=False`` skips :meth:`check` (a caller that has checked the batch).
        Reading B's matched-pair scale (``pair_scale``, used by weighted scoring) follows
        the batches only in training mode: a validation loss leaves evaluation as it was."""
        if validate:
            self.check(img, img_mask, txt, txt_mask, image_ids)
        if image_ids is None:
            image_ids = torch.arange(img.shape[0], device=img.device)
        # in fp32, as the model's own steps (bf16 here changes rankings); a no-op for fp32,
        # and the gradient still reaches bf16 tokens (they failed at the first weighted step)
        img, txt = img.float(), txt.float()
        c = self.config
        weighted = c.train_score == "weighted" and self.active
        w = self.weights if weighted and c.reading == "global" else None
        if not (weighted and c.reading == "pair"):
            return fine_grained_scores(img, img_mask, txt, txt_mask, w, validate=False)
        # reading B re-uses the plain matrix's alignment: its candidates' aligned tokens
        scores, alignment = fine_grained_scores(
            img, img_mask, txt, txt_mask, validate=False, return_alignment=True
        )
        scores, scale = pair_adaptive_training_scores(
            scores,
            img,
            img_mask,
            txt,
            txt_mask,
            image_ids,
            prior=self._prior(),
            lam=c.lam,
            hard_negatives=c.hard_negatives,
            alignment=alignment,
        )
        if self.training:  # a batch that set no scale (NaN) leaves the average alone
            with torch.no_grad():
                avg = self.pair_scale * 0.9 + 0.1 * scale
                self.pair_scale.copy_(torch.where(scale.isnan(), self.pair_scale, avg))
        return scores

    @torch.no_grad()
    @outside_autocast
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
        validate: bool = True,
    ) -> Tensor:
        """Evaluation scores (N_img, N_txt): ``rule`` "plain", "weighted" (with the configured
        reading) or "raw" (reading A's p without renormalisation); None = ``eval_score``.
        During warm-up p ≡ 1, so every rule is plain. Inputs are checked under every rule
        (``validate=False`` skips it)."""
        c = self.config
        rule = c.eval_score if rule is None else rule
        if rule not in ("plain", "weighted", "raw"):
            raise ValueError(f"rule must be 'plain', 'weighted' or 'raw', got {rule!r}")
        if validate:
            self.check(img, img_mask, txt, txt_mask, batch=False)
        if rule == "raw" and c.reading != "global":
            raise ValueError("rule 'raw' is reading A's (reading='global') raw p")
        if rule == "weighted" and self.active and c.reading == "pair":
            return pair_adaptive_scores(
                img,
                img_mask,
                txt,
                txt_mask,
                prior=self._prior(),
                lam=c.lam,
                scale=self.pair_scale,
                memory_budget_mb=memory_budget_mb,
            )
        weights = None
        if self.active and rule != "plain":
            weights = self.p if rule == "raw" else self.weights
        return fine_grained_scores(
            img,
            img_mask,
            txt,
            txt_mask,
            weights,
            memory_budget_mb=memory_budget_mb,
            compute_dtype=compute_dtype,
            validate=False,
        )

    # -- update -----------------------------------------------------------------------
    def _push(self, prototype: Tensor) -> None:
        k, pos = self.config.bank_size, self._count("bank_pos")
        self.bank[pos] = prototype
        self._set_count("bank_pos", (pos + 1) % k)
        self._set_count("bank_len", min(k, self._count("bank_len") + 1))

    def _all(self, *xs: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.gather(x) for x in xs) if self.gather is not None else xs

    @torch.no_grad()
    @outside_autocast
    def update(
        self,
        img: Tensor,
        img_mask: Tensor,
        txt: Tensor,
        txt_mask: Tensor,
        image_ids: Tensor | None = None,
        feedback: tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None = None,
        *,
        validate: bool = True,
    ) -> None:
        """One iterative-construction step, after the optimiser step, under no_grad.

        (img[b], txt[b]) are the batch's matched pairs. ``feedback`` is an optional
        held-out batch (img, img_mask, txt, txt_mask, image_ids) the optimiser has not seen;
        with ``feedback_source="heldout"`` it is used to measure the gains Δ, else the
        current batch is.
        """
        if validate:
            self.check(img, img_mask, txt, txt_mask, image_ids)
        c = self.config
        self._set_count("steps", self._count("steps") + 1)
        if not self.active:
            return
        img, img_mask, txt, txt_mask = self._all(
            img.detach().float(), img_mask, txt.detach().float(), txt_mask
        )
        if image_ids is None:
            image_ids = torch.arange(img.shape[0], device=img.device)
        else:
            (image_ids,) = self._all(image_ids)
        p_tilde = semantic_probability(
            img,
            img_mask,
            txt,
            txt_mask,
            estimator=c.estimator,
            positives=c.positives,
            transform=c.transform,
        )
        self._push(1 - p_tilde)
        n = self._count("bank_len")
        bank = self.bank[:n]
        if c.feedback and n > 1:
            fb = (img, img_mask, txt, txt_mask, image_ids)
            if c.feedback_source == "heldout" and feedback is not None:
                fb = self._all(
                    *(x.detach().float() if x.is_floating_point() else x for x in feedback)
                )
            gains = self._gains(bank, *fb)
            omega = feedback_weights(gains, c.tau, c.gain_normalize)
        else:
            gains = torch.zeros_like(bank[:, 0])
            omega = torch.full_like(bank[:, 0], 1.0 / n)
        self.gains.zero_()
        self.omega.zero_()
        self.gains[:n] = gains
        self.omega[:n] = omega
        p_new = 1 - (omega.unsqueeze(1) * bank).sum(0)
        self.p.mul_(1 - c.momentum).add_(c.momentum * p_new)

    def _gains(
        self,
        bank: Tensor,
        img: Tensor,
        img_mask: Tensor,
        txt: Tensor,
        txt_mask: Tensor,
        image_ids: Tensor,
    ) -> Tensor:
        """Δ_k = r(1 − π_k) − r(p) on the feedback batch (first ``feedback_size`` pairs)."""
        c = self.config
        m = c.feedback_size
        img, img_mask, txt, txt_mask, image_ids = (
            x[:m] for x in (img, img_mask, txt, txt_mask, image_ids)
        )

        # every weighting (p, then each prototype's 1 − π_k) at once: the weights go on the
        # caption side, the K + 1 weighted copies of the m captions are one column block,
        # so the K + 1 score matrices come from one blocked call instead of K + 1
        weights = torch.stack([self.as_weights(self.p), *(self.as_weights(1 - pr) for pr in bank)])
        n = weights.shape[0]
        stacked = (txt.unsqueeze(0) * weights[:, None, None, :]).reshape(-1, *txt.shape[1:])
        s = fine_grained_scores(img, img_mask, stacked, txt_mask.repeat(n, 1), validate=False).view(
            len(img), n, len(txt)
        )
        r = torch.stack([retrieval_score(s[:, k], image_ids, c.feedback_metric) for k in range(n)])
        return r[1:] - r[0]

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"dim={c.dim}, reading={c.reading}, K={c.bank_size}, tau={c.tau}, "
            f"train_score={c.train_score}, eval_score={c.eval_score}"
        )
