"""TrainConfig: defaults < YAML file < overrides, strict keys, YAML round trip."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from picoalign.config import TrainConfig, config_from_dict, dump_config, load_config
from picoalign.core.pico import PICOConfig
from picoalign.model import ModelConfig


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_without_file_or_overrides() -> None:
    assert load_config(None) == TrainConfig()
    assert load_config(None, {}) == TrainConfig()


def test_file_overrides_defaults_and_overrides_override_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "epochs: 3\nlr: 0.01\nlr_steps: [1, 2]\n"
        "model:\n  embed_dim: 32\n  method: baseline\n  pico:\n    tau: 0.5\n    bank_size: 4\n",
    )
    cfg = load_config(path)
    assert (cfg.epochs, cfg.lr, cfg.lr_steps) == (3, 0.01, [1, 2])
    assert cfg.model.embed_dim == 32 and cfg.model.method == "baseline"
    assert cfg.model.pico.tau == 0.5 and cfg.model.pico.bank_size == 4
    assert cfg.model.pico.dim == 32  # follows embed_dim
    default = TrainConfig()
    assert cfg.batch_size == default.batch_size and cfg.margin == default.margin
    assert cfg.model.head == default.model.head
    assert cfg.model.pico.momentum == default.model.pico.momentum

    cfg = load_config(path, {"epochs": 5, "model.method": "pico", "model.pico.tau": 2.0})
    assert cfg.epochs == 5 and cfg.model.method == "pico" and cfg.model.pico.tau == 2.0
    # what the overrides do not touch keeps the file's value
    assert cfg.lr == 0.01 and cfg.model.embed_dim == 32 and cfg.model.pico.bank_size == 4


def test_overrides_alone_and_into_empty_sections(tmp_path: Path) -> None:
    cfg = load_config(None, {"model.pico.reading": "pair", "seed": 3})
    assert cfg.model.pico.reading == "pair" and cfg.seed == 3
    path = write(tmp_path, "model:\nepochs: 2\n")  # an empty (null) section
    cfg = load_config(path, {"model.embed_dim": 8})
    assert cfg.model.embed_dim == 8 and cfg.epochs == 2


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_an_empty_file_is_refused(tmp_path: Path, text: str) -> None:
    """The CLI walkthrough: an empty (truncated) --config trained every default, Twemoji with
    the real encoders for 20 epochs, minutes of CPU the user did not ask for."""
    with pytest.raises(ValueError, match="the config file holds no options"):
        load_config(write(tmp_path, text))


def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys: ``epochs: 2`` then ``epochs: 3`` trained 3."""
    with pytest.raises(ValueError, match=r"key 'epochs' given twice at line 2"):
        load_config(write(tmp_path, "epochs: 2\nepochs: 3\n"))
    with pytest.raises(ValueError, match=r"key 'tau' given twice at line 4"):
        load_config(write(tmp_path, "model:\n  pico:\n    tau: 1\n    tau: 2\n"))
    # what YAML allows stays allowed: merge keys; an unhashable key stays YAML's own error
    merged = "model: {<<: {image_encoder: random-conv}, text_encoder: hash-text}\nepochs: 2\n"
    assert load_config(write(tmp_path, merged)).model.image_encoder == "random-conv"
    with pytest.raises(ValueError, match="found unhashable key"):
        load_config(write(tmp_path, "? [a, b]\n: 1\n"))
    from picoalign.config.loading import override_value

    with pytest.raises(ValueError, match="key 'image_encoder' given twice"):  # --set too
        override_value("model", "{image_encoder: a, image_encoder: b}")


def test_an_unknown_override_is_named_by_its_flag_not_the_file(tmp_path: Path) -> None:
    """``--config ok.yaml --set foo=1`` said "ok.yaml + overrides: unknown key(s) foo": the
    user was sent to a file that is fine."""
    ok = write(tmp_path, "epochs: 2\n")
    with pytest.raises(ValueError, match=r"^--set: unknown key\(s\) foo"):
        load_config(ok, {"foo": 1}, origins={"foo": "--set"})
    with pytest.raises(ValueError, match=r"^--set: model\.pico: unknown key\(s\) lamda"):
        load_config(ok, {"model.pico.lamda": 0.3}, origins={"model.pico.lamda": "--set"})
    assert load_config(ok, {"model.pico.lam": 0.0}).model.pico.lam == 0.0  # a falsy value


