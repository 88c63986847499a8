"""PICOConfig: every option of PICO (METHOD.md §3–7), each [ours] choice a named option.

Apart from ``picoalign.core.pico``, the module that computes with it, which re-exports it;
the configs (``picoalign.config``) import it from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache
from typing import Any, Literal, get_args, get_origin, get_type_hints

from picoalign.core.estimators import Estimator, Positives

_KINDS: dict[Any, tuple[str, Any]] = {  # a field's type -> its name in words, the check
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    bool: ("true or false", lambda v: isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
}


@dataclass
class PICOConfig:
    """Every option of METHOD.md; [ours] choices are named so the paper's form is reachable.

    Defaults follow the benchmark (docs/results.md); see README for what each one does.
    """

    dim: int = 512
    estimator: Estimator = "sign"
    positives: Positives = "aligned"
    transform: Literal["2q-1", "raw"] = "2q-1"
    bank_size: int = 8  # K; 1 = batch-only p (no bank)
    feedback: bool = True  # False = bank with uniform weights
    tau: float = 1.0
    gain_normalize: Literal["zscore", "none"] = "zscore"
    feedback_metric: Literal["mrr", "rsum", "neg_loss"] = "mrr"
    # "batch" (the trained batch) | "heldout" (an unseen batch)
    feedback_source: Literal["heldout", "batch"] = "heldout"
    feedback_size: int = 32  # pairs of the feedback batch used (bounds the cost)
    momentum: float = 0.5  # m in p ← (1−m) p + m p_new; 1 = no momentum
    # p ≡ 1 for these many updates; in training they come on top of pico_warmup_epochs'
    # steps (picoalign.training.derived.model_config_for)
    warmup_steps: int = 0
    # weights = p · D / Σp (scores keep their range); reading A only: reading B rescales its
    # scores by the matched pairs' mean instead (adaptive._matched_scale)
    renormalize: bool = True
    # "pair" (B, pair-adaptive; best PICO on validation) | "global" (A)
    reading: Literal["pair", "global"] = "pair"
    # reading B: p(V,T) = λ p̃(V,T) + (1−λ) prior; 0.25 had the best mean validation rSum of
    # {0.25, 0.5, 1} at margin 0.8 (docs/results.md) — less PICO scored better
    lam: float = 0.25
    prior: Literal["ones", "global"] = "ones"  # reading B prior: "global" = the bank's p
    hard_negatives: int = 10  # reading B training: per row/column B-scored negatives
    train_score: Literal["weighted", "plain"] = "weighted"
    eval_score: Literal["weighted", "plain"] = "plain"

    def __post_init__(self) -> None:
        # types and choices from the annotations (one list of each field's choices): in
        # Python nothing else checks them, and feedback="no" is truthy (feedback on),
        # dim=32.5 made a bank of fractional width
        for name, hint in _hints().items():
            value = getattr(self, name)
            if get_origin(hint) is Literal:
                if value not in get_args(hint):
                    raise ValueError(
                        f"PICOConfig.{name} must be one of {get_args(hint)}, got {value!r}"
                    )
            elif hint in _KINDS and not _KINDS[hint][1](value):
                raise ValueError(f"PICOConfig.{name} must be {_KINDS[hint][0]}, got {value!r}")
        for name in ("dim", "bank_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"PICOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.momentum <= 1:
            raise ValueError(f"PICOConfig.momentum must be in (0, 1], got {self.momentum}")
        if not 0 <= self.lam <= 1:
            raise ValueError(f"PICOConfig.lam must be in [0, 1], got {self.lam}")
        if not self.tau > 0:  # also rejects NaN
            raise ValueError(f"PICOConfig.tau must be > 0, got {self.tau}")
        for name in ("feedback_size", "warmup_steps", "hard_negatives"):
            minimum = 1 if name == "feedback_size" else 0
            if getattr(self, name) < minimum:
                raise ValueError(
                    f"PICOConfig.{name} must be >= {minimum}, got {getattr(self, name)}"
                )

    def to_dict(self) -> dict:
        return asdict(self)


@cache
def _hints() -> dict[str, Any]:
    """PICOConfig's field types, resolved once (the annotations are strings here)."""
    return get_type_hints(PICOConfig)
