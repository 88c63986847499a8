"""Keeping freed memory (picoalign.training.allocator): applied where glibc is, off by the
environment, and never a change of results."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from picoalign.training import allocator

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are glibc's")
def test_applies_on_glibc_and_restores(monkeypatch):
    monkeypatch.delenv(allocator.ENV, raising=False)
    try:
        assert allocator.keep_freed_memory() is True
        assert allocator.set_malloc_thresholds(allocator.GLIBC_DEFAULT_BYTES) is True
    finally:
        allocator.keep_freed_memory()


def test_environment_turns_it_off(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "0")
    assert allocator.keep_freed_memory() is False


_TRAIN = textwrap.dedent(
    """
    import hashlib, sys, torch
    from picoalign.config import load_config
    from picoalign.training.loop import train
    torch.set_num_threads(1)
    features = torch.load(sys.argv[2], weights_only=False)
    cfg = load_config(None, {
        "data": "synthetic", "out": sys.argv[1], "epochs": 3, "batch_size": 16,
        "lr": 5e-3, "pico_warmup_epochs": 1, "device": "cpu", "amp": False,
        "progress": False, "model.embed_dim": 16, "model.image_encoder": "random-conv",
        "model.text_encoder": "hash-text", "model.pico.feedback_size": 16,
    })
    model = train(cfg, features).model
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode()); h.update(t.detach().cpu().contiguous().numpy().tobytes())
    print(h.hexdigest())
    """
)


@pytest.mark.skipif(not GLIBC, reason="elsewhere the setting does nothing")
def test_training_is_bit_identical_with_and_without(tmp_path: Path, make_feature_set):
    """Allocation changes where temporaries live, not the arithmetic: a PICO run (reading B,
    the default) trained both ways ends in the same weights, bit for bit."""
    features = tmp_path / "features.pt"
    torch.save(make_feature_set(n=96, n_v=12, n_t=6), features)
    digests = []
    for keep in ("1", "0"):
        env = {**os.environ, allocator.ENV: keep}
        out = subprocess.run(
            [sys.executable, "-c", _TRAIN, str(tmp_path / f"run{keep}"), str(features)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        digests.append(out.stdout.strip().splitlines()[-1])
    assert len(digests[0]) == 64 and digests[0] == digests[1]
