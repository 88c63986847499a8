"""Issue 14, CLI polish: --debug anywhere, defaults in every --help, help text on every
option, run folders accepted by PicoAligner.load."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cli_runner import run_cli
from picoalign.cli.commands import build_parser, main
from picoalign.config import TrainConfig
from picoalign.model import ModelConfig, PicoAligner


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_is_accepted_before_or_after_the_command(tmp_path: Path, where: str) -> None:
    """The user report: `picoalign train ... --debug` was `unrecognized arguments`."""
    cmd = ["evaluate", "--checkpoint", str(tmp_path / "nope")]
    argv = ["--debug", *cmd] if where == "before" else [*cmd, "--debug"]
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        main(argv)


def test_without_debug_the_error_is_one_line(tmp_path: Path) -> None:
    rc, _, err = run_cli("evaluate", "--checkpoint", str(tmp_path / "nope"))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["train", "evaluate", "index", "search", "datasets", "demo"])
def test_every_option_has_help_and_every_help_shows_its_default(command: str, capsys) -> None:
    parser = subparsers()[command]
    text = parser.format_help()
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help text"
        meaningful = action.nargs != 0 and action.default not in (None, [], argparse.SUPPRESS)
        if meaningful:
            help_text = parser._get_formatter()._expand_help(action)
            assert "default" in help_text, f"{command} {action.option_strings[0]}: {help_text}"
    assert "--debug" in text


def test_the_help_lists_every_dataset_spec(capsys) -> None:
    """``picoalign --help`` names every spec that ``picoalign datasets`` lists (scenes was
    once missing from it)."""
    from picoalign.data import list_datasets

    with pytest.raises(SystemExit):
        main(["--help"])
    shown = capsys.readouterr().out
    for name, _, _ in list_datasets():
        assert f"  {name} " in shown, f"--help does not list {name}"


def test_train_help_names_the_run_folder_flags(capsys) -> None:
    text = subparsers()["train"].format_help()
    assert (
        "--overwrite" in text
        and "--resume" in text
        and f"(default: {TrainConfig().epochs})" in text
    )


def test_load_accepts_a_run_folder(tmp_path: Path) -> None:
    model = PicoAligner(ModelConfig(image_dim=8, text_dim=8, embed_dim=8, method="baseline"))
    model.save(tmp_path / "run" / "best")
    loaded = PicoAligner.load(tmp_path / "run")
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert (loaded.state_dict()[k] == v).all()


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["train", "--epochs", "0"], "picoalign train: error: argument --epochs: expected an"),
        (["search", "idx", "q", "-k", "0"], "picoalign search: error: argument -k/--top-k"),
        (["bogus"], "picoalign: error: argument COMMAND: invalid choice: 'bogus'"),
    ],
)
def test_a_usage_error_is_one_line_with_where_to_read_more(argv, expect, capsys) -> None:
    """The walkthrough's report: a usage error printed the command's whole usage block (a
    dozen lines for train) above the one line that says what is wrong."""
    from picoalign.cli.commands import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(expect), err
    assert err.rstrip().endswith("-h)")