@pytest.mark.parametrize(
    "text, key",
    [
        ("epoch: 3\n", "epoch"),
        ("model:\n  embed_dims: 3\n", "embed_dims"),
        ("model:\n  pico:\n    temperature: 0.5\n", "temperature"),
    ],
)
def test_unknown_key_in_file_names_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=key) as info:
        load_config(path)
    assert str(path) in str(info.value)
    # a valid override does not hide the file's typo, and the file is still named
    with pytest.raises(ValueError, match=key) as info:
        load_config(path, {"epochs": 2})
    assert str(path) in str(info.value)


@pytest.mark.parametrize("key", ["epoch", "model.embed_dims", "model.pico.temperature"])
def test_unknown_override_key_is_named(key: str) -> None:
    with pytest.raises(ValueError, match=key.rsplit(".", 1)[-1]) as info:
        load_config(None, {key: 1})
    assert "overrides" in str(info.value)


@pytest.mark.parametrize(
    ("key", "meant"),
    [("epoch", "epochs"), ("model.pico.lamda", "lam"), ("model.embed_dims", "embed_dim")],
)
def test_a_mistyped_key_gets_the_close_one_suggested(key: str, meant: str) -> None:
    with pytest.raises(ValueError, match=f"did you mean {meant} for {key.rsplit('.', 1)[-1]}"):
        load_config(None, {key: 1})


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"epochs": -1}, "invalid epochs: -1 (expected an integer >= 1, or auto)"),
        ({"batch_size": 1}, "invalid batch_size: 1 (expected an integer >= 2)"),
        ({"eval_every": 0}, "invalid eval_every: 0 (expected an integer >= 1)"),
    ],
)
def test_an_invalid_value_says_what_was_expected(overrides: dict, expected: str) -> None:
    with pytest.raises(ValueError) as info:
        load_config(None, overrides)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    "overrides", [{"model": 3}, {"model.pico": "x"}, {"epochs.sub": 1}, {"model.head.x": 1}]
)
def test_override_into_a_non_section_is_a_value_error(overrides: dict) -> None:
    with pytest.raises(ValueError):
        load_config(None, overrides)


@pytest.mark.parametrize("text", ["epochs: [1\n", "a: b: c\n", "\tepochs: 2\n"])
def test_invalid_yaml_names_the_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=r"invalid YAML \(.* at line \d+, column \d+\)$") as info:
        load_config(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", "model: 3\n", "model: [1]\n"])
def test_non_mapping_names_the_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match="mapping") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "text, word",
    [
        ("epochs: 0\n", "epochs"),
        ("batch_size: 1\n", "batch_size"),
        ("loss: hinge\n", "loss"),
        ("eval_split: dev\n", "eval_split"),
        ("eval_every: 0\n", "eval_every"),
        ("epochs: many\n", "epochs"),
        ("model:\n  method: fancy\n", "method"),
        ("model:\n  pico:\n    reading: diagonal\n", "reading"),
    ],
)
def test_invalid_values_name_the_file_and_option(tmp_path: Path, text: str, word: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=word) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_an_override_can_fix_a_value_of_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "epochs: 0\n")
    assert load_config(path, {"epochs": 2}).epochs == 2


def test_dump_then_load_round_trip(tmp_path: Path) -> None:
    cfg = TrainConfig(
        data="jsonl:/some/where.jsonl",
        out=str(tmp_path / "run"),
        epochs=7,
        lr_steps=[2, 5],
        loss="infonce",
        cache_dir=None,
        progress=False,
        model=ModelConfig(
            image_encoder="random-conv",
            text_encoder="hash-text",
            embed_dim=24,  # image_dim/text_dim are derived from the features: not options
            head="linear",
            method="pico",
            pico=PICOConfig(reading="pair", tau=0.25, warmup_steps=9, eval_score="weighted"),
        ),
    )
    text = dump_config(cfg)
    assert isinstance(yaml.safe_load(text), dict)  # plain YAML, no python tags
    assert "!!python" not in text
    again = load_config(write(tmp_path, text, "dumped.yaml"))
    assert again == cfg
    assert dump_config(again) == text
    assert config_from_dict(cfg.to_dict()) == cfg


