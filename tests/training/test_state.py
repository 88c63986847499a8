"""Never lose work: a run killed (SIGKILL) at any point resumes to exactly the weights and
metrics of an uninterrupted run; mid-epoch checkpoints keep the data order and RNG state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_runner import one_thread_with_cache, toy_train_argv
from picoalign.cli.commands import main
from picoalign.model import ModelConfig, PicoAligner
from picoalign.training.state import Position, restore_last, save_last

# Runs the CLI with os.replace patched to SIGKILL the process on the K-th rename whose target
# is named NAME: every checkpoint file and folder lands through os.replace, so this kills the
# run at a chosen instant of its checkpointing — the worst moments for a crash.
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    name, k = sys.argv[1], int(sys.argv[2])
    real, seen = os.replace, [0]

    def replace(src, dst):
        if os.path.basename(dst) == name:
            seen[0] += 1
            if seen[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst)

    os.replace = replace
    from picoalign.cli.commands import main
    sys.exit(main(sys.argv[3:]))
    """
)


def train_args(data: Path, out: Path, epochs: int = 3) -> list[str]:
    extra = ("--lr", "0.01", "--set", "save_every_steps=3", "--set", "pico_warmup_epochs=0")
    return toy_train_argv(data, out, *extra, epochs=epochs, batch_size=4)  # 8 steps/epoch


@pytest.fixture(scope="module")
def reference(tmp_path_factory, write_jsonl_dataset):
    """The uninterrupted run (one thread, like the killed and resumed ones)."""
    tmp = tmp_path_factory.mktemp("kill")
    data = write_jsonl_dataset(tmp / "data")
    with one_thread_with_cache(tmp / "cache"):
        assert main(train_args(data, tmp / "ref")) == 0
    return {"tmp": tmp, "data": data, "run": tmp / "ref"}


@pytest.mark.parametrize(
    ("name", "k", "where"),
    [
        ("state.pt", 2, "mid-epoch 1, writing the second step checkpoint"),
        ("last", 4, "between the two renames of a folder swap (old out, new not yet in)"),
        ("metrics.jsonl", 2, "after epoch 2's checkpoint, before its metrics"),
    ],
)
def test_killed_run_resumes_to_the_uninterrupted_result(
    reference, tmp_path: Path, name: str, k: int, where: str
) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PICOALIGN_CACHE": str(reference["tmp"] / "cache"), "OMP_NUM_THREADS": "1"}
    (tmp_path / "killer.py").write_text(KILLER)
    argv = train_args(reference["data"], out)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "killer.py"), name, str(k), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == -9, f"not killed ({where}): {proc.stderr[-2000:]}"
    with one_thread_with_cache(reference["tmp"] / "cache"):
        assert main([*argv, "--resume"]) == 0

    ref = reference["run"]
    for folder in ("last", "best"):
        got = load_file(str(out / folder / "model.safetensors"))
        want = load_file(str(ref / folder / "model.safetensors"))
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), f"{folder}/{key} differs after a kill {where}"
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    want_rows = [json.loads(r) for r in (ref / "metrics.jsonl").read_text().splitlines()]
    strip = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in rows] == [
        {k: v for k, v in r.items() if k not in strip} for r in want_rows
    ]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no debris


def test_mid_epoch_checkpoint_restores_position_and_rng(tmp_path: Path) -> None:
    model = PicoAligner(ModelConfig(image_dim=4, text_dim=4, embed_dim=8))
    opt = torch.optim.AdamW(model.parameters())
    loss = torch.nn.Module()
    torch.manual_seed(123)
    history = [{"epoch": 1, "loss": 0.5}]
    save_last(tmp_path, model, opt, loss, Position(1, 5, 2.5, 40), history, {"epoch": 1})
    expected = torch.rand(3)  # what the run would have drawn next
    torch.manual_seed(999)  # a fresh process starts elsewhere
    fresh = PicoAligner(ModelConfig(image_dim=4, text_dim=4, embed_dim=8))
    pos, hist, best = restore_last(tmp_path, fresh, torch.optim.AdamW(fresh.parameters()), loss)
    assert pos == Position(1, 5, 2.5, 40)
    assert hist == history and best == {}  # best/ was never written: nothing to name
    assert torch.equal(torch.rand(3), expected)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


@pytest.mark.parametrize("saved_on", ["this version", "four GPUs, before"])
def test_cuda_generator_is_saved_per_process_and_restored_on_a_smaller_machine(
    tmp_path: Path, monkeypatch, saved_on: str
) -> None:
    """The GPU review: one CUDA RNG state per visible GPU was saved and all restored, so a
    run saved on a 4-GPU machine failed to resume on a 1-GPU one (IndexError). (CUDA is
    stood in for: the calls are recorded.)"""
    states = [torch.full((4,), i, dtype=torch.uint8) for i in range(4)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[0])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": restored.append(s))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    model = PicoAligner(ModelConfig(image_dim=4, text_dim=4, embed_dim=8))
    opt = torch.optim.AdamW(model.parameters())
    save_last(tmp_path, model, opt, torch.nn.Module(), Position(1), [{"epoch": 1}], {})
    if saved_on != "this version":  # a state.pt of the earlier format: a list of four
        from picoalign.fileio import atomic_torch_save, safe_torch_load

        state = safe_torch_load(tmp_path / "last" / "state.pt")
        atomic_torch_save({**state, "cuda_rng": states}, tmp_path / "last" / "state.pt")
    else:
        assert torch.equal(torch.load(tmp_path / "last" / "state.pt")["cuda_rng"], states[0])
    restore_last(tmp_path, model, opt, torch.nn.Module())
    assert len(restored) == 1 and torch.equal(restored[0], states[0])


def test_restore_without_checkpoint_names_the_folder(tmp_path: Path) -> None:
    model = PicoAligner(ModelConfig(image_dim=4, text_dim=4, embed_dim=8))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "last")):
        restore_last(tmp_path, model, torch.optim.AdamW(model.parameters()), torch.nn.Module())


def test_only_the_repairing_rank_touches_temporary_files(tmp_path: Path) -> None:
    """Under torchrun every rank restores, but only rank 0 (``repair``) cleans up: another
    rank deleting ``.NAME.*.tmp`` could remove rank 0's in-flight atomic write."""
    model = PicoAligner(ModelConfig(image_dim=4, text_dim=4, embed_dim=8))
    opt = torch.optim.AdamW(model.parameters())
    save_last(tmp_path, model, opt, torch.nn.Module(), Position(1), [{"epoch": 1}], {})
    in_flight = tmp_path / ".config.yaml.abc123.tmp"  # what atomic_write_text has open
    in_flight.write_text("half")
    restore_last(tmp_path, model, opt, torch.nn.Module(), repair=False)
    assert in_flight.exists()
    restore_last(tmp_path, model, opt, torch.nn.Module())  # the writer, at start-up
    assert not in_flight.exists()
