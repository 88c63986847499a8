"""The demo on synthetic features (no backbones) and the training plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from picoalign.cli.demo import run_demo
from picoalign.cli.plots import plot_training, read_history

# tiny tensors: one intra-op thread avoids thread hand-offs that dominate on a loaded CPU
pytestmark = pytest.mark.usefixtures("torch_single_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 500 and im.size[1] > 100
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp.png")]


def test_run_demo_quick_on_given_features(tmp_path: Path, make_feature_set, capsys) -> None:
    fs = make_feature_set(n=40)
    out = tmp_path / "demo"
    assert run_demo(data="synthetic", out=out, quick=True, features=fs, progress=False) == 0
    printed = capsys.readouterr().out

    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"baseline", "pico"}
    n_test = fs.split("test").n_images
    for r in results.values():
        assert {"i2t", "t2i", "rsum", "n_images", "n_captions"} <= set(r)
        assert r["n_images"] == n_test and r["n_captions"] == 2 * n_test
        assert 0 <= r["rsum"] <= 600
    assert_png(out / "training.png")
    for method in ("baseline", "pico"):
        hist = read_history(out / method)
        assert [row["epoch"] for row in hist] == [1, 2]  # quick: 2 epochs
        assert (out / method / "best" / "model.safetensors").is_file()

    assert "baseline (test)" in printed and "pico (test)" in printed  # the table
    assert "PICO − baseline" in printed
    assert "text → image search" in printed
    assert re.search(r"caption \d+ of image \d+ \| ", printed)  # searches list captions


def test_a_demo_rerun_replaces_its_runs_without_naming_a_flag_not_given(
    tmp_path: Path, make_feature_set, capsys
) -> None:
    """A second ``picoalign demo`` said "--overwrite: replacing the run", a flag the user
    never gave."""
    fs = make_feature_set(n=40)
    for _ in range(2):
        rc = run_demo(data="synthetic", out=tmp_path, quick=True, features=fs, progress=False)
        assert rc == 0
    err = capsys.readouterr().err
    assert err.count("replacing the run in") == 2 and "--overwrite" not in err


def test_run_demo_refuses_a_folder_with_other_files(tmp_path: Path, make_feature_set) -> None:
    """The demo replaces its own outputs on a rerun, never a user's files beside them."""
    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(ValueError, match=r"does not write \(thesis\.tex\)"):
        run_demo(data="synthetic", out=tmp_path, quick=True, features=make_feature_set(n=40))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


def test_run_demo_never_replaces_a_run_it_did_not_write(tmp_path: Path, make_feature_set) -> None:
    """The adversarial test: `picoalign demo --out runs` replaced the user's own
    `train --out runs/pico` run (weights and metrics), though no --overwrite was given."""
    from picoalign.config import load_config
    from picoalign.training.loop import train

    fs = make_feature_set(n=40)
    small = {"epochs": 1, "batch_size": 8, "progress": False, "model.embed_dim": 8}
    train(load_config(None, {**small, "out": str(tmp_path / "pico")}), fs)
    before = {p: p.read_bytes() for p in (tmp_path / "pico").rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"pico holds a run the demo did not write"):
        run_demo(data="synthetic", out=tmp_path, quick=True, features=fs, progress=False)
    assert {p: p.read_bytes() for p in (tmp_path / "pico").rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pico"]
    demo = tmp_path / "demo"  # the demo's own folder: a rerun replaces its runs
    for _ in range(2):
        assert run_demo(data="synthetic", out=demo, quick=True, features=fs, progress=False) == 0
    (demo / "demo.json").unlink()  # a demo of before demo.json: its results.json says so
    assert run_demo(data="synthetic", out=demo, quick=True, features=fs, progress=False) == 0
    # a file of the user's in pico/ is refused before baseline/ is replaced (the re-test)
    (demo / "pico" / "notes.txt").write_text("mine")
    kept = (demo / "baseline" / "best" / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"pico: holds files a training run does not write"):
        run_demo(data="synthetic", out=demo, quick=True, features=fs, progress=False, seed=1)
    assert (demo / "baseline" / "best" / "model.safetensors").read_bytes() == kept


def rows(n: int, pico: bool, dim: int = 6) -> list[dict]:
    out = []
    for e in range(1, n + 1):
        row = {"epoch": e, "loss": 1.0 / e, "lr": 1e-3, "seconds": 0.1, "val_rsum": 100.0 + e}
        if pico:
            p = [min(1.0, 0.2 * (d + 1) / e + 0.1) for d in range(dim)]
            omega = [] if e == 1 else [1.0 / min(e, 4)] * min(e, 4)  # empty during warm-up
            row.update(p=p, omega=omega, p_mean=sum(p) / dim, p_min=min(p), p_max=max(p))
        out.append(row)
    return out


@pytest.mark.parametrize(
    "histories",
    [
        {"baseline": rows(3, pico=False), "pico": rows(3, pico=True)},
        {"baseline": rows(2, pico=False), "global": rows(2, pico=False)},
        {"pico": rows(1, pico=True)},  # a single warm-up epoch: no prototype weights yet
        {"baseline": []},
    ],
    ids=["with-pico", "without-pico", "pico-warmup-only", "empty"],
)
def test_plot_training_writes_a_png(tmp_path: Path, histories: dict) -> None:
    out = plot_training(histories, tmp_path / "plots" / "training.png")
    assert out == tmp_path / "plots" / "training.png"
    assert_png(out)


def test_read_history_round_trips_metrics_jsonl(tmp_path: Path) -> None:
    hist = rows(2, pico=True)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hist) + "\n")
    assert read_history(tmp_path) == hist
    assert_png(plot_training({"pico": read_history(tmp_path)}, tmp_path / "p.png"))


@pytest.mark.parametrize(
    "data, claims", [("synthetic", False), ("jsonl:/x.jsonl", False), ("twemoji", True)]
)
def test_demo_claims_unseen_concepts_only_for_concept_split_data(
    tmp_path: Path, make_feature_set, capsys, data: str, claims: bool
) -> None:
    fs = make_feature_set(n=24)
    assert run_demo(data=data, out=tmp_path, quick=True, features=fs, progress=False) == 0
    assert ("concepts unseen in training" in capsys.readouterr().out) is claims


def test_a_run_validated_every_other_epoch_draws_one_connected_line(tmp_path: Path, monkeypatch):
    """The walkthrough's report: with --set eval_every=2 the validation panel drew points
    with no line between them (the unevaluated epochs broke it)."""
    import matplotlib.axes

    drawn = []
    real = matplotlib.axes.Axes.plot

    def record(self, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(args[0]) if args else []))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", record)
    rows = [{"epoch": e, "loss": 1.0 / e, **({"val_rsum": 10.0 * e} if e % 2 == 0 else {})}
            for e in range(1, 7)]  # fmt: skip
    plot_training({"pico": rows}, tmp_path / "t.png")
    assert ("pico", [2, 4, 6]) in drawn  # the evaluated epochs only: one line through them
