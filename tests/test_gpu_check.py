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

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load_script():
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
