"""``picoalign`` end to end on a tiny jsonl dataset with the download-free test encoders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_runner import TOY_ENCODERS, one_thread_with_cache, run_cli, toy_train_argv
from picoalign import __version__
from picoalign.cli.commands import main
from picoalign.config import load_config
from picoalign.model import PicoAligner

ENCODERS = list(TOY_ENCODERS)
N_ITEMS = 24  # the jsonl_dataset fixture (conftest)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, write_jsonl_dataset):
    """One 2-epoch training run through the CLI, shared by the tests of this module."""
    tmp = tmp_path_factory.mktemp("cli")
    data = write_jsonl_dataset(tmp / "data")
    cache = tmp / "cache"
    with one_thread_with_cache(cache):  # tiny tensors: thread hand-offs dominate
        result = run_cli(*toy_train_argv(data, tmp / "run"))
    return {"data": data, "cache": cache, "run": tmp / "run", "result": result}


@pytest.fixture(autouse=True)
def env(trained, monkeypatch):
    """Every test uses the shared feature cache (never ~/.cache) and one torch thread."""
    monkeypatch.setenv("PICOALIGN_CACHE", str(trained["cache"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------- train


def test_train_writes_a_run_and_caches_features_in_picoalign_cache(trained) -> None:
    rc, out, err = trained["result"]
    assert rc == 0, err
    assert "epoch   1" in out and "epoch   2" in out and "selected epoch 2 (last): val rSum" in out
    run = trained["run"]
    assert f"model saved in {run}/best" in out
    assert {p.name for p in run.iterdir()} >= {
        "config.yaml",
        "metrics.jsonl",
        "metrics.csv",
        "last",
        "best",
    }
    cfg = load_config(run / "config.yaml")
    assert cfg.model.embed_dim == 16 and cfg.epochs == 2 and cfg.batch_size == 8
    assert (cfg.model.image_encoder, cfg.model.text_encoder) == ("random-conv", "hash-text")
    assert cfg.data == f"jsonl:{trained['data']}"
    model = PicoAligner.load(run / "best")
    assert model.config.embed_dim == 16 and model.config.method == "pico"
    # features went to $PICOALIGN_CACHE/features: one image file, one text file
    cached = sorted(p.name for p in (trained["cache"] / "features").iterdir())
    assert len(cached) == 2, cached
    assert any("-images-" in n for n in cached) and any("-texts-" in n for n in cached)


def test_train_then_resume_one_more_epoch(trained, tmp_path: Path) -> None:
    common = ["--data", f"jsonl:{trained['data']}", *ENCODERS, "--batch-size", "8"]
    common += ["--no-progress", "--set", "model.embed_dim=8", "--method", "baseline"]
    out_dir = str(tmp_path / "run")
    rc, out, err = run_cli("train", *common, "--epochs", "1", "--out", out_dir)
    assert rc == 0, err
    rc, out, err = run_cli("train", *common, "--epochs", "2", "--out", out_dir, "--resume")
    assert rc == 0, err
    assert "epoch   1" not in out and "epoch   2" in out  # continued, not restarted
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]
    # the feature cache was reused, not duplicated
    assert len(list((trained["cache"] / "features").iterdir())) == 2


def test_train_with_a_config_file(trained, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"data: jsonl:{trained['data']}\nout: {tmp_path / 'run'}\nepochs: 1\nbatch_size: 8\n"
        "progress: false\nmodel:\n  image_encoder: random-conv\n  text_encoder: hash-text\n"
        "  embed_dim: 8\n  method: global\n"
    )
    rc, out, err = run_cli("train", "--config", str(cfg), "--set", "eval_split=test")
    assert rc == 0, err
    saved = load_config(tmp_path / "run" / "config.yaml")
    # the legacy spelling "method: global" reads as the global scorer with the plain score
    assert (saved.model.method, saved.model.scorer) == ("baseline", "global")
    assert saved.eval_split == "test" and saved.epochs == 1
    assert "selected epoch 1 (last): test rSum" in out


def test_a_config_file_without_out_trains_into_runs_label(
    trained, tmp_path: Path, monkeypatch
) -> None:
    """The walkthrough's report: with --config, a file that gives no ``out`` sent the run to
    runs/pico whatever its scorer, so the README's next command was refused."""
    from picoalign.cli.commands import build_parser
    from picoalign.cli.train import train_config

    cfg = tmp_path / "my.yaml"
    cfg.write_text(f"data: jsonl:{trained['data']}\nmodel:\n  scorer: global\n")
    monkeypatch.chdir(tmp_path)
    parse = build_parser().parse_args
    assert train_config(parse(["train", "--config", str(cfg)])).out == "runs/pico-global"
    cfg.write_text(f"data: jsonl:{trained['data']}\nout: here\nmodel:\n  scorer: global\n")
    assert train_config(parse(["train", "--config", str(cfg)])).out == "here"
    assert train_config(parse(["train", "--config", str(cfg), "--out", "there"])).out == "there"


# ---------------------------------------------------------------------------------- evaluate


def test_evaluate_json(trained) -> None:
    rc, out, err = run_cli("evaluate", "--checkpoint", str(trained["run"]), "--json")
    assert rc == 0, err
    metrics = json.loads(out)
    assert {"i2t", "t2i", "rsum", "n_images", "n_captions"} <= set(metrics)
    assert metrics["n_images"] == 4 and metrics["n_captions"] == 8  # the test split
    assert {"r1", "r5", "r10"} <= set(metrics["i2t"]) and {"r1", "r5", "r10"} <= set(metrics["t2i"])
    assert 0 <= metrics["rsum"] <= 600
    # 4 test images: stdout stays pure JSON, the warning goes to stderr
    assert "warning: the test split has 4 images" in err and "steps of 25 points" in err
    assert metrics["rule"] == "plain"  # the trained PICO model's eval_score


