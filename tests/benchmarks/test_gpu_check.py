"""``benchmarks/gpu_check.py`` (``make gpu-check``) cannot rot: its dry run exercises every
step on the CPU at toy sizes, and without CUDA the real run says so and exits 0."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load_script():
    if str(SCRIPT.parent) not in sys.path:  # its sibling modules (_common, gpu_parity)
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: it would measure")
def test_without_cuda_it_says_so_and_exits_zero(capsys) -> None:
    gpu_check = load_script()
    assert gpu_check.main([]) == 0
    assert "no CUDA device: nothing measured; these paths are untested" in capsys.readouterr().out


def test_dry_run_exercises_every_step_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gpu-check: OK" in proc.stdout
    report = json.loads(out.read_text())
    assert report["dry_run"] is True
    steps = ("gemm_peak_tflops", "fine_grained_scores", "train_one_epoch", "ddp", "coco5k_eval")
    assert all(k in report for k in (*steps, "towers_vit_b16_bert_base"))
    assert report["fine_grained_scores"]["same_recall_fp32"]
    assert set(report["train_one_epoch"]) == {"baseline", "pico"}
    assert report["ddp"]["in_sync"] and report["ddp"]["backend"] == "gloo"
    towers = report["towers_vit_b16_bert_base"]
    assert towers["frozen_samples_per_s"] > 0 and towers["finetuned_samples_per_s"] > 0
    assert report["model_parity"]["close"] and len(report["model_parity"]["by_path"]) == 6
    assert report["search_parity"] == {"same_rows": True, "same_recall": True, "queries": 20}


def test_a_failing_step_is_recorded_and_the_others_still_run(tmp_path: Path, monkeypatch) -> None:
    """The GPU review: the report was written only at the end, so one failing step (an OOM,
    a DDP worker) lost every figure measured before it, out of minutes of device time."""
    gpu_check = load_script()
    stubs = {
        "gemm_peak": {}, "check_scores": {"same_recall_fp32": True}, "towers": {},
        "ddp": {"in_sync": True}, "coco_eval": {}, "model_parity": {"close": True},
        "search_parity": {"same_rows": True, "same_recall": True},
    }  # fmt: skip
    for name, value in stubs.items():
        monkeypatch.setattr(gpu_check, name, lambda *a, value=value, **k: dict(value))

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(gpu_check, "train_epochs", out_of_memory)
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["train_one_epoch"] == {"error": "RuntimeError: CUDA out of memory"}
    assert report["search_parity"]["same_rows"] and "coco5k_eval" in report  # later steps ran


@pytest.mark.skipif(torch.version.cuda is not None, reason="this torch is a CUDA build")
def test_a_cpu_only_torch_on_a_gpu_machine_fails_and_says_why(monkeypatch, capsys) -> None:
    """The GPU review: with the Makefile's CPU wheel on a GPU machine it printed "no CUDA
    device" and exited 0: a check that passed having measured nothing."""
    gpu_check = load_script()
    monkeypatch.setattr(gpu_check, "_nvidia_gpu_present", lambda: True)
    assert gpu_check.main([]) == 1
    assert "is a CPU-only build: install a CUDA build of torch" in capsys.readouterr().out
