"""The AMP policy (``TrainConfig.amp``): "auto" is fp32 on a CPU, bit for bit, whatever the CPU."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from picoalign.config import TrainConfig, load_config
from picoalign.training import devices
from picoalign.training.devices import amp_enabled
from picoalign.training.loop import train

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def cfg(out: Path, **overrides: object) -> TrainConfig:
    base = {
        "data": "synthetic",
        "out": str(out),
        "epochs": 2,
        "batch_size": 16,
        "device": "cpu",
        "progress": False,
        "model.embed_dim": 16,
        "model.image_encoder": "random-conv",
        "model.text_encoder": "hash-text",
        "model.pico.feedback_size": 16,
    }
    return load_config(None, {**base, **overrides})


def test_default_amp_is_auto_and_parses_strings() -> None:
    assert TrainConfig().amp == "auto"
    assert load_config(None, {"amp": "true"}).amp is True
    assert load_config(None, {"amp": "False"}).amp is False
    with pytest.raises(ValueError, match="amp"):
        load_config(None, {"amp": "sometimes"})


def test_policy_auto_is_on_for_cuda_and_off_for_cpu(monkeypatch) -> None:
    monkeypatch.setattr(devices, "cuda_has_fast_bf16", lambda device: True)
    assert amp_enabled(torch.device("cuda"), "auto") and amp_enabled(torch.device("cuda"), True)
    # the GPU review: "auto" turned bf16 on for GPUs that emulate it (T4, V100)
    monkeypatch.setattr(devices, "cuda_has_fast_bf16", lambda device: False)
    assert not amp_enabled(torch.device("cuda"), "auto")
    assert amp_enabled(torch.device("cuda"), True)  # asked for: honoured
    assert not amp_enabled(torch.device("cpu"), "auto")
    assert not amp_enabled(torch.device("cpu"), False)
    # an explicit true on a CPU depends on bf16 units: honoured with them, fp32 + a warning
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: True)
    assert amp_enabled(torch.device("cpu"), True)
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: False)
    devices._warn_no_bf16.cache_clear()
    with pytest.warns(RuntimeWarning, match="no bf16 units"):
        assert not amp_enabled(torch.device("cpu"), True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the second call is silent
        assert not amp_enabled(torch.device("cpu"), True)


def test_default_config_trains_in_fp32_bit_identical_to_amp_false(
    tmp_path: Path, make_feature_set
) -> None:
    fs = make_feature_set(n=24)
    auto = train(cfg(tmp_path / "auto"), fs, write=False)
    off = train(cfg(tmp_path / "off", amp=False), fs, write=False)
    a, b = auto.model.state_dict(), off.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in auto.history] == [r["loss"] for r in off.history]