def test_evaluate_table_names_its_protocol(trained, monkeypatch) -> None:
    """The metrics walkthrough: the table's row said data, split and rule; 1k (a mean of five
    folds), 5k, flickr-1k and full all printed the same label."""
    import picoalign.evaluation as evaluation
    from picoalign.evaluation import protocols

    real = evaluation.evaluate
    monkeypatch.setattr(protocols, "protocol_size_problem", lambda *a: None)
    monkeypatch.setattr(  # the toy split is no 5K set: score it fully, label it as asked
        evaluation,
        "evaluate",
        lambda model, fs, protocol, *a, **k: real(model, fs, "full", *a, **k),
    )
    for protocol, says in (("1k", "protocol 1k: mean of 5 folds, "), ("full", "test, plain")):
        rc, out, err = run_cli("evaluate", str(trained["run"]), "--protocol", protocol)
        assert rc == 0 and says in out.splitlines()[-1], out + err


def test_a_protocols_image_count_is_checked_before_encoding(trained, monkeypatch) -> None:
    """The metrics walkthrough: `--protocol 5k` on a split of another size was refused only
    after the whole split had been encoded (minutes on a real set)."""
    from picoalign.features import dataset as features_dataset

    def encode(*args, **kwargs):
        raise AssertionError("encoded before the protocol's size was checked")

    monkeypatch.setattr(features_dataset, "encode_dataset", encode)
    rc, _, err = run_cli("evaluate", str(trained["run"]), "--protocol", "5k")
    assert rc == 2 and "split 'test': n_images=4, but protocol '5k' needs 5000" in err, err


def test_evaluate_json_numbers_carry_no_float_noise() -> None:
    """The walkthrough: `"r1": 57.99999999999999` in `evaluate --json`, carried into tables."""
    from picoalign.cli.evaluate import _rounded

    noisy = {"i2t": {"r1": 100 * 0.58, "medr": 2.0}, "rsum": 0.1 + 0.2, "n_images": 50}
    assert _rounded(noisy) == {"i2t": {"r1": 58.0, "medr": 2.0}, "rsum": 0.3, "n_images": 50}
    assert json.dumps(_rounded(noisy)) == (
        '{"i2t": {"r1": 58.0, "medr": 2.0}, "rsum": 0.3, "n_images": 50}'
    )
    assert _rounded({"folds": [{"r5": 0.7000000000000001}]}) == {"folds": [{"r5": 0.7}]}  # 1k


def test_evaluate_says_which_scoring_rule_it_used(trained) -> None:
    """The walkthrough's report: --rule weighted printed the same label as plain and its
    JSON had no rule; on a run whose warm-up covered every epoch it equalled plain silently."""
    run = str(trained["run"])
    rc, out, err = run_cli("evaluate", run, "--rule", "weighted")
    assert rc == 0, err
    assert ", test, weighted scores)" in out
    active = PicoAligner.load(run).pico.active
    assert ("the weighted scores are the plain ones" in err) is (not active)
    rc, out, _ = run_cli("evaluate", run, "--rule", "weighted", "--json")
    assert json.loads(out)["rule"] == "weighted"


def test_evaluate_model_folder_other_split_and_table(trained) -> None:
    best = str(trained["run"] / "best")
    rc, out, err = run_cli("evaluate", "--checkpoint", best, "--split", "all", "--json")
    assert rc == 0, err
    metrics = json.loads(out)
    assert (metrics["n_images"], metrics["n_captions"]) == (N_ITEMS, 2 * N_ITEMS)
    rc, out, err = run_cli(
        "evaluate", "--checkpoint", best, "--data", f"jsonl:{trained['data']}", "--split", "val"
    )
    assert rc == 0, err
    assert "pico (jsonl:" in out and "val" in out  # the human-readable table
    if len(f"jsonl:{trained['data']}") > 40:  # a long spec is cut to its paths' last parts
        assert "pico (jsonl:data.jsonl, val," in out and str(trained["data"]) not in out
    rc, out, err = run_cli("evaluate", best, "--split", "val", "--no-progress")
    assert rc == 0 and "pico (jsonl:" in out and "%|" not in err  # no bar at all


def test_evaluate_warns_of_a_model_never_trained(trained, tmp_path: Path) -> None:
    """A model saved before any training (``from_encoders(...).save``) was evaluated without a
    word: its random heads' recalls read like a (bad) result."""
    PicoAligner(PicoAligner.load(trained["run"]).config).save(tmp_path / "fresh")
    data = f"jsonl:{trained['data']}"
    rc, _, err = run_cli("evaluate", str(tmp_path / "fresh"), "--data", data, "--split", "all")
    assert rc == 0 and "an evaluation of" in err and "never trained" in err, err
    rc, _, err = run_cli("evaluate", str(trained["run"]), "--split", "all")
    assert rc == 0 and "never trained" not in err, err


def test_the_checkpoint_and_the_index_may_be_given_without_their_flag(
    trained, tmp_path: Path, capsys
) -> None:
    run = str(trained["run"])
    rc, out, err = run_cli("evaluate", run, "--json")
    assert rc == 0, err
    assert json.loads(out) == json.loads(run_cli("evaluate", "--checkpoint", run, "--json")[1])
    index = tmp_path / "idx"
    rc, _, err = run_cli("index", run, "--out", str(index), "--no-progress")  # the run's data
    assert rc == 0, err
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["dataset"]["spec"] == f"jsonl:{trained['data']}"
    assert manifest["dataset"]["seed"] == 0  # the run's split_seed
    rc, out, err = run_cli("search", str(index), "--text", "a red circle", "--json")
    assert rc == 0 and json.loads(out)[0]["hits"], err
    # queries after INDEX are read by the index's kind: texts for an image index
    for argv in ([str(index)], ["--index", str(index)]):
        rc, bare, err = run_cli("search", *argv, "a red circle", "--json")
        assert rc == 0, err
        assert json.loads(bare) == json.loads(out)
    rc, _, err = run_cli("search", str(index))
    assert rc != 0 and "no query: picoalign search INDEX QUERY" in err
    rc, _, err = run_cli("search", str(index), "a", "--text", "b")
    assert rc != 0 and "after INDEX or with --text / --image, not both" in err
    for argv, why in (
        (["evaluate", run, "--checkpoint", str(tmp_path)], "CHECKPOINT given twice"),
        (["evaluate"], "a checkpoint is required: CHECKPOINT or --checkpoint"),
        (["search", "--text", "x"], "an index is required: INDEX or --index"),
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)  # not run_cli: argparse's own exit, its message on the real stderr
        assert e.value.code == 2
        assert why in capsys.readouterr().err


