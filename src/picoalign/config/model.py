"""``ModelConfig``: what defines a model (encoders, dimensions, head, scorer, method and PICO's
options), as data. Saved as ``config.json`` next to the weights and nested as ``model:`` in a
run's ``config.yaml``; :class:`picoalign.model.PicoAligner` is built from it. It lives with the
other configs, apart from the model that computes with it; it reads the head and scorer
registries (``HEADS``, ``SCORERS``) to check their names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from picoalign.core.heads import HEADS
from picoalign.core.pico_config import PICOConfig
from picoalign.core.scorers import SCORERS

METHODS = ("baseline", "pico")
RULES = ("plain", "weighted", "raw")  # raw: reading A's p without renormalisation


@dataclass
class ModelConfig:
    """What defines a model: encoders, dimensions, head and method. Saved as config.json."""

    image_encoder: str = "efficientnet-lite0"
    text_encoder: str = "minilm"
    image_dim: int = 1280  # token feature width of the image backbone (C)
    text_dim: int = 384
    # D and the head are the CPU recipe (the heads dominate a CPU step); the paper's GPU
    # setting is embed_dim=512 with head="mlp".
    embed_dim: int = 256  # D, the shared space PICO weights column by column
    head: Literal["linear", "mlp"] = "linear"  # mlp: linear + residual 2-layer MLP (VSE∞)
    finetune_text: bool = False  # train the text backbone too (its weights are then saved)
    # train the image backbone on raw images (the GPU recipe; needs a dataset of image files)
    finetune_image: bool = False
    # input options (docs/results.md measures each on both arms): per-channel standardisation
    # of the frozen backbone features (statistics of the training split, saved with the model
    # and applied in embed_*, so index and search see the same), the caption template, and
    # the text encoder's token options (None = the encoder's own default)
    standardize: bool = False
    prompt: str = "{}"
    text_max_tokens: int | None = None
    text_special_tokens: bool | None = None  # True keeps [CLS]/[SEP] as word tokens
    # dropout on the backbone tokens before each head, in training only: cached features are
    # the same at every epoch, and a live text encoder's own dropout (a fine-tuned one, in
    # train mode) was measured as a large augmentation on scenes (docs/results.md, "A probe:
    # the text encoder run live"); this gives cached features a cheap kind of it. 0 = off
    text_dropout: float = 0.0
    image_dropout: float = 0.0
    scorer: str = "fine_grained"  # what is scored: see picoalign.core.scorers
    # on any scorer; "global" is the legacy spelling of baseline on the global scorer
    method: Literal["baseline", "pico", "global"] = "pico"
    # PICO's options; its ``dim`` is always ``embed_dim``
    pico: PICOConfig = field(default_factory=PICOConfig)

    def __post_init__(self) -> None:
        # parsing, not run-time mutation: a nested dict from JSON/YAML becomes its dataclass,
        # and checkpoints of the time before scorers (method "global") keep loading
        if isinstance(self.pico, dict):
            self.pico = PICOConfig(**self.pico)
        if not isinstance(self.pico, PICOConfig):
            raise ValueError(f"pico must be a mapping of PICO options, got {self.pico!r}")
        if isinstance(self.embed_dim, bool) or not (
            isinstance(self.embed_dim, int) and self.embed_dim >= 1
        ):  # before it becomes PICO's dim, whose check would name that option instead
            raise ValueError(f"embed_dim must be an integer >= 1, got {self.embed_dim!r}")
        # PICO weights the columns of the shared space, so its dim *is* embed_dim: a fresh
        # copy with that dim (the caller's PICOConfig object is never modified)
        self.pico = replace(self.pico, dim=self.embed_dim)
        if self.method == "global":
            if self.scorer not in ("fine_grained", "global"):
                raise ValueError(f"method 'global' (legacy) contradicts scorer {self.scorer!r}")
            self.method, self.scorer = "baseline", "global"
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {sorted(SCORERS)}, got {self.scorer!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {sorted(HEADS)}, got {self.head!r}")
        if not isinstance(self.prompt, str) or self.prompt.count("{}") != 1:
            raise ValueError(f"prompt must hold '{{}}' once (the caption), got {self.prompt!r}")
        for side in ("text", "image"):
            p = getattr(self, f"{side}_dropout")
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
                raise ValueError(f"{side}_dropout must be a number in [0, 1), got {p!r}")
        for name in ("image_dim", "text_dim"):  # from a config.json edited by hand, say
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.text_max_tokens is not None and self.text_max_tokens < 1:
            raise ValueError(f"text_max_tokens must be >= 1, got {self.text_max_tokens}")

    def make_text_encoder(self) -> Any:
        """The pretrained text encoder with this config's options and prompt: what the
        cached text features, search queries and a fine-tuned text backbone start from."""
        from picoalign.encoders import create_text_encoder

        kwargs: dict[str, Any] = {}
        if self.text_max_tokens is not None:
            kwargs["max_length"] = self.text_max_tokens
        if self.text_special_tokens is not None:
            kwargs["drop_special"] = not self.text_special_tokens
        try:
            enc = create_text_encoder(self.text_encoder, **kwargs)
        except TypeError as e:
            raise ValueError(
                f"text encoder {self.text_encoder!r} takes no option {sorted(kwargs)} ({e})"
            ) from e
        enc.prompt = self.prompt
        return enc

    @property
    def trains_text(self) -> bool:
        """Whether the text backbone is trained: asked for, or a randomly initialised GRU
        (``glove-gru``), which is useless untrained."""
        return self.finetune_text or self.text_encoder == "glove-gru"

    @property
    def eval_rule(self) -> str:
        """The scoring rule the model evaluates with when none is asked for: PICO's
        ``eval_score``, plain for a baseline."""
        return self.pico.eval_score if self.method == "pico" else "plain"

    def check_rule(self, rule: str | None) -> None:
        """Refuse a scoring rule this model cannot score with (None: its own): the one check
        ``PicoAligner.scores`` makes and ``evaluate`` makes before any encoding."""
        if rule is not None and rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if rule not in (None, "plain") and self.method != "pico":
            raise ValueError(
                f"rule {rule!r} needs a PICO model (method 'pico'), not a {self.method} "
                "model: score it with the plain rule"
            )

    @property
    def label(self) -> str:
        """``method`` on ``scorer``, as tables and progress bars name a model."""
        return self.method if self.scorer == "fine_grained" else f"{self.method}-{self.scorer}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
