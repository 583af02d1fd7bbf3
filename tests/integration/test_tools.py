"""The benchmark tools run (at their smallest sizes) on the CPU, so they do not rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_gpu_mfu_script_runs_its_path_on_cpu(tmp_path):
    """The GPU MFU script's whole path (checkpoints, synthetic data, torchrun + FSDP2 over
    gloo, packing, SVA inside the LLM) at tiny shapes; no MFU on CPU."""
    proc = subprocess.run(
        [sys.executable, "tools/gpu_mfu.py", "--size", "tiny", "--steps", "2", "--gpus", "0"]
        + ["--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "model FLOPs per optimiser step" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 2 |")]
    assert rows and "%" in rows[0]


def test_bench_step_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "tools/bench_step.py", "--steps", "1", "--length", "384"]
        + ["--hidden", "64", "--layers", "1", "--vocab", "600", "--vision-layers", "1"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "packed / padded useful tokens/s" in proc.stdout
    assert "HF LLaVA / ours" in proc.stdout


def test_bench_lora_runs_and_lora_trains_fewer_parameters():
    proc = subprocess.run(
        [sys.executable, "tools/bench_lora.py", "--steps", "1", "--hidden", "128", "--layers"]
        + ["2", "--vocab", "600", "--batch", "1", "--length", "128", "--rank", "4"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ratio = [line for line in proc.stdout.splitlines() if line.startswith("LoRA/full")]
    trainable = float(ratio[0].split("trainable ")[1].split(",")[0])
    assert 0 < trainable < 0.5, proc.stdout