@pytest.mark.parametrize("scorer", ["global", "gpo"])
def test_pico_on_a_pooled_scorer_trains_evaluates_both_rules_indexes_and_searches(
    trained, tmp_path: Path, scorer: str
) -> None:
    data = f"jsonl:{trained['data']}"
    run = tmp_path / "run"
    rc, out, err = run_cli(
        "train", "--data", data, *ENCODERS, "--epochs", "2", "--batch-size", "8",
        "--no-progress", "--scorer", scorer, "--method", "pico", "--out", str(run),
        "--set", "model.embed_dim=16", "--set", "pico_warmup_epochs=0",
    )  # fmt: skip
    assert rc == 0, err
    model = PicoAligner.load(run)
    assert (model.config.scorer, model.config.method) == (scorer, "pico")
    got = {}
    for rule in ("plain", "weighted"):
        rc, out, err = run_cli("evaluate", "--checkpoint", str(run), "--rule", rule, "--json")
        assert rc == 0, err
        got[rule] = json.loads(out)["rsum"]
    rc, out, err = run_cli("evaluate", "--checkpoint", str(run))
    assert rc == 0 and f"pico-{scorer} (" in out, err
    index = tmp_path / "idx"
    rc, out, err = run_cli(
        "index", "--checkpoint", str(run), "--data", data, "--out", str(index), "--no-progress"
    )
    assert rc == 0, err
    rc, out, err = run_cli("search", "--index", str(index), "--text", "a red circle", "--json")
    assert rc == 0, err
    assert len(json.loads(out)[0]["hits"]) > 0
    # an existing index is never replaced silently: --overwrite, or a one-line refusal
    argv = ["index", "--checkpoint", str(run), "--data", data, "--out", str(index), "--no-progress"]
    before = (index / "manifest.json").read_bytes()
    rc, _, err = run_cli(*argv, "--kind", "captions")
    assert rc == 2 and "holds a gallery index; pass --overwrite" in err
    assert (index / "manifest.json").read_bytes() == before
    rc, out, err = run_cli(*argv, "--kind", "captions", "--overwrite")
    assert rc == 0 and "indexed" in out, err
    assert json.loads((index / "manifest.json").read_text())["kind"] == "captions"
    (index / "keep.txt").write_text("mine")  # never taken along by a replace
    rc, _, err = run_cli(*argv, "--overwrite")
    assert rc == 2 and "holds files a gallery index does not (keep.txt)" in err
    assert (index / "keep.txt").read_text() == "mine"


def test_evaluate_rejects_the_weighted_rule_for_a_baseline(trained, tmp_path: Path) -> None:
    run = tmp_path / "run"
    rc, _, err = run_cli(
        "train", "--data", f"jsonl:{trained['data']}", *ENCODERS, "--epochs", "1",
        "--batch-size", "8", "--no-progress", "--method", "baseline", "--out", str(run),
        "--set", "model.embed_dim=16",
    )  # fmt: skip
    assert rc == 0, err
    from picoalign.features import dataset as dataset_mod

    def no_encoding(*args, **kwargs):  # the walkthrough: refused only after encoding it all
        raise AssertionError("encoded before refusing")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dataset_mod, "encode_dataset", no_encoding)
        rc, _, err = run_cli("evaluate", "--checkpoint", str(run), "--rule", "weighted")
    assert rc == 2 and "needs a PICO model" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------- others


def test_datasets_lists_the_builtin_ones() -> None:
    rc, out, _ = run_cli("datasets")
    assert rc == 0
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert "twemoji" in names and "jsonl:PATH" in names


@pytest.mark.parametrize(
    "command", ["train", "evaluate", "index", "search", "datasets", "demo", None]
)
def test_help_of_every_command(command: str | None, capsys) -> None:
    argv = [command, "--help"] if command else ["--help"]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: picoalign {command or ''}".rstrip())
    if command is None:
        for name in ("train", "evaluate", "index", "search", "datasets", "demo"):
            assert name in out
        assert "jsonl:PATH" in out  # the data-spec epilog


def test_no_command_prints_help_and_returns_2(capsys) -> None:
    assert main([]) == 2
    assert "usage: picoalign" in capsys.readouterr().out


def test_version_via_python_dash_m() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "picoalign", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"picoalign {__version__}"


# ---------------------------------------------------------------------------------- errors