def test_exponent_floats_from_yaml_are_numbers(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads "1e-3" (no dot) as a string: the config turns it into a float
    cfg = load_config(write(tmp_path, "lr: 1e-3\nweight_decay: 5e-4\n"), {"margin": "1e-1"})
    assert (cfg.lr, cfg.weight_decay, cfg.margin) == (1e-3, 5e-4, 0.1)
    assert isinstance(cfg.lr, float)
    with pytest.raises(ValueError, match="lr"):
        load_config(None, {"lr": "fast"})


# ------------------------------------------------------------ typed options (issue 14)


@pytest.mark.parametrize(
    "key, value, expect",
    [
        ("model.pico.feedback", "maybe", "valid boolean"),
        ("model.pico.lam", "high", "valid number"),
        ("lr_steps", 8, "write a list, e.g. lr_steps=[8]"),
        ("model.pico.reading", "diagonal", "'pair' or 'global'"),
        ("loss", "hinge", "'triplet' or 'infonce'"),
        ("model.head", "deep", "'linear' or 'mlp'"),
        ("model.pico.feedback_metric", 3, "'mrr', 'rsum' or 'neg_loss'"),
        ("progress", "perhaps", "valid boolean"),
        ("epochs", 2.5, "valid integer"),
        ("data", 7, "valid string"),
        ("lr_steps", ["x"], "lr_steps.0=x: Input should be a valid number"),
    ],
)
def test_every_option_is_typed_and_the_error_names_key_value_and_origin(
    key: str, value: object, expect: str
) -> None:
    with pytest.raises(ValueError) as info:
        load_config(None, {key: value}, origins={key: "--set"})
    msg = str(info.value)
    assert f"--set {key}" in msg and expect in msg, msg
    assert str(value if not isinstance(value, list) else value[0]) in msg
    assert "\n" not in msg


def test_a_value_that_fits_no_member_of_a_union_is_one_message_at_the_option() -> None:
    """The walkthrough's report: ``--set epochs=2.5`` named pydantic's internal locations,
    ``epochs.int`` and ``epochs.literal['auto']``, once each."""
    with pytest.raises(ValueError) as info:
        load_config(None, {"epochs": 2.5}, origins={"epochs": "--set"})
    msg = str(info.value)
    assert msg == (
        "--set epochs=2.5: should be a valid integer (got a number with a fractional part), "
        "or 'auto'"
    )


def test_a_typed_error_in_a_file_names_the_file_the_key_and_the_value(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  pico:\n    lam: high\n")
    with pytest.raises(ValueError) as info:
        load_config(path)
    assert f"{path}: model.pico.lam = 'high': Input should be a valid number" in str(info.value)


def test_a_range_check_still_names_the_option() -> None:
    with pytest.raises(ValueError, match=r"PICOConfig.lam must be in \[0, 1\], got 2"):
        load_config(None, {"model.pico.lam": 2})
    # as the user typed it (it said "overrides or the command line: model.pico: …")
    with pytest.raises(ValueError, match=r"^--set model\.pico\.lam=2: PICOConfig\.lam must"):
        load_config(None, {"model.pico.lam": 2}, origins={"model.pico.lam": "--set"})


def test_the_documented_coercions() -> None:
    cfg = load_config(
        None, {"model.pico.feedback": "no", "epochs": "3", "lr": "2e-3", "progress": 0}
    )
    assert cfg.model.pico.feedback is False and cfg.epochs == 3 and cfg.lr == 2e-3
    assert cfg.progress is False


@pytest.mark.parametrize(
    "key, value, expect",
    [
        ("model.image_dim", 16, "taken from the image features' width"),
        ("model.text_dim", 16, "taken from the text features' width"),
        ("model.pico.dim", 64, "always model.embed_dim (256)"),
    ],
)
def test_derived_options_are_refused_not_silently_overwritten(
    key: str, value: int, expect: str
) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as info:
        load_config(None, {key: value}, origins={key: "--set"})
    assert expect in str(info.value)


def test_derived_options_at_their_value_still_load(tmp_path: Path) -> None:
    """config.yaml files written before they were dropped store the values used anyway."""
    path = write(
        tmp_path,
        "model:\n  image_dim: 1280\n  text_dim: 384\n  embed_dim: 32\n  pico:\n    dim: 32\n",
    )
    assert load_config(path).model.pico.dim == 32
    assert "image_dim" not in dump_config(load_config(path))


def test_python_construction_keeps_working() -> None:
    assert PICOConfig(dim=512).dim == 512
    with pytest.raises(ValueError, match="reading"):
        PICOConfig(reading="diagonal")
    assert ModelConfig(method="global").scorer == "global"


@pytest.mark.parametrize(
    "key, raw, value",
    [
        ("model.prompt", "{} emoji", "{} emoji"),  # YAML cannot read it: a text option keeps it
        ("model.prompt", "{}", "{}"),  # YAML reads an empty mapping
        ("model.prompt", '"an emoji of {}"', "an emoji of {}"),  # quoted: YAML unquotes
        ("model.text_encoder", "123", "123"),
        ("cache_dir", "null", None),  # an optional text option can still be unset
        ("lr_steps", "[0.6, 0.85]", [0.6, 0.85]),
        ("model.pico.lam", "0.5", 0.5),
        ("model.text_max_tokens", "null", None),
    ],
)
def test_set_values_are_read_by_the_options_type(key: str, raw: str, value: object) -> None:
    from picoalign.config.loading import override_value

    assert override_value(key, raw) == value
    if isinstance(value, str):  # and the whole config accepts it
        assert getattr(load_config(None, {key: value}).model, key.split(".")[-1]) == value


@pytest.mark.parametrize("key", ["lr_steps", "model.pico.lam", "no.such.key"])
def test_a_set_value_yaml_cannot_read_is_one_line_that_says_where(key: str) -> None:
    from picoalign.config.loading import override_value

    with pytest.raises(ValueError, match=rf"--set {key}=\[1,: .*column 4.*quote text") as info:
        override_value(key, "[1,")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "key, value, expect",
    [
        ("weight_decay", -1, "--set weight_decay=-1: invalid weight_decay"),
        ("pico_warmup_epochs", -1, "--set pico_warmup_epochs=-1: invalid pico_warmup_epochs"),
        ("triplet_warmup_epochs", -1, "invalid triplet_warmup_epochs"),
        ("lr_gamma", 0, "invalid lr_gamma"),
        ("grad_clip", -2, "invalid grad_clip"),
        ("backbone_lr_mult", -0.1, "invalid backbone_lr_mult"),
        ("model.embed_dim", 0, "--set model.embed_dim=0: embed_dim must be an integer >= 1"),
    ],
)
def test_range_errors_name_the_option_the_user_set(key: str, value: object, expect: str) -> None:
    """The user report: weight_decay=-1 failed in the optimiser after the data was encoded,
    pico_warmup_epochs=-1 and embed_dim=0 were refused under other options' names."""
    with pytest.raises(ValueError, match=re.escape(expect)):
        load_config(None, {key: value}, origins={key: "--set"})


def test_a_local_hf_encoder_folder_is_stored_absolute(tmp_path, monkeypatch) -> None:
    """The walkthrough's report: a run trained with hf:models/vit stored it relative, so
    evaluating from another folder read it as a hub name (or another folder's models/vit)."""
    from picoalign.config.paths import absolute_encoder, with_absolute_paths

    (tmp_path / "models" / "vit").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert absolute_encoder("hf:models/vit") == f"hf:{tmp_path / 'models' / 'vit'}"
    for kept in ("hf:google/vit-base-patch16-224", "hf:/abs/x", "minilm", "efficientnet-lite0"):
        assert absolute_encoder(kept) == kept  # hub names, absolute paths, registry names
    cfg = load_config(None, {"model.image_encoder": "hf:models/vit", "out": "runs/x"})
    fixed = with_absolute_paths(cfg)
    assert fixed.model.image_encoder == f"hf:{tmp_path / 'models' / 'vit'}"
    assert fixed.model.text_encoder == cfg.model.text_encoder
    assert cfg.model.image_encoder == "hf:models/vit"  # a copy: the input is not changed


def test_a_key_of_a_nested_section_at_the_top_says_where_it_belongs(tmp_path) -> None:
    """The walkthrough's report: `method: pico` at the top of a YAML was an unknown key with
    no hint, while a typo'd --set got a suggestion."""
    for text, hint in (
        ("method: pico\n", "method belongs under model: (model.method)"),
        ("lam: 0.5\n", "lam belongs under model.pico: (model.pico.lam)"),
        ("model:\n  lam: 0.5\n", "lam belongs under pico: (pico.lam)"),
        ("epoks: 3\n", "did you mean epochs for epoks?"),
    ):
        path = tmp_path / "c.yaml"
        path.write_text(text)
        with pytest.raises(ValueError, match=re.escape(hint)):
            load_config(path)


@pytest.mark.parametrize("steps", [[1.5], [0.5, 2.25]])
def test_an_lr_step_is_an_epoch_or_a_fraction_not_both(steps: list[float]) -> None:
    """The CLI walkthrough: ``lr_steps=[1.5]`` was taken as epoch 1, without a word."""
    with pytest.raises(ValueError, match="a list of epochs >= 0 or fractions of training"):
        TrainConfig(lr_steps=steps)
    assert TrainConfig(lr_steps=[0.6, 8, 9.0]).lr_steps == [0.6, 8, 9.0]