def bad_jsonl(tmp: Path, trained) -> str:
    path = tmp / "bad.jsonl"
    good = trained["data"].read_text().splitlines()[:3]
    path.write_text("\n".join([*good, "{not json"]) + "\n")
    for i in range(3):  # the images next to the file
        (tmp / f"img{i}.png").write_bytes((trained["data"].parent / f"img{i}.png").read_bytes())
    return f"jsonl:{path}"


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing-data", "file not found"),
        ("bad-line", "line 4"),
        ("unknown-image-encoder", "unknown image encoder 'bogus'"),
        ("unknown-text-encoder", "unknown text encoder 'bogus'"),
        ("unknown-set-key", "no_such_option"),
        ("bad-set-section", "model"),
        ("bad-config-file", "invalid YAML"),
        ("bad-checkpoint", "checkpoint not found"),
        ("not-a-checkpoint", "config.json: not found"),
        ("run-without-model", "a training run with no model saved yet"),
        ("unfinished-run", "an unfinished training run"),
        ("bad-device", "--device"),
    ],
)
def test_user_errors_print_one_line_and_return_2(
    case: str, expect: str, trained, tmp_path: Path
) -> None:
    data = f"jsonl:{trained['data']}"
    train = ["train", "--no-progress", "--epochs", "1", "--out", str(tmp_path / "run")]
    argv = {
        "missing-data": [*train, "--data", f"jsonl:{tmp_path / 'nope.jsonl'}", *ENCODERS],
        "bad-line": [*train, "--data", bad_jsonl(tmp_path, trained), *ENCODERS],
        "unknown-image-encoder": [*train, "--data", data, "--image-encoder", "bogus"],
        "unknown-text-encoder": [
            *train,
            "--data",
            data,
            "--image-encoder",
            "random-conv",
            "--text-encoder",
            "bogus",
        ],
        "unknown-set-key": [*train, "--data", data, *ENCODERS, "--set", "no_such_option=1"],
        "bad-set-section": [*train, "--data", data, *ENCODERS, "--set", "model=3"],
        "bad-config-file": [*train, "--config", str(tmp_path / "c.yaml")],
        "bad-checkpoint": ["evaluate", "--checkpoint", str(tmp_path / "nope")],
        "not-a-checkpoint": ["evaluate", "--checkpoint", str(tmp_path), "--data", data],
        "run-without-model": ["evaluate", str(tmp_path)],  # a config.yaml and no best/
        "unfinished-run": ["evaluate", str(tmp_path)],  # and a last/ checkpoint
        "bad-device": [*train, "--data", data, *ENCODERS, "--device", "quantum"],
    }[case]
    (tmp_path / "c.yaml").write_text("epochs: [1\n")
    if case in ("run-without-model", "unfinished-run"):
        (tmp_path / "config.yaml").write_text("epochs: 1\n")
    if case == "unfinished-run":  # select=last writes best/ only when training ends
        (tmp_path / "last").mkdir()
        (tmp_path / "last" / "config.json").write_text("{}")
    rc, out, err = run_cli(*argv)
    assert rc == 2, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("picoalign: error: ")
    assert expect in lines[0], lines[0]


def test_debug_reraises(trained, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        main(["--debug", "evaluate", "--checkpoint", str(tmp_path / "nope")])
    argv = ["--debug", "train", "--data", f"jsonl:{trained['data']}", "--image-encoder", "bogus"]
    with pytest.raises(KeyError, match="bogus"):  # UnknownEncoderError is a KeyError
        main([*argv, "--out", str(tmp_path / "run")])


def test_programming_errors_are_not_hidden(monkeypatch) -> None:
    """Only user errors become one-line messages; a bug keeps its traceback."""
    import picoalign.cli.commands as cli

    def broken(args) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "cmd_datasets", broken)
    with pytest.raises(ZeroDivisionError):
        main(["datasets"])


def test_importing_picoalign_is_light_and_its_names_load_on_use() -> None:
    code = (
        "import sys, picoalign; light = 'torch' not in sys.modules; "
        "from picoalign import PICO, PicoAligner, fine_grained_scores; "
        "print(light, 'PICO' in dir(picoalign), picoalign.PICO is PICO, picoalign.__version__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["True", "True", "True", __version__]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import picoalign

        picoalign.nope  # noqa: B018


def test_ctrl_c_while_the_command_starts_up_is_one_line(monkeypatch, capsys) -> None:
    """The user report: a Ctrl-C in the first seconds (torch importing) printed a
    KeyboardInterrupt traceback."""
    import types

    from picoalign.__main__ import run

    class Importing(types.ModuleType):
        def __getattr__(self, name: str):
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "picoalign.cli.commands", Importing("x"))
    assert run() == 130
    assert capsys.readouterr().err == "picoalign: interrupted\n"


def python_exits(code: str) -> tuple[int, str]:
    """A fresh Python running ``code``: its exit status and stderr."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return proc.returncode, proc.stderr


def test_ctrl_c_after_the_command_ended_does_not_change_its_status() -> None:
    """The gallery walkthrough: Ctrl-C a moment after `train` printed "model saved" (the
    interpreter tearing down) exited 130, as if the run had been stopped. A fresh process:
    the command ignores SIGINT once it has ended, which must not reach pytest's own."""
    code = (
        "import os, signal, sys\n"
        "from picoalign import __main__ as entry\n"
        "from picoalign.cli import commands\n"
        "commands.main = lambda: 0\n"
        "code = entry.run()\n"
        "os.kill(os.getpid(), signal.SIGINT)  # during teardown, as a late Ctrl-C\n"
        "sys.exit(code)\n"
    )
    assert python_exits(code) == (0, "")


def test_the_lazy_exports_are_the_public_names() -> None:
    import picoalign

    assert sorted(picoalign.__all__) == sorted([*picoalign._EXPORTS, "__version__"])
    assert all(getattr(picoalign, n) is not None for n in picoalign.__all__)


def test_a_library_warning_is_one_line_of_the_command() -> None:
    """The user report: `search` printed `.../retrieval/sheet.py:117: UserWarning: ...` and
    the source line. (A fresh process: pytest records warnings in its own way.)"""
    code = (
        "import sys, warnings\n"
        "from picoalign.cli import commands\n"
        "def warns(args):\n"
        "    warnings.warn('dataset x changed since the index was built', stacklevel=2)\n"
        "    return 0\n"
        "commands.cmd_datasets = warns\n"
        "sys.exit(commands.main(['datasets']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "picoalign: warning: dataset x changed since the index was built\n"


def test_a_moved_gallery_is_relocated_without_encoding_and_refusals_change_nothing(
    trained, tmp_path: Path
) -> None:
    """The walkthrough's report: after a gallery folder moved, the only way to fix its index
    was to encode every image again."""
    from PIL import Image

    old, new = tmp_path / "photos", tmp_path / "disk2" / "photos"
    (old / "2024").mkdir(parents=True)
    for i, rgb in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        Image.new("RGB", (20, 20), rgb).save(old / ("2024" if i else ".") / f"p{i}.png")
    index = tmp_path / "idx"
    rc, _, err = run_cli(
        "index", str(trained["run"]), "--data", f"folder:{old}", "--out", str(index),
        "--no-progress",
    )  # fmt: skip
    assert rc == 0, err
    new.parent.mkdir()
    old.rename(new)
    manifest = (index / "manifest.json").read_bytes()
    for bad in ([str(tmp_path / "elsewhere"), str(new)], [str(old), str(tmp_path)]):
        rc, _, err = run_cli("relocate", str(index), *bad)  # not under OLD; none at NEW
        assert rc == 2 and err.startswith("picoalign: error:"), err
        assert (index / "manifest.json").read_bytes() == manifest
    tokens = (index / "tokens.safetensors").read_bytes()
    rc, out, err = run_cli("relocate", str(index), str(old), str(new))
    assert rc == 0, err
    assert f"3 image paths now under {new}; dataset spec now folder:{new}" in out
    assert (index / "tokens.safetensors").read_bytes() == tokens  # nothing encoded again
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no longer at its path", no "dataset changed"
        rc, out, err = run_cli(
            "search", str(index), "a red circle", "-k", "3", "--json",
            "--sheet", str(tmp_path / "sheet.png"),
        )  # fmt: skip
    assert rc == 0, err
    hits = json.loads(out)[0]["hits"]
    assert {h["source"] for h in hits} == {str(new / "p0.png"), *(
        str(new / "2024" / f"p{i}.png") for i in (1, 2))}  # fmt: skip
    assert json.loads((index / "manifest.json").read_text())["relocated"][0]["to"] == str(new)
    rc, _, err = run_cli("relocate", str(tmp_path / "nope"), "a", "b")  # the index first
    assert rc == 2 and "nope: gallery index not found" in err
    (tmp_path / "afile").write_text("x")
    rc, _, err = run_cli("relocate", str(index), str(new), str(tmp_path / "afile"))
    assert rc == 2 and "new folder is a file, not a folder" in err


def test_an_image_index_encodes_no_captions(trained, tmp_path: Path, monkeypatch) -> None:
    """The walkthrough's report: indexing the images of a captioned dataset also encoded
    every caption (minutes on a large gallery), though an image index holds none of them."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PICOALIGN_CACHE", str(cache))
    run, data = str(trained["run"]), f"jsonl:{trained['data']}"
    rc, _, err = run_cli("index", run, "--data", data, "--out", str(tmp_path / "i"),
                         "--no-progress")  # fmt: skip
    assert rc == 0, err
    kinds = sorted(p.name.split("-")[2] for p in (cache / "features").iterdir())
    assert kinds == ["images"]
    rc, out, err = run_cli("search", str(tmp_path / "i"), "a red circle", "-k", "2")
    assert rc == 0 and "a red circle" in out, err
    rc, _, err = run_cli("index", run, "--data", data, "--out", str(tmp_path / "c"),
                         "--kind", "captions", "--no-progress")  # fmt: skip
    assert rc == 0, err  # a caption index encodes them, and reuses the cached images
    kinds = sorted(p.name.split("-")[2] for p in (cache / "features").iterdir())
    assert kinds == ["images", "texts"]
    # the gallery walkthrough: a text query on a caption index said "image not found"
    rc, _, err = run_cli("search", str(tmp_path / "c"), "a red circle")
    assert rc == 2 and "a red circle: no such image file; index" in err, err
    assert "holds captions, so its queries are image files" in err
    rc, _, err = run_cli("search", str(tmp_path / "c"), str(tmp_path))
    assert rc == 2 and "is a folder; a caption index is searched by image files" in err, err


def test_a_caption_index_of_a_gallery_is_refused_before_any_work(trained, tmp_path) -> None:
    """The gallery walkthrough: `index --kind captions` on a folder: gallery checked and
    encoded every image before saying it had no captions; `-k` past the gallery's size gave
    fewer results without a word."""
    from PIL import Image

    gallery = tmp_path / "g"
    gallery.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (80 * i, 0, 0)).save(gallery / f"{i}.png")
    argv = ["index", str(trained["run"]), "--data", f"folder:{gallery}", "--out"]
    rc, _, err = run_cli(*argv, str(tmp_path / "c"), "--kind", "captions")
    assert rc == 2 and "is a gallery with no captions; index it as images" in err, err
    assert "checking images" not in err and "images [" not in err
    rc, _, err = run_cli(*argv, str(tmp_path / "i"), "--split", "all", "--no-progress")
    assert rc == 0, err
    rc, out, err = run_cli("search", str(tmp_path / "i"), "a red circle", "-k", "10")
    assert rc == 0 and "-k 10: the index holds 3 items: at most 3 results per query" in err
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["1", "2", "3"]


def test_search_json_says_which_hits_files_are_gone_and_which_score_it_gives(
    trained, tmp_path: Path, write_jsonl_dataset
) -> None:
    """The gallery walkthrough: a deleted image was rank 1 in `search --json`, the warning
    on stderr only, and `--no-rerank` scores (another scale) looked like the model's."""
    data = write_jsonl_dataset(tmp_path / "data")
    index = tmp_path / "idx"
    rc, _, err = run_cli("index", str(trained["run"]), "--data", f"jsonl:{data}", "--split",
                         "all", "--out", str(index), "--no-progress")  # fmt: skip
    assert rc == 0, err
    rc, out, err = run_cli("search", str(index), "a red circle", "--json", "-k", "3")
    first = json.loads(out)[0]["hits"][0]
    assert rc == 0 and first["file"] == "ok" and first["score_kind"] == "model", err
    Path(first["source"]).unlink()
    with pytest.warns(UserWarning, match="no longer at its path"):
        rc, out, err = run_cli("search", str(index), "a red circle", "--json", "-k", "3")
    again = json.loads(out)[0]["hits"][0]
    assert rc == 0 and again["source"] == first["source"] and again["file"] == "missing"
    rc, out, _ = run_cli("search", str(index), "a red circle", "--json", "--no-rerank")
    assert {h["score_kind"] for h in json.loads(out)[0]["hits"]} == {"pooled"}


def test_evaluate_and_index_warn_when_the_runs_data_changed_since_training(
    trained, tmp_path: Path
) -> None:
    """The walkthrough's report: after the data file's splits were edited (train items made
    "test"), `evaluate RUN` scored the model on images it trained on and `index RUN` built
    from them, without a word; only --resume noticed."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    rc, _, err = run_cli("evaluate", str(run))
    assert rc == 0 and "changed since" not in err, err  # the same data: no word
    data = Path(trained["data"])
    before = data.read_text()
    lines = [json.loads(x) for x in before.splitlines()]
    for row in lines[:4]:  # four training items become test items
        row["split"] = "test"
    try:
        data.write_text("".join(json.dumps(r) + "\n" for r in lines))
        rc, _, err = run_cli("evaluate", str(run))
        assert rc == 0 and "changed since" in err and "may hold training images" in err, err
        with pytest.warns(UserWarning, match="changed since .* trained on it"):
            rc, _, err = run_cli("index", str(run), "--out", str(tmp_path / "idx"),
                                 "--no-progress")  # fmt: skip
        assert rc == 0, err
        rc, _, err = run_cli("evaluate", str(run), "--data", "twemoji", "--split", "test")
        assert "changed since" not in err  # other data, asked for: nothing to compare
    finally:
        data.write_text(before)
    picture = data.parent / json.loads(before.splitlines()[0])["image"]
    saved, times = picture.read_bytes(), picture.stat()
    try:  # the same items, one image file rewritten in place (the re-test's report)
        picture.write_bytes(saved + b"\0")
        rc, _, err = run_cli("evaluate", str(run))
        assert rc == 0 and "but image files changed on disk since" in err, err
    finally:  # as it was, times too: the module's other tests share this data
        picture.write_bytes(saved)
        os.utime(picture, ns=(times.st_atime_ns, times.st_mtime_ns))


def test_an_image_file_as_a_query_of_an_image_index_is_refused(trained, tmp_path: Path) -> None:
    """The walkthrough's report: `search INDEX photo.png` on an image index searched the text
    "photo.png" and printed plausible results."""
    from PIL import Image

    index = tmp_path / "idx"
    rc, _, err = run_cli("index", str(trained["run"]), "--out", str(index), "--no-progress")
    assert rc == 0, err
    photo = tmp_path / "photo.png"
    Image.new("RGB", (16, 16), (200, 0, 0)).save(photo)
    rc, out, err = run_cli("search", str(index), "a red circle", str(photo))
    assert (
        rc == 2 and out == "" and "is an image file, and an image index is searched by text" in err
    )
    rc, _, err = run_cli("search", str(index), "--text", str(photo), "-k", "1")
    assert rc == 0, err  # asked for as text: searched as text
    with pytest.warns(UserWarning, match="photo.png looks like an image file, but there is none"):
        rc, _, err = run_cli("search", str(index), "photo.png")  # a mistyped path: said so
    assert rc == 0, err


def test_search_of_a_spaced_file_name_two_indexes_a_missing_model_and_a_replaced_sheet(
    trained, tmp_path: Path
) -> None:
    """The gallery walkthrough: an image path with a space ("dog face.png") was searched as
    text; `search A --index B` searched the text "A"; `--checkpoint` naming nothing said
    "no model.safetensors"; a sheet replaced an earlier one without a word."""
    from PIL import Image

    index = tmp_path / "idx"
    rc, _, err = run_cli("index", str(trained["run"]), "--out", str(index), "--no-progress")
    assert rc == 0, err
    photo = tmp_path / "dog face.png"
    Image.new("RGB", (16, 16), (200, 0, 0)).save(photo)
    rc, out, err = run_cli("search", str(index), str(photo))
    assert rc == 2 and "dog face.png is an image file" in err, err
    assert "from data with captions" in err  # a gallery cannot follow the caption-index hint
    rc, _, err = run_cli("search", str(index), "--index", str(index), "a dog")
    assert rc == 0, err  # the same index twice: one
    spelled = f"{index.parent}/./{index.name}"  # the re-test: ./idx and idx were "two"
    rc, _, err = run_cli("search", spelled, "--index", str(index), "a dog")
    assert rc == 0, err
    other = tmp_path / "other"
    shutil.copytree(index, other)
    rc, out, err = run_cli("search", str(other), "--index", str(index), "a dog")
    assert rc == 2 and out == "" and "two indexes" in err, err
    rc, _, err = run_cli("search", str(index), "a dog", "--checkpoint", str(tmp_path / "nope"))
    assert rc == 2 and "checkpoint not found" in err, err
    sheet = tmp_path / "s.png"
    rc, out, _ = run_cli("search", str(index), "a dog", "--sheet", str(sheet))
    assert rc == 0 and "replaces" not in out
    rc, out, _ = run_cli("search", str(index), "a cat", "--sheet", str(sheet))
    assert rc == 0 and f"contact sheet: {sheet} (it replaces the earlier sheet there)" in out


def test_a_tilde_in_any_path_option_is_the_home_folder(
    trained, tmp_path: Path, monkeypatch
) -> None:
    """The gallery walkthrough: `--index=~/idx` (no shell expands "~" after "=") was "not
    found", as were `evaluate --checkpoint=~/run` and `relocate '~/idx' ...`, and
    `--sheet=~/s.png` drew the sheet into a folder named "~" in the current one."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    shutil.copytree(trained["run"], home / "run")
    rc, _, err = run_cli("index", "--checkpoint=~/run", "--out=~/idx", "--no-progress")
    assert rc == 0 and (home / "idx" / "manifest.json").is_file(), err
    rc, _, err = run_cli("search", "--index=~/idx", "a dog", "--sheet=~/s.png")
    assert rc == 0 and (home / "s.png").is_file(), err
    rc, _, err = run_cli("search", "--index=~/idx", "a dog", "--checkpoint=~/run")
    assert rc == 0, err  # the re-test: search's own --checkpoint was left out
    rc, _, err = run_cli("evaluate", "--checkpoint=~/run")
    assert rc == 0, err
    rc, _, err = run_cli("relocate", "~/idx", "~/nowhere", "~/elsewhere")
    assert rc == 2 and "~/idx" not in err, err  # refused for what it says, not "not found"
    assert list(cwd.iterdir()) == []  # no folder named "~"


def test_evaluate_warns_when_a_backbone_changed_since_training(trained, tmp_path: Path) -> None:
    """The walkthrough's report: an hf: folder saved again with new weights after training
    changed R@1 from 13.3 to 0.0, and nothing said the features were not the trained ones.
    (The change is written into the run's record here: the toy encoders never change.)"""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    rc, _, err = run_cli("evaluate", str(run))
    assert rc == 0 and "is not the one" not in err, err
    record = json.loads((run / "data.json").read_text())
    head, versions = record["image_cache_key"].rsplit("|", 1)
    record["image_cache_key"] = head.replace("w=", "w=0") + "|" + versions
    (run / "data.json").write_text(json.dumps(record))
    rc, _, err = run_cli("evaluate", str(run))
    assert rc == 0 and "the image encoder random-conv is not the one" in err, err
    text_head, text_versions = record["text_cache_key"].rsplit("|", 1)
    record["text_cache_key"] = text_head.replace("w=", "w=0") + "|" + text_versions
    (run / "data.json").write_text(json.dumps(record))
    rc, _, err = run_cli("evaluate", str(run))  # both changed: both named (the re-test)
    assert "the image encoder random-conv and the text encoder hash-text are not the ones" in err
    record["text_cache_key"] = f"{text_head}|{text_versions}"
    record["image_cache_key"] = f"{head}|torch=0.0"  # another library version: no word
    (run / "data.json").write_text(json.dumps(record))
    rc, _, err = run_cli("evaluate", str(run))
    assert rc == 0 and "is not the one" not in err, err


def test_a_relocated_subfolder_is_drawn_from_its_new_files(trained, tmp_path: Path) -> None:
    """The re-test's report: after `relocate` of a gallery's subfolder, search listed the new
    paths, but --sheet read the images through the dataset spec (which still names the old
    root) and drew "file missing" tiles, warning that the dataset changed."""
    from PIL import Image

    from picoalign import data as data_mod

    gallery = tmp_path / "photos"
    (gallery / "b").mkdir(parents=True)
    for i, rgb in enumerate([(200, 0, 0), (0, 0, 200), (0, 0, 150)]):
        Image.new("RGB", (20, 20), rgb).save(gallery / ("b" if i else ".") / f"p{i}.png")
    index = tmp_path / "idx"
    rc, _, err = run_cli("index", str(trained["run"]), "--data", f"folder:{gallery}",
                         "--out", str(index), "--no-progress")  # fmt: skip
    assert rc == 0, err
    (tmp_path / "disk2").mkdir()
    (gallery / "b").rename(tmp_path / "disk2" / "b")
    rc, out, err = run_cli(
        "relocate", str(index), str(gallery / "b"), str(tmp_path / "disk2" / "b")
    )
    assert rc == 0 and "2 image paths now under" in out, err

    def no_dataset(*args, **kwargs):
        raise AssertionError("the sheet read the dataset, not the files search listed")

    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        mp.setattr(data_mod, "load_dataset", no_dataset)
        warnings.simplefilter("error")
        rc, _, err = run_cli("search", str(index), "a blue square", "-k", "3",
                             "--sheet", str(tmp_path / "s.png"))  # fmt: skip
    assert rc == 0 and (tmp_path / "s.png").is_file(), err


def test_output_cut_short_by_its_reader_is_no_error() -> None:
    """The user report: `picoalign search ... | head -1` printed `picoalign: error: [Errno 32]
    Broken pipe` and exited 2."""
    code = (
        "import sys\n"
        "from picoalign.cli import commands\n"
        "def cut(args):\n"
        "    raise BrokenPipeError(32, 'Broken pipe')\n"
        "commands.cmd_datasets = cut\n"
        "sys.exit(commands.main(['datasets']))\n"
    )
    assert python_exits(code) == (141, "")


def test_datasets_says_how_to_install_a_missing_one(monkeypatch) -> None:
    """The user report: with Twemoji missing, `datasets` said "missing" and nothing else,
    though the registry knows the install command."""
    from dataclasses import replace

    from picoalign.data import REGISTRY

    monkeypatch.setitem(REGISTRY, "twemoji", replace(REGISTRY["twemoji"], installed=lambda: False))
    rc, out, _ = run_cli("datasets")
    assert rc == 0
    assert any(ln.startswith("twemoji") and "missing" in ln for ln in out.splitlines())
    assert f"to install twemoji: {REGISTRY['twemoji'].install_hint}" in out


def test_a_gallery_folder_is_indexed_searched_and_a_moved_file_is_said(
    trained, tmp_path: Path
) -> None:
    """The walkthrough's report: a gallery of one's own pictures could not be indexed
    without writing a caption for each; and after the files moved, search printed their old
    paths without a word."""
    from PIL import Image

    gallery = tmp_path / "my photos"
    (gallery / "2024").mkdir(parents=True)
    for i, rgb in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        Image.new("RGB", (20, 20), rgb).save(gallery / ("2024" if i else ".") / f"p{i}.png")
    (gallery / "list.txt").write_text("not an image")
    index = tmp_path / "idx"
    run = str(trained["run"])
    rc, out, err = run_cli(
        "index", run, "--data", f"folder:{gallery}", "--out", str(index), "--no-progress"
    )
    assert rc == 0, err
    assert f"indexed 3 images of folder:{gallery}" in out
    rc, out, err = run_cli("search", str(index), "a red circle", "-k", "3", "--json")
    assert rc == 0, err
    hits = json.loads(out)[0]["hits"]
    assert {h["key"] for h in hits} == {"p0.png", "2024/p1.png", "2024/p2.png"}
    (gallery / "2024" / "p1.png").unlink()
    with pytest.warns(UserWarning, match=r"1 of the results' image files is no longer at its"):
        rc, out, err = run_cli("search", str(index), "a red circle", "-k", "3")
    assert rc == 0 and "2024/p1.png" in out  # the index still holds it, and says the file went
    # the gallery walkthrough: a file edited after indexing was ranked by its old picture
    # while the sheet drew the new one, without a word
    Image.new("RGB", (24, 24), (9, 9, 9)).save(gallery / "2024" / "p2.png")
    with pytest.warns(UserWarning) as said:  # p1's going is said again, beside it
        rc, out, err = run_cli("search", str(index), "a red circle", "-k", "3")
    assert rc == 0
    changed = [str(w.message) for w in said if "changed since index" in str(w.message)]
    assert len(changed) == 1 and changed[0].startswith("1 of the results' image files"), changed
    rc, _, err = run_cli("evaluate", run, "--data", f"folder:{gallery}")
    assert rc != 0 and "no captions, all in the test split: it can be indexed" in err
    Image.new("RGB", (20, 20), (90, 90, 0)).save(gallery / "p3.png")  # the gallery grows
    rc, out, err = run_cli("index", run, "--data", f"folder:{gallery}", "--out",
                           str(tmp_path / "idx2"), "--no-progress")  # fmt: skip
    # p0 unchanged; p1 gone, p2 edited, p3 new: one reused. (Two while `evaluate` above
    # encoded the whole gallery, p2 as edited, before refusing it for having no captions.)
    assert rc == 0, err
    assert "features of 1 image came from the feature cache, not encoded again" in out, out


def _precomp_folder(root: Path, width: int) -> Path:
    """A SCAN-style folder of 8 rows x 3 tokens x ``width`` per split, 2 captions per row."""
    gen = np.random.default_rng(0)
    root.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        np.save(root / f"{split}_ims.npy", gen.standard_normal((8, 3, width), np.float32))
        caps = [f"a {split} thing {r} seen {k}" for r in range(8) for k in range(2)]
        (root / f"{split}_caps.txt").write_text("\n".join(caps) + "\n")
    return root


def test_a_model_is_evaluated_and_indexed_only_on_the_image_input_it_trained_on(
    trained, tmp_path: Path
) -> None:
    """The walkthrough: a model trained on images (random-conv here) was scored on
    precomputed features of the same width, its image head run on tokens it never saw (R@1
    0), while the other way round was refused."""
    width = PicoAligner.load(trained["run"] / "best").config.image_dim
    pre = _precomp_folder(tmp_path / "pre", width)
    for command in (["evaluate"], ["index", "--out", str(tmp_path / "idx")]):
        rc, _, err = run_cli(*command, str(trained["run"]), "--data", f"precomp:{pre}")
        assert rc == 2 and "precomputed image features, but this model reads images with " \
            "'random-conv'" in err, err  # fmt: skip
    assert not (tmp_path / "idx").exists()
    rc, _, err = run_cli(
        "train", "--data", f"precomp:{pre}", "--text-encoder", "hash-text", "--epochs", "1",
        "--no-progress", "--set", "model.embed_dim=16", "--out", str(tmp_path / "prun"),
    )  # fmt: skip
    assert rc == 0, err
    rc, _, err = run_cli("evaluate", str(tmp_path / "prun"))  # its own kind of input: fine
    assert rc == 0, err
    rc, _, err = run_cli("evaluate", str(tmp_path / "prun"), "--data", f"jsonl:{trained['data']}")
    assert rc == 2 and "no backbone to read images" in err, err


def test_a_bad_precomputed_row_is_not_offered_skip_bad(tmp_path: Path) -> None:
    """The re-test: a NaN row said "pass --skip-bad", which then gave the same error (the
    advice is an image file's: precomputed rows are first read when encoded)."""
    pre = _precomp_folder(tmp_path / "pre", 4)
    feats = np.load(pre / "train_ims.npy")
    feats[5, 1, 2] = np.nan
    np.save(pre / "train_ims.npy", feats)
    argv = ["train", "--data", f"precomp:{pre}", "--text-encoder", "hash-text", "--epochs", "1",
            "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    for extra in ([], ["--skip-bad"]):
        rc, _, err = run_cli(*argv, *extra)
        line = next(x for x in err.splitlines() if x.startswith("picoalign: error:"))
        assert rc == 2 and "train_ims.npy: row 5 holds NaN" in line and "--skip-bad" not in line
    assert not (tmp_path / "run").exists()
